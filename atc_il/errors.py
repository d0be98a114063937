"""One error family. Messages say what was wrong and what to do; the CLI prints them on one line."""


class AtcIlError(Exception):
    """Base class of every error atc-il raises on purpose."""


class ConfigError(AtcIlError):
    """A configuration file or option is invalid."""


class DataError(AtcIlError):
    """Data does not satisfy a contract (missing column, wrong type, impossible value)."""


class LimitError(DataError):
    """A valid request or input would need more work than the configured limit ``limit`` allows."""

    def __init__(self, limit: str, message: str):
        self.limit = limit
        super().__init__(message)


class ReadError(AtcIlError):
    """A file cannot be read at all."""

    def __init__(self, path: object, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class SimulatorError(AtcIlError):
    """The simulator rejected a command or failed."""


class ModelError(AtcIlError):
    """A model cannot be built, loaded or used."""
