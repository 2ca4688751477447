"""What a recorder subscribes to, and how: the websocket URL, how often it commits, how long a silence it allows.

Parameters that follow from the streams alone, kept apart from the recorder's connection loop
(:mod:`gapless.recorder`).
"""
from urllib.parse import quote

import orjson

from .datatypes import asked_types, parse_data_types

MANY_STREAMS = 64
CHAIN_STREAMS = 256
_FAST_FAMILIES = ("book_snapshot", "book_change", "derivative_ticker", "book_ticker", "option_summary")


def default_flush_interval(streams):
    """Seconds between commits: 0.25 s, 1 s for more than :data:`MANY_STREAMS` streams, 2 s for more than
    :data:`CHAIN_STREAMS` (an option chain).

    Every commit makes a claim for each stream (written when due, :mod:`gapless.live_claims`), marks the rows' ranges
    for the minute store and commits a transaction: with hundreds of streams that per-commit work, four times a
    second, cost more than the rows themselves. A commit every 2 s delays a final minute's publishing by at most
    1.75 s more than 0.25 s would.
    """
    if streams <= MANY_STREAMS:
        return 0.25
    return 1.0 if streams <= CHAIN_STREAMS else 2.0


def stream_url(ws_url, exchange, symbols, data_types, filters=None):
    """The ``/ws-stream-normalized`` URL with disconnect and error messages switched on.

    ``filters``: ``[(symbols, data_types)]`` to subscribe exactly those products (an array of options objects,
    which tardis-machine merges into one stream) instead of every symbol x data type.
    """
    def one(symbols, data_types):
        return {"exchange": exchange, "symbols": list(symbols), "dataTypes": asked_types(data_types),
                "withDisconnectMessages": True, "withErrorMessages": True}

    options = [one(s, d) for s, d in filters] if filters and len(filters) > 1 else one(symbols, data_types)
    return "%s/ws-stream-normalized?options=%s" % (ws_url.rstrip("/"), quote(orjson.dumps(options).decode(), safe=""))


def data_silence_tolerance(data_types):
    """Seconds without any data frame before the connection is considered stale.

    Quotes, books and tickers of a listed instrument arrive several times a minute; trades and
    1-minute bars of a quiet instrument may not come for many minutes, and must not cause a
    reconnect every few seconds.
    """
    types = parse_data_types(list(data_types))
    if any(t.family in _FAST_FAMILIES and t.interval_ms <= 1000 for t in types):
        return 60.0
    return 900.0


def refused_for_size(exc, url):
    """What to do when the server refused the subscription for its size (HTTP 414/431: tardis-machine is a Node
    server, whose request head is limited to 16 KiB by default, and every symbol is in the URL)."""
    if getattr(exc, "status_code", None) not in (414, 431):
        return ""
    return ("; the subscription URL is %d bytes, more than the server takes: follow fewer symbols per service, or "
            "start tardis-machine's Node with a larger --max-http-header-size" % len(url))


READ_AHEAD = 16384


def read_ahead(ws):
    """Let websocket-client read the socket in chunks of up to :data:`READ_AHEAD` bytes instead of exactly what the
    next frame part needs (2 header bytes, then the length, then the payload: two or three ``recv`` calls per
    frame). Its ``frame_buffer.recv_strict`` already keeps whatever a read returns past the frame; asking for more
    costs nothing when less is there (``recv`` returns what the socket holds). 9 µs of CPU a frame instead of 15
    on a firehose of quotes (websocket-client 1.9.2, pinned). A websocket-client without that attribute keeps
    its own reads."""
    frames = getattr(ws, "frame_buffer", None)
    recv = getattr(frames, "recv", None)
    if recv is not None and hasattr(frames, "recv_buffer"):
        frames.recv = lambda size: recv(max(size, READ_AHEAD))
    return ws

