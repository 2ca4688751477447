"""tardis-machine data types: parsing and validating names like ``quote_1m`` or ``book_snapshot_5_1s``.

A data type decides which message ``type`` carries it, which table stores it, whether it is derived
from the order book (and so only available after the day's 00:00 book snapshot), and whether it is an
*interval* type (one sample per interval, stamped at the interval's END, emitted when the next event
arrives) or a *raw* type (one message per event, stamped at the event).
"""
import re
from dataclasses import dataclass

from .exceptions import DataTypeError

MAX_DEPTH = 50

# message ``type`` -> storage family
FAMILY_OF_TYPE = {
    "book_snapshot": "book_snapshot",
    "trade": "trade",
    "trade_bar": "trade_bar",
    "book_change": "book_change",
    "derivative_ticker": "derivative_ticker",
    "liquidation": "liquidation",
    "book_ticker": "book_ticker",
    "option_summary": "option_summary",
}
# a type whose coverage is that of another stream of the same symbol: liquidations are rare, so their own
# silence proves nothing; tardis derives them from the trades channel, which proves it up (issue 19)
CLAIMS_FOLLOW = {"liquidation": "trade"}

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000}
_INTERVAL = r"(\d+)(ms|s|m)"
_QUOTE = re.compile(r"^quote(?:_%s)?$" % _INTERVAL)
_SNAPSHOT = re.compile(r"^book_snapshot_(\d+)_%s$" % _INTERVAL)
_TRADE_BAR = re.compile(r"^trade_bar_%s$" % _INTERVAL)


@dataclass(frozen=True)
class DataType:
    """One parsed data type name.

    ``name`` is what tardis-machine expects in ``dataTypes`` and echoes in a message's ``name``;
    ``message_type`` is the message ``type`` (stored as ``dtype``); ``family`` names the table family.
    """

    name: str
    message_type: str
    family: str
    depth: int = 0
    interval_ms: int = 0

    @property
    def book_derived(self):
        """True when the server needs the day's initial book snapshot to produce this type."""
        return self.family in ("book_snapshot", "book_change")

    @property
    def interval(self):
        """True for sampled types (stamped at the interval end, emitted when the next event arrives)."""
        return self.interval_ms > 0

    @property
    def table(self):
        """Name of the table that stores this data type."""
        if self.family == "book_snapshot":
            return "book_snapshot_%d" % self.depth
        return self.family

    @property
    def evidence(self):
        """Which source events drive this type's samples: ``book`` or ``trade`` (None for tickers)."""
        if self.family in ("book_snapshot", "book_change"):
            return "book"
        if self.family in ("trade", "trade_bar"):
            return "trade"
        return None

    @property
    def claims_follow(self):
        """The data type whose claims this one's copy (its own messages never prove coverage), or None."""
        return CLAIMS_FOLLOW.get(self.family)


def parse_data_type(name):
    """Parse one data type name; raise :class:`DataTypeError` naming it when it is not valid."""
    if not isinstance(name, str):
        raise DataTypeError("data type %r is not a string" % (name,))
    key = name.strip()
    if key in ("trade", "book_change", "derivative_ticker", "liquidation", "book_ticker", "option_summary"):
        return DataType(key, key, key)
    match = _QUOTE.match(key)
    if match:
        interval = _interval_ms(match.group(1), match.group(2), name) if match.group(1) else 0
        return DataType(key, "book_snapshot", "book_snapshot", depth=1, interval_ms=interval)
    match = _SNAPSHOT.match(key)
    if match:
        depth = int(match.group(1))
        if not 1 <= depth <= MAX_DEPTH:
            raise DataTypeError("data type %r: depth must be 1..%d" % (name, MAX_DEPTH))
        interval = _interval_ms(match.group(2), match.group(3), name)
        return DataType(key, "book_snapshot", "book_snapshot", depth=depth, interval_ms=interval)
    match = _TRADE_BAR.match(key)
    if match:
        interval = _interval_ms(match.group(1), match.group(2), name)
        if interval == 0:
            raise DataTypeError("data type %r: a trade bar needs an interval > 0" % (name,))
        return DataType(key, "trade_bar", "trade_bar", interval_ms=interval)
    raise DataTypeError(
        "unknown data type %r (expected trade, liquidation, book_change, derivative_ticker, book_ticker, option_summary, quote, quote_<N><ms|s|m>, "
        "book_snapshot_<depth>_<N><ms|s|m> or trade_bar_<N><ms|s|m>)" % (name,))


def _interval_ms(number, unit, name):
    value = int(number) * _UNIT_MS[unit]
    if value > 86_400_000:
        raise DataTypeError("data type %r: interval longer than a day" % (name,))
    return value


def parse_data_types(names):
    """Parse a comma-separated string or a list of names; duplicates are dropped, order kept."""
    if isinstance(names, str):
        names = [part for part in names.split(",")]
    parsed = []
    for name in names:
        if isinstance(name, DataType):
            data_type = name
        elif not str(name).strip():
            continue
        else:
            data_type = parse_data_type(name)
        if data_type not in parsed:
            parsed.append(data_type)
    if not parsed:
        raise DataTypeError("no data type given")
    return parsed


def series_problem(data_type):
    """Why a data type has no minute series (a sentence naming it and the rule), or None when it has one.

    A minute series needs samples that can be cut at minute boundaries: raw types, and sampled types whose
    interval divides a minute. A longer interval (``trade_bar_5m``) carries one value for several minutes
    and an interval that does not divide a minute (``quote_7s``) straddles the minute's close.
    """
    if data_type.family == "book_change":
        return ("data type %r has no minute series: it is the raw order book feed; use quote, quote_<interval> or "
                "book_snapshot_<depth>_<interval>, which tardis-machine computes from the same changes"
                % (data_type.name,))
    interval = data_type.interval_ms
    if interval and (interval > 60_000 or 60_000 % interval):
        return ("data type %r has no minute series: its interval must divide a minute (e.g. 100ms, 1s, 5s, 10s, "
                "15s, 30s, 1m); %s %s" % (data_type.name, _interval_text(interval),
                                          "is longer than a minute" if interval > 60_000 else
                                          "does not divide a minute"))
    return None


def check_series_types(data_types, label="data types"):
    """Raise :class:`DataTypeError` (naming the type and the rule) if one of ``data_types`` has no minute series."""
    for data_type in parse_data_types(data_types):
        problem = series_problem(data_type)
        if problem:
            raise DataTypeError("%s: %s" % (label, problem))
    return data_types


def _interval_text(ms):
    for unit, size in (("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return "%d%s" % (ms // size, unit)
    return "%dms" % ms


def asked_types(names):
    """The data types to ask tardis-machine for so that ``names`` can be claimed: each type whose claims follow
    another's brings that one along (``liquidation`` asks ``trade`` too; its rows serve as evidence only)."""
    names = list(names)
    for name in list(names):
        leader = CLAIMS_FOLLOW.get(name)
        if leader is not None and leader not in names:
            names.append(leader)
    return names


def data_type_of_message(message):
    """The data type name a normalized message belongs to (its ``name``, else its ``type``)."""
    return message.get("name") or message.get("type")
