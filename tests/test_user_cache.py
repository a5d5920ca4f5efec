"""The cache root: $LM_FLIPOUT_CACHE, else the user's cache folder; the kernels and the token
cache both live under it."""

from pathlib import Path

from lm_flipout.data import DataConfig
from lm_flipout.nn.backends.cpu import kernels
from lm_flipout.user_cache import cache_root


def test_the_cache_root_follows_the_environment() -> None:
    assert cache_root({"LM_FLIPOUT_CACHE": "/x/c", "XDG_CACHE_HOME": "/y"}) == Path("/x/c")
    assert cache_root({"XDG_CACHE_HOME": "/y"}) == Path("/y/lm_flipout")
    assert cache_root({}) == Path.home() / ".cache" / "lm_flipout"
    assert cache_root({"LM_FLIPOUT_CACHE": ""}) == Path.home() / ".cache" / "lm_flipout"


def test_kernels_and_tokens_go_under_the_root(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LM_FLIPOUT_CACHE", str(tmp_path))
    assert kernels.cache_dir() == tmp_path / "kernels"
    assert DataConfig().cache_folder() == str(tmp_path / "tokens")
    assert DataConfig(cache_dir="~/mine").cache_folder() == str(Path.home() / "mine")
