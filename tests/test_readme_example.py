"""The README's example of the flipout LSTM used outside the toolkit runs as printed."""

import re

from torch.nn.utils.rnn import PackedSequence

from helpers import REPO


def test_the_readme_layer_example_runs() -> None:
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    scope: dict = {}
    exec(code, scope)
    assert tuple(scope["y"].shape) == (8, 35, 64) and tuple(scope["h"].shape) == (2, 8, 64)
    assert isinstance(scope["packed"], PackedSequence)
    assert tuple(scope["packed"].data.shape) == (12 + 35 + 7, 64)
    assert tuple(scope["h_last"].shape) == (2, 3, 64)
    assert all(p.grad is not None for p in scope["lstm"].parameters())
    assert not scope["lstm"].training
