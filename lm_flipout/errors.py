"""User-facing errors: each carries a one-paragraph message that names the file, key or
value at fault and says how to fix it. Command-line entry points print these without a
traceback; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A problem with the user's input (recipe, data, checkpoint, arguments)."""


class ConfigError(UserError):
    """A recipe or override is invalid."""


class DataError(UserError):
    """A corpus, split or tokenizer setting cannot be used."""


class CheckpointError(UserError):
    """A checkpoint file is missing, truncated, foreign or does not match."""


class TrainingError(UserError):
    """Training cannot go on (a non-finite loss, an unusable run directory)."""


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception message, shortened; for one-paragraph error messages."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
