"""What evaluate prints and results.json holds is strict JSON, also for a diverged model."""

from __future__ import annotations

import json
import math

from lm_flipout.training.run_dir import strict_json


def test_non_finite_numbers_become_null_and_the_rest_stays() -> None:
    text = strict_json({"ppl": math.inf, "loss": math.nan, "tokens": 12, "bpc": 1.25,
                        "split": "test"})
    strict = json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert strict == {"ppl": None, "loss": None, "tokens": 12, "bpc": 1.25, "split": "test"}
