"""Where users read about the sampling schedule (the README and the LSTM layer's docstring),
it says that noise, signs and masks are fresh per truncated-BPTT window while the state
carries over. (That the layer behaves so is tested in tests/nn/test_nn_lstm.py.)"""

from __future__ import annotations

import re

from helpers import REPO
from lm_flipout.nn.lstm import LSTMLayer


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_readme_states_the_sampling_schedule() -> None:
    readme = flat((REPO / "README.md").read_text(encoding="utf-8"))
    assert ("weight noise, flipout signs and locked-dropout masks are drawn afresh for every "
            "truncated-BPTT window") in readme
    assert "while the hidden state carries over from one window to the next" in readme


def test_layer_docstring_states_the_sampling_schedule() -> None:
    doc = flat(LSTMLayer.__doc__ or "")
    assert "every truncated-BPTT window, draws its weight noise afresh" in doc
    assert "locked-dropout masks" in doc
    assert "The hidden state carries over from one window to the next" in doc
