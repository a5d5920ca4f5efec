"""Hyperparameter search with Optuna (``lm-flipout tune``): a YAML search space over recipe
keys, a study whose trials are ordinary training runs, and the study's outputs."""

from .space import Distribution, SearchSpace, StudySettings, read_space, space_from_data
from .tune import TuneResult, study_dir_of, tune

__all__ = ["Distribution", "SearchSpace", "StudySettings", "TuneResult", "read_space",
           "space_from_data", "study_dir_of", "tune"]
