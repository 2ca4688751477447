"""Exceptions raised by gapless.

Every error gapless raises on purpose is a :class:`GaplessError`, so callers can catch one type.
The command line turns :class:`UsageError` (and its subclasses) into exit status 2.
"""


class GaplessError(Exception):
    """Base class of every error raised by gapless."""


class UsageError(GaplessError):
    """The caller asked for something that cannot be done as asked (bad argument or setting)."""


class ConfigurationError(UsageError):
    """A setting is missing or invalid; the message names the setting."""


class DataTypeError(UsageError):
    """A data type name is not one tardis-machine understands."""


class ServerError(GaplessError):
    """tardis-machine answered with an error, or could not be reached."""

    def __init__(self, message, status=None, retry_after=None, transient=True):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        # transient errors are retried; permanent ones (unknown exchange, bad options) are not
        self.transient = transient


class ServerUnreachableError(ServerError, UsageError):
    """tardis-machine cannot be reached at the configured URL (or it is not tardis-machine)."""

    def __init__(self, message):
        super().__init__(message, transient=True)


class RequestRejectedError(ServerError, UsageError):
    """tardis-machine refused the request itself (unknown exchange, symbol or option)."""

    def __init__(self, message, status=None):
        super().__init__(message, status=status, transient=False)


class IncompleteStreamError(ServerError):
    """A replay stream ended early: cut connection, or the server appended its error line.

    ``refused`` is True when tardis-machine itself said it could not go on (the error line): near
    the present that means history is not available yet.
    """

    def __init__(self, message, refused=False):
        super().__init__(message, transient=True)
        self.refused = refused


class StorageError(GaplessError):
    """The database cannot be opened or written (locked, full, corrupted, not a gapless database)."""


class DatabaseUrlError(StorageError, UsageError):
    """The database URL is malformed, unsupported, or points to something that is not a gapless database."""


class Stopped(GaplessError):
    """A download was asked to stop (not an error of the server: nothing to retry)."""
