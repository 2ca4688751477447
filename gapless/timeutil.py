"""Time helpers: tardis ISO-8601 timestamps, microsecond integers, minutes and durations.

gapless keeps every instant as an ``int`` of microseconds since the Unix epoch (UTC) internally:
it is exact, cheap to compare and to store, and converts to pandas datetimes in one vectorised step.
Public functions accept and return timezone-aware UTC datetimes.
"""
import calendar
import re
from datetime import datetime, timedelta, timezone

from .exceptions import UsageError

US = 1_000_000
MINUTE_US = 60 * US
DAY_US = 86_400 * US

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TS_SHAPE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z\Z")
_second_cache = {}
# streams move forward in time, so a few thousand recent seconds give nearly every hit; a bigger cache
# only grows a long-running recorder (one entry per second of data, ~130 B each)
_SECOND_CACHE_MAX = 8192


def parse_timestamp_us(text):
    """Parse a tardis timestamp (``2026-11-23T00:00:00.122585Z``, 0-9 fraction digits) to µs since epoch.

    Hot path of the replay and live ingestion: the whole-second prefix is cached, so most calls
    only parse the fraction. Raises ``ValueError`` for anything that is not such a timestamp.
    """
    prefix = text[:19]
    base = _second_cache.get(prefix)
    if base is None or text[-1] != "Z":
        base = _parse_second(text)
    n = len(text)
    if n == 20:
        return base
    # ".ffffff" between the seconds and the Z; pad or cut to microseconds
    frac = text[20:n - 1]
    if text[19] != "." or not frac.isdigit():
        raise ValueError("malformed timestamp %r" % (text,))
    if len(frac) < 6:
        return base + int(frac) * 10 ** (6 - len(frac))
    return base + int(frac[:6])


def _parse_second(text):
    if not isinstance(text, str) or not _TS_SHAPE.match(text):
        raise ValueError("malformed timestamp %r" % (text,))
    dt = datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]),
                  int(text[11:13]), int(text[14:16]), int(text[17:19]))
    base = calendar.timegm(dt.timetuple()) * US
    if len(_second_cache) >= _SECOND_CACHE_MAX:
        _second_cache.clear()
    _second_cache[text[:19]] = base
    return base


def to_us(value):
    """Convert an aware datetime (naive = UTC), a pandas Timestamp or an int (µs) to µs since epoch."""
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * US + delta.microseconds
    raise TypeError("expected a datetime or int microseconds, got %r" % (value,))


def from_us(us):
    """Convert µs since epoch to an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=us)


def iso(us):
    """Format µs since epoch as ISO-8601 UTC (``2026-11-23T13:30:00Z``, fraction only when needed)."""
    dt = from_us(us)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def floor_minute(us):
    """Start of the minute containing ``us``."""
    return us - us % MINUTE_US


def ceil_minute(us):
    """Smallest minute boundary >= ``us``."""
    return -(-us // MINUTE_US) * MINUTE_US


def ceil_to(us, step):
    """Smallest multiple of ``step`` >= ``us``."""
    return -(-us // step) * step


def floor_to(us, step):
    """Largest multiple of ``step`` <= ``us``."""
    return us - us % step


def floor_day(us):
    """00:00 UTC of the day containing ``us``."""
    return us - us % DAY_US


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"us": 1, "ms": 1000, "s": US, "m": MINUTE_US, "h": 60 * MINUTE_US, "d": DAY_US,
                   "w": 7 * DAY_US}


def parse_duration_us(text, name="duration"):
    """Parse ``90m``, ``7d``, ``15m``, ``60s``, ``2h``, ``1w``, a ``timedelta``, or seconds (number) to µs.

    ``name`` is the setting or flag being parsed, so the error names it.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text * US)
    if isinstance(text, timedelta):
        return int(text.total_seconds() * US)
    match = _DURATION.match(str(text))
    if not match:
        raise UsageError("%s: %r is not a duration (use e.g. 90s, 15m, 2h, 7d)" % (name, text))
    return int(float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"])


def parse_time_arg(text, name="time"):
    """Parse a user-supplied UTC time (``2026-11-23``, ``2026-11-23T13:30``, with seconds or ``Z``).

    Naive times are UTC; an explicit offset is converted. Returns µs since epoch.
    """
    if isinstance(text, datetime):
        return to_us(text)
    raw = str(text).strip()
    try:
        dt = datetime.fromisoformat(raw.replace(" ", "T", 1) if "T" not in raw else raw)
    except ValueError:
        raise UsageError("%s: %r is not an ISO-8601 UTC time (e.g. 2026-11-23T13:30)" % (name, text)) from None
    return to_us(dt)
