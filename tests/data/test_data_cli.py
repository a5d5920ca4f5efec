"""`lm-flipout data stats` and the corpus_stats it prints."""

import json
import os
import subprocess
import sys
from pathlib import Path

from lm_flipout.data import DataConfig, corpus_stats, load_corpus

REPO = Path(__file__).resolve().parents[2]


def write_corpus(root: Path) -> Path:
    root.mkdir()
    (root / "train.txt").write_text("a b a\nc\n")
    (root / "valid.txt").write_text("a dd\n")  # "dd" never occurs in train: <unk>
    (root / "test.txt").write_text("b b\n")
    return root


def test_corpus_stats(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_FLIPOUT_CACHE", str(tmp_path / "cache_root"))
    root = write_corpus(tmp_path / "c")
    corpus = load_corpus(DataConfig(path=str(root), cache_dir=str(tmp_path / "cache")))
    assert corpus_stats(corpus) == {
        "tokenizer": "word",
        "vocab_size": 5,
        "cache_path": corpus.cache_path,
        "cache_root": str(tmp_path / "cache_root"),
        "splits": {
            "train": {"tokens": 6, "characters": 8, "words": 6, "unk_tokens": 0,
                      "unk_characters": 0},
            "valid": {"tokens": 3, "characters": 5, "words": 3, "unk_tokens": 1,
                      "unk_characters": 2},
            "test": {"tokens": 3, "characters": 4, "words": 3, "unk_tokens": 0,
                     "unk_characters": 0},
        },
    }


def test_stats_command_end_to_end(tmp_path):
    root = write_corpus(tmp_path / "c")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"data:\n  path: {root}\n  cache_dir: {tmp_path / 'cache'}\n")
    cmd = [sys.executable, "-m", "lm_flipout", "data", "stats", str(recipe), "data.tokenizer=char"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["tokenizer"] == "char" and stats["vocab_size"] == 6  # <eos> <unk> a ' ' b c
    assert stats["splits"]["train"] == {"tokens": 8, "characters": 8, "words": 6,
                                        "unk_tokens": 0, "unk_characters": 0}
    assert stats["splits"]["valid"]["unk_tokens"] == 2  # the two d's: not a training character
    cache_path = Path(stats["cache_path"])
    assert cache_path.is_file() and cache_path.parent == tmp_path / "cache"

    bad = subprocess.run(
        [sys.executable, "-m", "lm_flipout", "data", "stats", str(recipe),
         f"data.path={tmp_path / 'nope'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    message = " ".join(bad.stderr.split())  # one paragraph, wrapped
    assert bad.returncode == 2 and "train.txt does not exist" in message
    assert "Traceback" not in bad.stderr


def test_tokens_and_kernels_share_one_cache_root(tmp_path):
    root = write_corpus(tmp_path / "c")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"data:\n  path: {root}\n")  # no data.cache_dir: the cache root's
    env = {**os.environ, "LM_FLIPOUT_CACHE": str(tmp_path / "cache_root"),
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "lm_flipout", "data", "stats", str(recipe)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["cache_root"] == str(tmp_path / "cache_root")
    assert Path(stats["cache_path"]).parent == tmp_path / "cache_root" / "tokens"
    assert not (tmp_path / ".cache").exists()  # nothing in the working folder
