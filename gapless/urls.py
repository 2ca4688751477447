"""URL checks and redaction shared by configuration, storage and the HTTP client."""
from urllib.parse import urlsplit, urlunsplit

from .exceptions import UsageError


def validate_http_url(url, name="--tardis-url"):
    """Check an HTTP(S) base URL; raise :class:`UsageError` naming the flag when it is malformed."""
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise UsageError("%s: %r is not a valid URL (%s)" % (name, url, exc)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("%s: %r is not an http:// or https:// URL" % (name, url))
    return url.rstrip("/")


def redact_url(url):
    """The URL with its password replaced by ``***`` (for logs, errors and status)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, "%s:***@%s" % (parts.username or "", host), parts.path, parts.query,
                       parts.fragment))
