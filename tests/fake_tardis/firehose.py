"""Pre-rendered quote frames for the firehose mode (the live benchmark's load)."""
from __future__ import annotations

from .render import fmt_ms
from .wsproto import frame

__all__ = ["firehose_prefixes", "firehose_batch"]

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
