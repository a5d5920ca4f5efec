"""Recipe files: reading YAML (a key written twice is an error, tags are refused, and so is a
file larger than `MAX_RECIPE_BYTES` or a document whose aliases expand beyond
`MAX_EXPANDED_NODES`) and writing a recipe back; loading a recipe with its bases and overrides
is `lm_flipout.config.compose`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Union

import yaml

from ..atomic import atomic_write
from ..errors import ConfigError, first_line
from .convert import to_dict
from .schema import Recipe


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML keeps the last)."""


def _construct_unique_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (the later value would silently win)",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)

# A recipe has a few hundred values; aliases (`*name`) that expand to more than this many
# nodes are an "alias bomb" (a few lines that would expand to billions of values).
MAX_EXPANDED_NODES = 100_000
# A recipe is a few kilobytes; a file this large is something else (a corpus, a log) and
# would take long and much memory to parse, so it is refused by its size alone.
MAX_RECIPE_BYTES = 1 << 20


def expanded_size(root: yaml.Node) -> int:
    """How many nodes the document has with every alias expanded, counted without expanding
    (each shared node once, its size reused); capped just past `MAX_EXPANDED_NODES`, which an
    alias to an enclosing node (an endless expansion) also counts as."""
    cap = MAX_EXPANDED_NODES + 1
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # nodes whose children are being counted
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack[-1]
        if id(node) in sizes:
            stack.pop()
            continue
        children = _children(node)
        if id(node) not in open_nodes:
            open_nodes.add(id(node))
            if any(id(c) in open_nodes for c in children):
                return cap  # refers to itself
            stack.extend(c for c in children if id(c) not in sizes)
            continue
        open_nodes.discard(id(node))
        sizes[id(node)] = min(cap, 1 + sum(sizes[id(c)] for c in children))
        stack.pop()
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _parse(text: str) -> Any:
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node) > MAX_EXPANDED_NODES:
            raise yaml.YAMLError(f"aliases expand it to more than {MAX_EXPANDED_NODES:,} values")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Union[str, Path]) -> Any:
    """Parse a YAML file; a missing file or a syntax error is a ConfigError with the line."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"Recipe file {path} {what}. Check the path, e.g. recipes/ptb/<name>.yaml."
        )
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise ConfigError(
            f"Recipe file {path} is {size / 2**20:.1f} MiB; recipes are refused above "
            f"{MAX_RECIPE_BYTES // 2**20} MiB without being parsed (a recipe is a few kilobytes "
            "of settings). Check that the path names a recipe, not a corpus or a log."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"Recipe file {path} is not UTF-8 text. Save it as UTF-8 YAML.") from None
    try:
        return _parse(text)
    except RecursionError:
        raise ConfigError(f"Recipe file {path} nests too deeply to be a recipe. Write its "
                          "sections as plain indented `key: value` lines.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or first_line(err)
        if problem.startswith("duplicate key"):
            fix = "Keep only one of the two entries."
        elif problem.startswith("aliases expand"):
            fix = "A recipe needs no more than plain values; remove the aliases (*name)."
        elif "constructor for the tag" in problem:
            problem = f"the tag {node_tag(err)} is not allowed"
            fix = ("Tags (such as !!python/...) are not allowed in recipes; write plain values: "
                   "numbers, strings, true/false, null, lists and mappings.")
        else:
            fix = (
                "Fix the syntax there; wrong indentation, a missing ':' or an unclosed bracket "
                "or quote are the usual causes."
            )
        raise ConfigError(f"Recipe file {path} has a YAML error{at}: {problem}. {fix}") from None


def node_tag(err: yaml.YAMLError) -> str:
    """The tag a YAML constructor error is about, shortened for a message."""
    found = re.search(r"tag '([^']*)'", str(err))
    tag = found.group(1).replace("tag:yaml.org,2002:", "!!") if found else "used"
    return tag if len(tag) <= 60 else tag[:57] + "..."


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe as YAML text, sections and keys in schema order; reloads to an equal recipe."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True)


def save_recipe(recipe: Recipe, path: Union[str, Path]) -> None:
    """Write the recipe as YAML atomically (a crash leaves the old file or the new one)."""
    with atomic_write(path) as handle:
        handle.write(recipe_to_yaml(recipe).encode("utf-8"))
