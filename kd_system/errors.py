"""User-facing errors: one line, names the file or field, says what to do; the CLI exits 2."""


class KDError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""


class ConfigError(KDError):
    pass


class CheckpointError(KDError):
    pass


class StoreError(KDError):
    pass


class CorruptChunkError(StoreError):
    pass


class RunFailed(Exception):
    """The run ended because a component kept dying or the store was lost for good. The summary is
    written; the CLI prints the one line and exits 1 (not 2: the input was not at fault)."""
