"""Experiments built on the library: comparison suites and their reports.

A suite (``recipes/suites/*.yaml``, read by `lm_flipout.experiments.suite`) lists recipes
that are compared on equal terms; ``lm-flipout compare SUITE`` trains
every row that has not finished and writes ``reports/<suite>.md`` and a validation-curve
plot (`lm_flipout.experiments.report`). A tuned suite first searches each row's
hyperparameters with the same budget (`lm_flipout.experiments.tuned_suite`).
"""
