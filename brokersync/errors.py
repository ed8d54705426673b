"""One exception base for brokersync; each subclass's docstring is its default message.

psycopg errors are translated once, at the database boundary (``brokersync.db``).
"""

from __future__ import annotations


class BrokersyncError(Exception):
    """brokersync failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(BrokersyncError):
    """The configuration is invalid."""

    # EX_CONFIG: NSSM (AppExit 78 Exit) and systemd (RestartPreventExitStatus=78)
    # do not restart a service that exits with it.
    exit_code = 78


class DatabaseUnavailable(BrokersyncError):
    """The database cannot be reached."""

    exit_code = 3


class MigrationError(BrokersyncError):
    """The database schema could not be brought up to date."""

    exit_code = 4


class UnknownConsumer(BrokersyncError):
    """No consumer has that name."""

    exit_code = 2
