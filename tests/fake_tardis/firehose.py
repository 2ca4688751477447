"""The firehose mode (the live benchmark's load): pre-rendered quote frames, as fast as a socket takes them."""
from __future__ import annotations

import time

from .render import fmt_ms
from .wsproto import frame

__all__ = ["firehose_prefixes", "firehose_batch", "run_firehose"]

_FIREHOSE_BATCH = 2048

_TS_LEN = len("2026-11-25T16:00:49.369123Z")


def firehose_prefixes(symbols) -> list[bytes]:
    """Frame header + JSON up to the timestamp, for a few price/amount variants per symbol.

    Every variant has the same payload length per symbol, so the frame header is fixed
    and a frame is five byte strings joined (the firehose is limited by the socket).
    """
    out = []
    for k in range(16):
        for ex, sym in symbols:
            # bid "x.5", ask "x+1": JS-formatted prices of a fixed width
            payload = (f'{{"type":"book_snapshot","symbol":"{sym}","exchange":"{ex}","name":"quote","depth":1,'
                       f'"interval":0,"bids":[{{"price":{85000 + k}.5,"amount":{1000 + 10 * k}}}],'
                       f'"asks":[{{"price":{85001 + k},"amount":{2000 + 10 * k}}}],'
                       f'"timestamp":"').encode()
            total = len(payload) + _TS_LEN + len('","localTimestamp":"') + _TS_LEN + len('"}')
            out.append(frame(b"x" * total)[: -total] + payload)
    return out


def firehose_batch(prefixes: list[bytes], start_us: int, first: int, n: int) -> bytes:
    """``n`` quote frames with unique, increasing µs timestamps (start + frame index)."""
    parts: list[bytes] = []
    add = parts.append
    k = len(prefixes)
    sec = -1
    secp = b""
    mid, end = b'","localTimestamp":"', b'"}'
    for i in range(first, first + n):
        s, frac = divmod(start_us + i, 1_000_000)
        if s != sec:
            sec, secp = s, fmt_ms(s * 1000)[:-5].encode()
        ts = b"%s.%06dZ" % (secp, frac)
        add(prefixes[i % k])
        add(ts)
        add(mid)
        add(ts)
        add(end)
    return b"".join(parts)


def run_firehose(session, specs, seconds: float) -> None:
    """Push quote frames on a websocket session for ``seconds`` as fast as it takes them, then idle.

    ``session`` is a ``stream_server._Session`` (its queue, pump, commands and heartbeat).
    """
    session._specs = specs
    start_us = session.m.clock.now_us()
    prefixes = firehose_prefixes([(s.exchange, sym) for s in specs for sym in s.symbols])
    beat = {"next_ping": time.monotonic() + session.m.ping_interval_s, "window": None}
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        session._commands()
        if len(session.wbuf) < 1 << 20:
            session._queue(firehose_batch(prefixes, start_us, i, _FIREHOSE_BATCH))
            # counted per batch, once the socket has taken the whole batch
            session.inflight.append((session.queued, None, _FIREHOSE_BATCH))
            i += _FIREHOSE_BATCH
        session._pump(0.05 if len(session.wbuf) >= 1 << 20 else 0)
    session._flush(5.0)
    while True:  # idle: keep the connection open, answer pings
        session._commands()
        session._heartbeat(beat)
        session._pump(min(1.0, max(0.0, beat["next_ping"] - time.monotonic())))
