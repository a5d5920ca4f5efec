"""Download a public corpus into the data root, check it and write its splits atomically.

Penn Treebank comes from Mikolov's ``simple-examples.tgz``, the archive behind the usual
word-level PTB numbers (Mikolov et al. 2010; Zaremba et al. 2014; Wen et al. 2018, §5.2);
each split is checked against its SHA-256 and its token count (words plus one ``<eos>`` per
line, as `lm_flipout.data.text` counts them)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from lm_flipout.data.raw import SPLITS
from lm_flipout.data.text import split_lines
from lm_flipout.errors import DataError


@dataclass(frozen=True)
class Download:
    """A corpus archive: where it is, which member holds each split and what each must be."""

    name: str  # the folder under the data root, e.g. "ptb"
    title: str
    url: str
    members: dict[str, str]  # split -> path inside the archive
    sha256: dict[str, str]  # split -> SHA-256 of the split's bytes
    tokens: dict[str, int]  # split -> words plus one <eos> per line


PTB = Download(
    name="ptb", title="Penn Treebank (Mikolov's word-level version)",
    url="http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
    members={split: f"simple-examples/data/ptb.{split}.txt" for split in SPLITS},
    sha256={"train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
            "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
            "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"},
    tokens={"train": 929_589, "valid": 73_760, "test": 82_430},
)
DOWNLOADS = {PTB.name: PTB}


def token_count(data: bytes) -> int:
    """Words plus one ``<eos>`` per line, as the word tokenizer counts them."""
    return sum(len(words) + 1 for words in split_lines(data.decode("utf-8", "replace")))


def is_complete(download: Download, folder: Path) -> bool:
    """True when ``folder`` holds every split with the expected checksum."""
    return all((folder / f"{split}.txt").is_file()
               and _sha256((folder / f"{split}.txt").read_bytes()) == download.sha256[split]
               for split in SPLITS)


def fetch(download: Download, root: Path, url: Optional[str] = None,
          timeout: float = 10.0, progress: bool = True) -> tuple[Path, bool]:
    """Download ``download`` into ``root/<name>`` unless it is there already; returns the
    folder and whether anything was downloaded. The splits appear together or not at all."""
    target = root / download.name
    if is_complete(download, target):
        return target, False
    if target.exists():
        raise DataError(
            f"{target} exists but does not hold the expected {download.title} files "
            f"(train.txt, valid.txt, test.txt with their checksums). Move it away and fetch "
            f"again, or point recipes at it with data.path={target} if it is a copy you trust."
        )
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        _download_into(download, root, url or download.url, timeout, progress)
    except BaseException:
        if created_root:  # a failed fetch leaves no trace
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
    return target, True


def _download_into(download: Download, root: Path, url: str, timeout: float,
                   progress: bool) -> None:
    """Download, check and stage the splits in a temporary folder inside ``root``, then
    rename that folder to ``root/<name>`` (one rename: all splits or none)."""
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{download.name}-fetch-") as work:
        archive = Path(work) / "archive"
        _download(download, url, archive, timeout, progress, root)
        splits = _read_splits(download, url, archive)
        staged = Path(work) / download.name
        staged.mkdir()
        for split, data in splits.items():
            with open(staged / f"{split}.txt", "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.rename(staged, root / download.name)


def offline_advice(download: Download, root: Path) -> str:
    """What to do when the archive cannot be downloaded."""
    members = ", ".join(Path(m).name for m in download.members.values())
    return (f"Without network, copy {members} from {download.url} (any copy of it) into "
            f"{root / download.name} as train.txt, valid.txt and test.txt, or give recipes "
            "data.path=DIR for a folder that holds those three files.")


def _download(download: Download, url: str, out: Path, timeout: float, progress: bool,
              root: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(out, "wb") as f:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, disable=not progress,
                      desc=f"{download.name}: downloading") as bar:
                while chunk := response.read(1 << 16):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(f"Could not download {download.title} from {url} ({reason}). "
                        f"{offline_advice(download, root)}") from None


def _read_splits(download: Download, url: str, archive: Path) -> dict[str, bytes]:
    """Each split's bytes from the archive, checked against its checksum and token count."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
            splits = {}
            for split, name in download.members.items():
                if name not in members:
                    raise DataError(f"The archive from {url} has no {name}; it is not the "
                                    f"{download.title} archive. Check the URL.")
                splits[split] = tar.extractfile(members[name]).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"The file downloaded from {url} is not a readable .tgz archive "
                        f"({err}). Check the URL, or try again if the download was cut.") from None
    for split, data in splits.items():
        digest, count = _sha256(data), token_count(data)
        if digest != download.sha256[split] or count != download.tokens[split]:
            raise DataError(
                f"{download.members[split]} from {url} is not the expected {download.title} "
                f"{split} split: SHA-256 {digest} with {count:,} tokens, expected "
                f"{download.sha256[split]} with {download.tokens[split]:,}. Nothing was "
                "written. Check the URL (a different version of the corpus?)."
            )
    return splits


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
