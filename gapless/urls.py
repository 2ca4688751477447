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


def parse_host_port(text, name="--metrics-addr"):
    """``host:port`` (IPv6 as ``[::1]:port``) as ``(host, port)``; raise :class:`UsageError` naming ``name``."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # an IPv6 address needs brackets: [::1]:9108
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535 or any(c in host for c in " /[]@?#"):
        raise UsageError("%s: %r is not host:port (e.g. 127.0.0.1:9108)" % (name, text))
    return host, int(port)
