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
