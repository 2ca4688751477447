"""HTTP client for tardis-machine's ``/replay-normalized``: streams NDJSON lines, never the whole body.

The response is read in large pieces (64 KiB through urllib3's ``read``, many of tardis-machine's small HTTP
chunks at once; the default 512-byte chunk of ``iter_lines`` caps at ~400k lines/s) and split into lines here, because the client must see whether the
LAST line ended with a newline: tardis-machine reports an error that happens after streaming
started by appending the error JSON as a final line WITHOUT a newline (the status is already 200).
A cut connection looks like a stream that ends early; both raise :class:`IncompleteStreamError`.
"""
import http.client
import logging
import re
import uuid
from urllib.parse import quote

import orjson
import requests
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError, SSLError

from .datatypes import asked_types
from .exceptions import IncompleteStreamError, RequestRejectedError, ServerError, ServerUnreachableError
from .timeutil import iso
from .urls import validate_http_url

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 16
GATHER_BYTES = 1 << 19
# tardis answers these for requests it will never serve, whatever we retry
_PERMANENT = re.compile(r"not supported|invalid|unknown|not allowed|unauthori[sz]ed|forbidden|api key",
                        re.IGNORECASE)


def fresh_symbol(purpose):
    """A symbol no exchange lists, new each time: a request naming it has a filter set of its own.

    tardis-machine caches every data-feed slice it fetched per filter set (channels and symbols), including
    the EMPTY answer some upstreams give for a minute that is not available yet, for good. A request with
    one more symbol than any other request ever made cannot be answered from that cache: it is fetched
    fresh from upstream (the server accepts a symbol it has no data for and sends nothing for it).
    """
    return "GAPLESS-%s-%s" % (purpose.upper(), uuid.uuid4().hex[:16].upper())


def replay_options(exchange, symbols, data_types, start_us, end_us, api_key=None, fresh=None):
    """The ``options`` object of one replay request (``from``/``to`` as ISO-8601 UTC).

    ``fresh``: a purpose (``"probe"``, ``"check"`` ...): the request gets a filter set of its own (see
    :func:`fresh_symbol`), so nothing in tardis-machine's cache answers it and it fills no stream's cache.
    """
    options = {
        "exchange": exchange,
        "symbols": list(symbols) + ([fresh_symbol(fresh)] if fresh else []),
        "from": iso(start_us),
        "to": iso(end_us),
        "dataTypes": asked_types(data_types),  # with the leaders of followers (trade for liquidation)
        "withDisconnectMessages": True,
    }
    if api_key:
        options["apiKey"] = api_key
    return options


def redact_options(options):
    """Options with the API key hidden (for logs and errors)."""
    if isinstance(options, dict) and "apiKey" in options:
        return dict(options, apiKey="***")
    return options


class ReplayClient:
    """Streams one replay request at a time over a keep-alive ``requests`` session.

    ``timeout`` is ``(connect, read)`` seconds; the read timeout bounds the silence between two
    chunks, so a server that hangs mid-stream is noticed.
    """

    def __init__(self, base_url, timeout=(5.0, 60.0), session=None):
        self.base_url = validate_http_url(base_url)
        self.timeout = timeout
        self.session = session or requests.Session()
        self.bytes_received = 0

    def health_check(self):
        """Check that a tardis-machine answers at the base URL; raise :class:`ServerUnreachableError` if not."""
        url = self.base_url + "/health-check"
        try:
            response = self.session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ServerUnreachableError("cannot reach tardis-machine at %s (%s)"
                                         % (self.base_url, _reason(exc))) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict) or "status" not in body:
            raise ServerUnreachableError("%s does not look like tardis-machine (GET /health-check answered %d)"
                                         % (self.base_url, response.status_code))
        return body

    def stream_lines(self, options):
        """Yield lists of complete lines (bytes, no newline) of one replay request.

        Raises :class:`RequestRejectedError` for a permanent refusal (unknown exchange...),
        :class:`ServerError` for other non-200 answers (``retry_after`` set from ``Retry-After``),
        :class:`ServerUnreachableError` when the connection cannot be made and
        :class:`IncompleteStreamError` when the stream ends with the error line, a partial line,
        a cut or a read timeout. The generator returns normally only for a complete stream.
        """
        url = "%s/replay-normalized?options=%s" % (
            self.base_url, quote(orjson.dumps(options).decode(), safe=""))
        try:
            response = self.session.get(url, stream=True, timeout=self.timeout)
        except requests.ConnectionError as exc:
            raise ServerUnreachableError("cannot reach tardis-machine at %s (%s)"
                                         % (self.base_url, _reason(exc))) from None
        except requests.Timeout as exc:
            raise ServerError("tardis-machine at %s did not answer (%s)" % (self.base_url, _reason(exc))) from None
        with response:
            if response.status_code != 200:
                raise _status_error(response)
            buffer = bytearray()
            cut = None
            while True:
                # tardis-machine writes small HTTP chunks (32 lines); read many at once, so the parser gets a
                # few thousand lines per call instead of a few dozen. urllib3's read(n) leaves the chunked
                # framing to http.client, which takes chunks until it has n bytes: 40 % less CPU per line
                # than iter_content, which goes through Python code for every 32-line chunk
                try:
                    chunk = response.raw.read(CHUNK_SIZE, decode_content=True)
                except (ProtocolError, ReadTimeoutError, DecodeError, SSLError, OSError) as exc:
                    cut = IncompleteStreamError("replay stream cut (%s)" % (_reason(exc),))
                    chunk = _delivered_before(exc)
                if chunk:
                    self.bytes_received += len(chunk)
                    buffer += chunk
                    if cut is None and len(buffer) < GATHER_BYTES:
                        continue
                lines = bytes(buffer).split(b"\n")
                buffer = bytearray(lines.pop())
                if lines:
                    yield lines  # the complete lines, also those that arrived before a cut
                if cut is not None or not chunk:
                    break
            if cut is not None:
                raise cut
            if buffer.strip():
                raise _final_line_error(bytes(buffer))


def _delivered_before(exc):
    """The whole HTTP chunks a read took in before the connection broke (http.client keeps them in its
    IncompleteRead, which urllib3 wraps): lines that arrived are kept, as they were when read chunk by chunk."""
    for cause in (exc.__cause__,) + tuple(exc.args):
        if isinstance(cause, http.client.IncompleteRead) and isinstance(cause.partial, bytes):
            return cause.partial
    return b""


def _final_line_error(line):
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return IncompleteStreamError("replay stream ended with a partial line (%d bytes)" % len(line))
    if isinstance(message, dict) and "message" in message and "type" not in message:
        return IncompleteStreamError("tardis-machine error after streaming started: %s"
                                     % (str(message["message"])[:300],), refused=True)
    return IncompleteStreamError("replay stream ended without a final newline")


def _status_error(response):
    try:
        body = response.json()
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        body, message = None, None
    text = message or (response.text[:200].strip() if response.text else response.reason)
    retry_after = None
    header = response.headers.get("Retry-After")
    if header:
        try:
            retry_after = max(0.0, float(header))
        except ValueError:
            retry_after = None
    status = response.status_code
    if status in (429, 502, 503, 504):
        return ServerError("tardis-machine answered %d: %s" % (status, text), status=status,
                           retry_after=retry_after, transient=True)
    if (400 <= status < 500 and status != 408) or (message and _PERMANENT.search(message)):
        return RequestRejectedError("tardis-machine refused the request (%d): %s" % (status, text), status=status)
    if body is None and status == 404:
        return ServerUnreachableError("%s does not look like tardis-machine (404 for /replay-normalized)"
                                      % (response.url.split("/replay-normalized")[0],))
    return ServerError("tardis-machine answered %d: %s" % (status, text), status=status,
                       retry_after=retry_after, transient=True)


def _reason(exc):
    """A short reason for a requests exception, without URLs (they may carry the API key)."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Read timed out",
                   "Connection reset", "Connection aborted", "IncompleteRead", "InvalidChunkLength",
                   "Response ended prematurely", "No route to host", "Temporary failure in name resolution"):
        if marker.lower() in text.lower():
            return marker
    return exc.__class__.__name__
