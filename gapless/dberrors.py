"""Database driver errors, and their text made safe to show (no password)."""
import sqlite3

from peewee import DatabaseError, InterfaceError, OperationalError

from .redaction import redact, url_password

try:  # the PostgreSQL driver's own errors (COPY goes around Peewee's exception wrapping)
    from psycopg import Error as _PsycopgError
except ImportError:  # pragma: no cover - psycopg is in requirements.txt
    _PsycopgError = DatabaseError
DRIVER_ERRORS = (DatabaseError, InterfaceError, OperationalError, sqlite3.DatabaseError, _PsycopgError)


def clean_error(exc, url):
    """An exception's first line with the database password removed (in every spelling)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return redact(text, [url_password(url)])
