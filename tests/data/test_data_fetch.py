"""`lm-flipout data fetch`: the download path against an HTTP server on 127.0.0.1 serving an
archive the test makes, the checks (checksum, token count), all-or-nothing writes, and fast,
helpful failures when the server cannot be reached."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import local_ptb
from lm_flipout.cli import data as data_cli
from lm_flipout.data.fetch import PTB, Download, fetch
from lm_flipout.errors import DataError

SPLITS = ("train", "valid", "test")
TEXTS = {"train": "the cat sat\non the mat\n", "valid": "a cat\n", "test": "the mat sat\n\n"}


def make_archive(texts: dict[str, bytes]) -> bytes:
    """A .tgz laid out like simple-examples.tgz (members under ./simple-examples/data/)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for split, data in texts.items():
            info = tarfile.TarInfo(f"./simple-examples/data/ptb.{split}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tiny_download(texts: dict[str, str]) -> Download:
    """PTB's layout with the checksums and token counts of ``texts``, computed here."""
    encoded = {split: text.encode() for split, text in texts.items()}
    return replace(PTB, sha256={s: hashlib.sha256(b).hexdigest() for s, b in encoded.items()},
                   tokens={s: sum(len(line.split()) + 1 for line in t.splitlines())
                           for s, t in texts.items()})


@contextmanager
def serving(body: bytes) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers every GET with ``body``; yields its URL."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple-examples.tgz"
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple-examples.tgz"


def test_fetch_writes_checked_splits_and_later_needs_no_network(tmp_path: Path) -> None:
    download = tiny_download(TEXTS)
    archive = make_archive({s: t.encode() for s, t in TEXTS.items()})
    with serving(archive) as url:
        folder, fetched = fetch(download, tmp_path, url, progress=False)
    assert fetched and folder == tmp_path / "ptb"
    assert {p.name: p.read_text() for p in folder.iterdir()} == {
        f"{s}.txt": TEXTS[s] for s in SPLITS}
    assert [p.name for p in tmp_path.iterdir()] == ["ptb"]  # no temporary files left
    again = fetch(download, tmp_path, closed_port_url(), progress=False)
    assert again == (folder, False)


@pytest.mark.parametrize("what", ["checksum", "tokens"])
def test_a_corpus_that_fails_its_checks_writes_nothing(tmp_path: Path, what: str) -> None:
    download = tiny_download(TEXTS)
    if what == "checksum":
        download = replace(download, sha256={**download.sha256, "valid": "0" * 64})
    else:
        download = replace(download, tokens={**download.tokens, "test": 99})
    with serving(make_archive({s: t.encode() for s, t in TEXTS.items()})) as url:
        with pytest.raises(DataError) as error:
            fetch(download, tmp_path, url, progress=False)
    split = "valid" if what == "checksum" else "test"
    assert f"expected {download.title} {split} split" in str(error.value)
    assert "Nothing was written" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_an_archive_without_the_corpus_or_not_an_archive_is_refused(tmp_path: Path) -> None:
    download = tiny_download(TEXTS)
    partial = make_archive({"train": TEXTS["train"].encode()})
    missing = "has no simple-examples/data/ptb.valid.txt"
    with serving(partial) as url, pytest.raises(DataError, match=missing):
        fetch(download, tmp_path, url, progress=False)
    with serving(b"<html>not found</html>") as url, \
            pytest.raises(DataError, match="not a readable"):
        fetch(download, tmp_path, url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_different_folder_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "train.txt").write_text("mine\n")
    with pytest.raises(DataError, match="exists but does not hold"):
        fetch(tiny_download(TEXTS), tmp_path, closed_port_url(), progress=False)
    assert (tmp_path / "ptb" / "train.txt").read_text() == "mine\n"


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections into its backlog, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/simple-examples.tgz"
        with pytest.raises(DataError, match="timed out") as error:
            fetch(tiny_download(TEXTS), tmp_path, url, timeout=0.5, progress=False)
    assert "data.path=DIR" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_fetch_command_offline_fails_fast_and_says_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("LM_FLIPOUT_DATA", str(tmp_path / "data"))
    start = time.monotonic()
    status = data_cli.main(["fetch", "ptb", "--url", closed_port_url(), "--no-progress"])
    assert time.monotonic() - start < 30  # a refused connection is not waited on
    err = capsys.readouterr().err
    message = " ".join(err.split())
    assert status == 2 and err.startswith("error: Could not download Penn Treebank")
    assert "Traceback" not in err
    assert f"into {tmp_path / 'data' / 'ptb'} as train.txt, valid.txt and test.txt" in message
    assert "data.path=DIR" in message
    assert not (tmp_path / "data").exists()  # the data root it would have made is gone again


@pytest.mark.skipif(local_ptb() is None, reason="no Penn Treebank in $LM_FLIPOUT_DATA/ptb")
def test_fetch_command_checks_the_real_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """Our copy of PTB, served as Mikolov's archive: it passes PTB's checksums and the token
    counts 929,589 / 73,760 / 82,430, and lands in <data root>/ptb."""
    texts = {split: (local_ptb() / f"{split}.txt").read_bytes() for split in SPLITS}
    monkeypatch.setenv("LM_FLIPOUT_DATA", str(tmp_path))
    with serving(make_archive(texts)) as url:
        assert data_cli.main(["fetch", "ptb", "--url", url, "--no-progress"]) == 0
    assert "downloaded and checked in" in capsys.readouterr().out
    assert {s: (tmp_path / "ptb" / f"{s}.txt").read_bytes() for s in SPLITS} == texts
