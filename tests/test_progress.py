"""Progress of a silent loop (lm_flipout/progress.py): a line every few seconds off a
terminal, the items untouched, nothing when disabled."""

from __future__ import annotations

import io

from lm_flipout.progress import shown_progress


class Ticks:
    """A clock that moves on by ``step`` seconds at every reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_off_a_terminal_a_line_every_few_seconds():
    stream = io.StringIO()  # not a terminal
    items = list(shown_progress(range(10), 10, "scoring test", stream=stream, every_s=4.0,
                                clock=Ticks(1.0)))
    assert items == list(range(10))
    assert stream.getvalue().splitlines() == [
        "scoring test: 4/10 batches (40%), 4 s",
        "scoring test: 8/10 batches (80%), 8 s",
    ]


def test_disabled_progress_says_nothing():
    stream = io.StringIO()
    assert list(shown_progress("abc", 3, "x", enabled=False, stream=stream,
                               clock=Ticks(100.0))) == ["a", "b", "c"]
    assert stream.getvalue() == ""


def test_on_a_terminal_a_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    assert list(shown_progress(range(3), 3, "scoring valid", stream=stream)) == [0, 1, 2]
    assert "scoring valid" in stream.getvalue()
