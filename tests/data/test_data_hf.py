"""Hugging Face `datasets` sources: packaged `text` and `parquet` builders over local files,
and a fast, explanatory failure when the Hub cannot be reached."""

import time
from pathlib import Path

import pytest

from lm_flipout.data import DataConfig, load_corpus
from lm_flipout.data.hf_source import hub_reachable
from lm_flipout.errors import DataError

datasets = pytest.importorskip("datasets")

TEXTS = {
    "train": "the cat sat\nthe dog\n\nthe cat ran\n",
    "validation": "the bird sat\n",
    "test": "dog  cat\nran\n",
}


def write_text_files(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, text in TEXTS.items():
        files[split] = str(root / f"{split}.txt")
        Path(files[split]).write_text(text)
    return files


def hf_cfg(tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(
        source="huggingface", cache_dir=str(tmp_path / "cache"),
        hf_cache_dir=str(tmp_path / "hf"), **kw
    )


def test_text_builder_matches_local_files(tmp_path):
    files = write_text_files(tmp_path / "txt")
    hf = load_corpus(hf_cfg(tmp_path, hf_name="text", hf_data_files=files))
    local = load_corpus(
        DataConfig(
            train_file=files["train"],
            valid_file=files["validation"],
            test_file=files["test"],
            cache_dir=str(tmp_path / "cache2"),
        )
    )
    assert hf.vocab == local.vocab == ["<eos>", "<unk>", "the", "cat", "sat", "dog", "ran"]
    for name in ("train", "valid", "test"):
        a, b = hf.splits[name], local.splits[name]
        assert a.tokens.tolist() == b.tokens.tolist()
        assert (a.n_chars, a.n_words) == (b.n_chars, b.n_words)
    assert hf.splits["valid"].tokens.tolist() == [2, 1, 4, 0]


def test_parquet_builder_with_custom_field_and_splits(tmp_path):
    rows = {
        "train": ["a b a", "", "c\nb"],  # a row with an embedded newline is two lines
        "dev": ["a c"],
        "test": ["b"],
    }
    files = {}
    for split, texts in rows.items():
        files[split] = str(tmp_path / f"{split}.parquet")
        table = datasets.Dataset.from_dict({"sentence": texts, "id": list(range(len(texts)))})
        table.to_parquet(files[split])
    cfg = hf_cfg(
        tmp_path,
        hf_name="parquet",
        hf_data_files=files,
        text_field="sentence",
        hf_splits={"train": "train", "valid": "dev", "test": "test"},
    )
    c = load_corpus(cfg)
    assert c.vocab == ["<eos>", "<unk>", "a", "b", "c"]
    assert c.splits["train"].tokens.tolist() == [2, 3, 2, 0, 0, 4, 0, 3, 0]
    assert (c.splits["train"].n_words, c.splits["train"].n_chars) == (9, 6 + 1 + 2 + 2)
    assert c.splits["valid"].tokens.tolist() == [2, 4, 0]

    with pytest.raises(DataError, match=r"no column data\.text_field='body'.*'sentence'"):
        load_corpus(hf_cfg(tmp_path, hf_name="parquet", hf_data_files=files, text_field="body",
                           hf_splits={"train": "train", "valid": "dev", "test": "test"}))


def test_missing_split_names_available_ones(tmp_path):
    files = write_text_files(tmp_path / "txt")
    msg = r"no split 'dev' \(asked for by data\.hf_splits\.valid\).*'validation'"
    with pytest.raises(DataError, match=msg):
        load_corpus(hf_cfg(tmp_path, hf_name="text", hf_data_files=files,
                           hf_splits={"train": "train", "valid": "dev", "test": "test"}))


def test_packaged_builder_needs_existing_files(tmp_path):
    with pytest.raises(DataError, match=r"data\.hf_data_files is not set"):
        load_corpus(hf_cfg(tmp_path, hf_name="text"))
    files = write_text_files(tmp_path / "txt")
    files["test"] = str(tmp_path / "missing.txt")
    with pytest.raises(DataError, match=r"data\.hf_data_files\.test=.*missing\.txt does not exist"):
        load_corpus(hf_cfg(tmp_path, hf_name="text", hf_data_files=files))


def assert_fast_hub_failure(tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load_corpus(hf_cfg(tmp_path, hf_name="lm-flipout-tests/no-such-dataset", hf_config="raw"))
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "lm-flipout-tests/no-such-dataset" in msg and "unreachable" in msg
    assert "data.source=files data.path=" in msg and "data.hf_name=text" in msg
    assert "hf_data_files" in msg


def test_hub_load_without_network_fails_fast(tmp_path, monkeypatch):
    # An endpoint nobody listens on stands for "no network", whatever this machine has.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert_fast_hub_failure(tmp_path)


def test_hub_load_in_this_sandbox_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    if hub_reachable():
        pytest.skip("the Hugging Face Hub is reachable from this machine")
    assert_fast_hub_failure(tmp_path)


def test_user_offline_mode_fails_fast_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DataError, match="offline mode is set.*no cached copy") as err:
        load_corpus(hf_cfg(tmp_path, hf_name="lm-flipout-tests/no-such-dataset"))
    assert time.monotonic() - start < 10
    assert "data.source=files" in str(err.value)
