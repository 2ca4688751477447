"""Parse and validate the ``options`` of /replay-normalized and /ws-stream-normalized.

Symbols are upper-cased first, as tardis-machine does (tardis-node's ``upperCaseSymbols``): ``btc-perpetual``
asks for ``BTC-PERPETUAL`` and every message names ``BTC-PERPETUAL``; what is still not a symbol after that
(a space, an empty name ...) is refused with a 500 as before.

Data types: ``trade``, ``book_change``, ``derivative_ticker``, ``liquidation`` (from the trades channel),
``book_ticker`` and ``option_summary`` (both from the exchange's ``ticker`` channel, shared with
``derivative_ticker``: one filter set, one cache folder, one channel a ``disconnect`` resets), ``quote*``,
``book_snapshot_*`` and ``trade_bar_*``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from .market import KNOWN_EXCHANGES, SYMBOL_RE

__all__ = ["OptionsError", "BookSpec", "BarSpec", "StreamSpec", "parse_options", "parse_time_us", "parse_data_type"]

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000}
_QUOTE_RE = re.compile(r"^quote_(\d+)(ms|s|m)$")
_SNAPSHOT_RE = re.compile(r"^book_snapshot_(\d+)_(\d+)(ms|s|m)$")
_BAR_RE = re.compile(r"^trade_bar_(\d+)(ms|s|m|ticks|vol)$")


class OptionsError(ValueError):
    """Bad request options; the message is what the server answers in ``{"message": ...}``."""


@dataclass(frozen=True)
class BookSpec:
    """A book snapshot computable: ``quote`` is depth 1 interval 0."""

    name: str
    depth: int
    interval: int  # ms


@dataclass(frozen=True)
class BarSpec:
    """A trade bar computable (kind time/tick/volume, like tardis-node)."""

    name: str
    kind: str
    interval: int  # ms for time bars, trades for tick bars, volume for volume bars


@dataclass(frozen=True)
class StreamSpec:
    """One options object, validated. Times are epoch µs truncated to the minute."""

    exchange: str
    symbols: tuple[str, ...]
    data_types: tuple[str, ...]
    trade: bool
    book_change: bool
    ticker: bool
    books: tuple[BookSpec, ...]
    bars: tuple[BarSpec, ...]
    with_disconnect: bool
    with_errors: bool
    from_us: int | None
    to_us: int | None
    raw: str  # canonical JSON of the original object (cache keys, records)
    liquidation: bool = False  # derived from the trades channel (see market.liquidation_kind)
    book_ticker: bool = False  # from the ticker channel: one message per ticker event, no change detection
    option_summary: bool = False  # from the ticker channel of option instruments (option_model.py)

    @property
    def needs_book(self) -> bool:
        """Whether book changes feed this stream."""
        return self.book_change or bool(self.books)

    @property
    def needs_ticker(self) -> bool:
        """Whether the exchange's ticker channel feeds this stream (derivative_ticker, book_ticker, option_summary)."""
        return self.ticker or self.book_ticker or self.option_summary

    @property
    def needs_trades(self) -> bool:
        """Whether trades feed this stream (liquidations come from the trades channel too: same filter set)."""
        return self.trade or self.liquidation or bool(self.bars)


def parse_time_us(value) -> int:
    """ISO-8601 UTC text (with or without seconds/``Z``) -> epoch µs truncated to the minute."""
    if not isinstance(value, str) or not value:
        raise OptionsError(f"Invalid date: {value!r}")
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise OptionsError(f"Invalid date: {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) // 60 * 60 * 1_000_000


def parse_data_type(dt: str):
    """-> ('trade'|'book_change'|'ticker'|'liquidation'|'book_ticker'|'option_summary'|'book'|'bar', spec or None);
    raises :class:`OptionsError`."""
    if dt == "trade":
        return "trade", None
    if dt == "book_change":
        return "book_change", None
    if dt == "derivative_ticker":
        return "ticker", None
    if dt == "liquidation":
        return "liquidation", None
    if dt == "book_ticker":
        return "book_ticker", None
    if dt == "option_summary":
        return "option_summary", None
    if dt == "quote":
        return "book", BookSpec("quote", 1, 0)
    m = _QUOTE_RE.match(dt)
    if m:
        return "book", BookSpec(dt, 1, int(m.group(1)) * _UNIT_MS[m.group(2)])
    m = _SNAPSHOT_RE.match(dt)
    if m and int(m.group(1)) > 0:
        return "book", BookSpec(dt, int(m.group(1)), int(m.group(2)) * _UNIT_MS[m.group(3)])
    m = _BAR_RE.match(dt)
    if m and int(m.group(1)) > 0:
        n, unit = int(m.group(1)), m.group(2)
        if unit == "ticks":
            return "bar", BarSpec(dt, "tick", n)
        if unit == "vol":
            return "bar", BarSpec(dt, "volume", n)
        return "bar", BarSpec(dt, "time", n * _UNIT_MS[unit])
    raise OptionsError(f"Invalid data type: {dt!r} is not supported")


def _normalizer_name(kinds: set[str]) -> str:
    # tardis-machine creates its normalizers in this fixed order; the first one to be
    # built for an unknown exchange names the error ("normalizeTrades: x not supported")
    if {"trade", "bar"} & kinds:
        return "normalizeTrades"
    if "liquidation" in kinds:
        return "normalizeLiquidations"
    if {"book_change", "book"} & kinds:
        return "normalizeBookChanges"
    if "ticker" in kinds:
        return "normalizeDerivativeTickers"
    if "option_summary" in kinds:
        return "normalizeOptionsSummary"
    if "book_ticker" in kinds:
        return "normalizeBookTickers"
    return "normalizeDerivativeTickers"


def _parse_one(obj, *, replay: bool, default_symbols) -> StreamSpec:
    if not isinstance(obj, dict):
        raise OptionsError("Invalid options: each options item must be an object")
    for key in ("exchange", "dataTypes") + (("from", "to") if replay else ()):
        if key not in obj:
            raise OptionsError(f"Invalid options: missing '{key}'")
    dts = obj["dataTypes"]
    if isinstance(dts, str):
        dts = [dts]
    if not isinstance(dts, list) or not dts or not all(isinstance(d, str) for d in dts):
        raise OptionsError("Invalid options: 'dataTypes' must be a non-empty list of strings")
    parsed = [parse_data_type(d) for d in dts]
    kinds = {k for k, _ in parsed}
    exchange = obj["exchange"]
    if exchange not in KNOWN_EXCHANGES:
        raise OptionsError(f"{_normalizer_name(kinds)}: {exchange} not supported")
    symbols = obj.get("symbols")
    if symbols is None or symbols == []:
        symbols = list(default_symbols)
    if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
        raise OptionsError("Invalid options: 'symbols' must be a list of strings")
    for s in symbols:
        if not SYMBOL_RE.match(s.upper()):
            raise OptionsError(f"Invalid symbol: {s!r} for exchange {exchange}")
    symbols = [s.upper() for s in symbols]  # tardis-machine upper-cases the symbols asked (and so answered)
    from_us = to_us = None
    if replay:
        from_us, to_us = parse_time_us(obj["from"]), parse_time_us(obj["to"])
        if from_us >= to_us:
            raise OptionsError(f"Invalid options: 'from' ({obj['from']}) must be before 'to' ({obj['to']})")
    seen = []
    for d in dts:  # a repeated data type would emit twice; tardis de-duplicates them
        if d not in seen:
            seen.append(d)
    parsed = [parse_data_type(d) for d in seen]
    return StreamSpec(
        exchange=exchange,
        symbols=tuple(dict.fromkeys(symbols)),
        data_types=tuple(seen),
        trade="trade" in kinds,
        liquidation="liquidation" in kinds,
        book_ticker="book_ticker" in kinds,
        option_summary="option_summary" in kinds,
        book_change="book_change" in kinds,
        ticker="ticker" in kinds,
        books=tuple(s for k, s in parsed if k == "book"),
        bars=tuple(s for k, s in parsed if k == "bar"),
        with_disconnect=bool(obj.get("withDisconnectMessages", False)),
        with_errors=bool(obj.get("withErrorMessages", False)),
        from_us=from_us,
        to_us=to_us,
        raw=json.dumps(obj, sort_keys=True, separators=(",", ":")),
    )


def parse_options(raw, *, replay: bool, default_symbols) -> list[StreamSpec]:
    """``options`` (JSON text, dict or list) -> validated specs; raises :class:`OptionsError`."""
    if raw is None or raw == "":
        raise OptionsError("Invalid options: the 'options' query parameter is required")
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise OptionsError(f"Invalid options: {exc}") from None
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise OptionsError("Invalid options: empty options array")
    return [_parse_one(o, replay=replay, default_symbols=default_symbols) for o in items]
