"""Render normalized messages exactly the way tardis-machine prints them.

tardis-machine is Node.js: every line is ``JSON.stringify(message)``. Three details
matter for a byte-exact double:

* key order is the order the message object was built in (kept by ``dict``);
* numbers follow JavaScript's ``Number.prototype.toString``: ``83695`` not
  ``83695.0``, ``0.00000104`` not ``1.04e-06``, but ``5e-8`` below 1e-7;
* timestamps are ISO-8601 with a ``Z``: exchange times with 3 fraction digits,
  replay local times with 6 (tardis adds microseconds), live local times with 3.

The generic :func:`render_message` handles any dict; the hot paths in
``normalize.py`` build lines with the small helpers below instead (same output,
much faster), and the tests check the two agree with the fixtures.
"""
from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from decimal import Decimal

__all__ = [
    "js_number",
    "fmt_ms",
    "fmt_us",
    "fmt_local",
    "price_str",
    "cents_str",
    "render_message",
    "parse_ts_us",
]

_SEC_CACHE: dict[int, str] = {}
_SEC_CACHE_MAX = 200_000


def _sec_prefix(sec: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` for an epoch second, memoized (formatting dominates otherwise)."""
    s = _SEC_CACHE.get(sec)
    if s is None:
        if len(_SEC_CACHE) > _SEC_CACHE_MAX:
            _SEC_CACHE.clear()
        s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _SEC_CACHE[sec] = s
    return s


def fmt_ms(ms: int) -> str:
    """Epoch milliseconds -> ``2026-11-23T00:00:00.120Z`` (exchange / live precision)."""
    sec, frac = divmod(ms, 1000)
    return f"{_sec_prefix(sec)}.{frac:03d}Z"


def fmt_us(us: int) -> str:
    """Epoch microseconds -> ``2026-11-23T00:00:00.122585Z`` (replay local precision)."""
    sec, frac = divmod(us, 1_000_000)
    return f"{_sec_prefix(sec)}.{frac:06d}Z"


def fmt_local(us: int, live: bool) -> str:
    """Local timestamp in the precision of its source: live has ms, replay has µs."""
    return fmt_ms(us // 1000) if live else fmt_us(us)


def parse_ts_us(text: str) -> int:
    """ISO-8601 (``Z`` or offset, any fraction digits) -> epoch microseconds."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def js_number(x: float | int) -> str:
    """Format a number like JavaScript's ``String(x)`` (and so ``JSON.stringify``)."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if math.isnan(x) or math.isinf(x):
        return "null"  # JSON.stringify(NaN) === "null"
    if x == int(x) and abs(x) < 1e21:
        return str(int(x))  # also turns -0.0 into "0", as JS does
    r = repr(x)  # shortest round-trip digits, the same digits JS picks
    if "e" not in r:
        return r
    ax = abs(x)
    if 1e-6 <= ax < 1e21:
        return format(Decimal(r), "f")  # JS prints these in fixed notation
    mant, exp = r.split("e")
    e = int(exp)
    return f"{mant}e{'+' if e > 0 else '-'}{abs(e)}"


def price_str(ticks: int, tick_hundredths: int) -> str:
    """Exact decimal text of ``ticks * tick`` for ticks of 0.01..1 (what JS prints too)."""
    h = ticks * tick_hundredths
    whole, frac = divmod(h, 100)
    if frac == 0:
        return str(whole)
    if frac % 10 == 0:
        return f"{whole}.{frac // 10}"
    return f"{whole}.{frac:02d}"


def cents_str(cents: int) -> str:
    """Exact decimal text of an amount in hundredths (index/mark prices)."""
    sign = "-" if cents < 0 else ""
    return sign + price_str(abs(cents), 1)


def _render_value(v, local_live: bool | None, key: str | None) -> str:
    if v is None:
        return "null"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (bool, int, float)):
        return js_number(v)
    if isinstance(v, datetime):
        us = int(v.timestamp()) * 1_000_000 + v.microsecond
        if key == "localTimestamp" and local_live is not None:
            return '"' + fmt_local(us, local_live) + '"'
        return '"' + (fmt_ms(us // 1000) if us % 1000 == 0 else fmt_us(us)) + '"'
    if isinstance(v, dict):
        return render_message(v, local_live=local_live)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_render_value(x, local_live, None) for x in v) + "]"
    raise TypeError(f"cannot render {type(v).__name__}")


def render_message(msg: dict, local_live: bool | None = None) -> str:
    """``JSON.stringify(msg)`` for a message dict (no trailing newline).

    Strings are copied as they are (so timestamps already formatted stay byte-exact);
    ``datetime`` values print with 3 fraction digits when whole milliseconds, else 6,
    unless ``local_live`` forces the precision of ``localTimestamp``.
    """
    return "{" + ",".join(
        json.dumps(k, ensure_ascii=False) + ":" + _render_value(v, local_live, k) for k, v in msg.items()
    ) + "}"
