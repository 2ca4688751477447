"""A deterministic synthetic exchange: raw book changes, trades and tickers per symbol.

Everything is a pure function of (config, exchange, symbol, time). Events are generated
ten minutes at a time ("segments"); random draws come from a generator keyed by
(seed, exchange, symbol, minute), and the book/price/open-interest state is carried
from segment to segment, starting fresh at each day's snapshot (00:00:00.1xx). Generating
a segment needs the previous segments of that day, so days are cached (bounded LRU, shared by
every machine in the process because the data depends only on the config).

Options (``BTC-29JAN27-85000-C``) are a model of their own (``option_model.py``): only their ticker
channel exists (``option_summary``, ``book_ticker``), generated an hour at a time from generators keyed by
the option's name, with the underlying perpetual's book as input (read, never drawn from). Every
perpetual's ticker event also carries the top of its book (``Segment.k_top``, for ``book_ticker``): a pure
function of the book arrays. So adding them changed no byte of any existing message.

Prices are integer ticks (rendered exactly, see ``render.price_str``); amounts are
integers. Replay local times have µs precision, live ones ms; both are exchange time
plus a latency within ``latency_ms`` plus the config's ``skew_ms``, and never go
backwards for one symbol. Quiet windows (``MarketConfig.quiet``) are part of the model:
their events are simply not generated.
"""
from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from datetime import datetime

import numpy as np

from .generator import Carry, SegmentBuilder
from .option_model import OPTION_BLOCK_MS, BlockCache, OptionBlock, OptionContract, option_contract
from .render import price_str
from .segment import (listed, DAY_MS, SEGMENT_MS, SEGMENTS_PER_DAY, KIND_BOOK, KIND_OPTION, KIND_TICKER, KIND_TRADE,
                      KNOWN_EXCHANGES, MARKET_KINDS, SYMBOL_RE, MarketConfig, Segment, SymbolParams, symbol_params)

__all__ = ["MarketConfig", "Market", "listed", "SymbolParams", "symbol_params", "Segment", "KNOWN_EXCHANGES", "SYMBOL_RE",
           "SEGMENT_MS", "SEGMENTS_PER_DAY", "DAY_MS", "KIND_BOOK", "KIND_TRADE", "KIND_TICKER", "KIND_OPTION",
           "MARKET_KINDS", "OPTION_BLOCK_MS", "OptionBlock", "OptionContract", "option_contract"]

_CACHE_BYTES = 1 << 30  # bound of the shared day cache (arrays of generated segments)
_OPTION_CACHE_BYTES = 512 << 20  # bound of the shared option block cache


class _Day:
    """The segments of one (exchange, symbol, UTC day), generated in order on demand."""

    def __init__(self, cfg, exchange, symbol, day):
        self.key = (cfg, exchange, symbol, day)
        self.segments: list[Segment] = []
        self.carry = Carry()
        self.lock = threading.Lock()
        self.nbytes = 0

    def segment(self, i: int) -> Segment:
        """Segment ``i`` of the day, generating the ones before it first."""
        with self.lock:
            cfg, exchange, symbol, day = self.key
            while len(self.segments) <= i:
                n = day * SEGMENTS_PER_DAY + len(self.segments)
                seg = SegmentBuilder(cfg, exchange, symbol, n, self.carry).build()
                self.segments.append(seg)
                self.nbytes += seg.nbytes
            return self.segments[i]


class _DayCache:
    """Process-wide LRU of generated days, bounded by their array bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._days: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, cfg, exchange, symbol, day) -> _Day:
        """The day for this key (created empty on a miss), evicting old days."""
        key = (cfg, exchange, symbol, day)
        with self._lock:
            d = self._days.get(key)
            if d is None:
                d = self._days[key] = _Day(cfg, exchange, symbol, day)
            self._days.move_to_end(key)
            total = sum(x.nbytes for x in self._days.values())
            while total > self.max_bytes and len(self._days) > 1:
                _, old = self._days.popitem(last=False)
                total -= old.nbytes
            return d


_DAYS = _DayCache(_CACHE_BYTES)
_BLOCKS = BlockCache(_OPTION_CACHE_BYTES)


class Market:
    """Ground truth of the synthetic exchanges for one :class:`MarketConfig`."""

    def __init__(self, config: MarketConfig | None = None):
        self.config = config or MarketConfig()

    def segment(self, exchange: str, symbol: str, index: int) -> Segment:
        """Segment number ``index`` since the epoch (``ms // SEGMENT_MS``)."""
        day, i = divmod(index, SEGMENTS_PER_DAY)
        return _DAYS.get(self.config, exchange, symbol, day).segment(i)

    def option_block(self, exchange: str, symbol: str, index: int) -> OptionBlock:
        """Hour number ``index`` (``ms // OPTION_BLOCK_MS``) of an option's ticker messages (see ``option_model``).

        ``symbol`` must name an option (:func:`option_contract`); after its expiry a block is empty.
        """
        contract = option_contract(symbol)
        if contract is None:
            raise ValueError(f"{symbol} is not an option instrument")
        return _BLOCKS.get(self, exchange, contract, index)

    def book_before(self, exchange: str, symbol: str, ex_ms: int):
        """Full book (bids, asks as [(price ticks, amount)]) after every change before ``ex_ms``.

        Between 00:00:00.000 (exclusive) and the day's first snapshot the book of the day is
        empty; at exactly 00:00:00.000 it is the previous day's last book.
        """
        # the segment holding the last instant before ex_ms: at a day boundary that is the
        # previous day's last segment (the new day's first one starts empty)
        seg = self.segment(exchange, symbol, (ex_ms - 1) // SEGMENT_MS)
        return seg.book_state_before(ex_ms)

    def book(self, exchange: str, symbol: str, at: datetime) -> dict:
        """The full book in force at exchange time ``at``: {"bids": [(price, amount)], "asks": [...]}."""
        tick_h = symbol_params(symbol).tick_h
        bids, asks = self.book_before(exchange, symbol, _dt_ms(at) + 1)
        return {"bids": [(float(price_str(p, tick_h)), a) for p, a in bids],
                "asks": [(float(price_str(p, tick_h)), a) for p, a in asks]}

    def trades(self, exchange: str, symbol: str, from_: datetime, to: datetime) -> list[dict]:
        """Every trade with exchange time in [from_, to): id, price, amount, side, timestamp (ms).

        ``id`` is None on an exchange without trade ids (``MarketConfig.no_trade_ids``).
        """
        lo, hi = _dt_ms(from_), _dt_ms(to)
        sp, out = symbol_params(symbol), []
        with_ids = exchange not in self.config.no_trade_ids
        for index in range(lo // SEGMENT_MS, (hi - 1) // SEGMENT_MS + 1):
            seg = self.segment(exchange, symbol, index)
            t = np.repeat(seg.ev_ex[seg.ev_kind == KIND_TRADE], np.diff(seg.g_off))
            for j in np.nonzero((t >= lo) & (t < hi))[0].tolist():
                out.append({
                    "id": sp.id_prefix + str(int(seg.t_id[j])) if with_ids else None,
                    "price": float(price_str(int(seg.t_px[j]), sp.tick_h)),
                    "amount": int(seg.t_amt[j]),
                    "side": "buy" if seg.t_buy[j] else "sell",
                    "timestamp": int(t[j]),
                })
        return out


def _dt_ms(dt: datetime) -> int:
    return int(dt.timestamp()) * 1000 + dt.microsecond // 1000


LIQUIDATION_EVERY = 60  # about one trade in this many is a liquidation (rare: most minutes have none)


def liquidation_kind(symbol: str, trade_id: str) -> str | None:
    """Whether a trade of the model (its printed id) was a liquidation, and whose: ``"T"`` (the taker was liquidated), ``"M"``
    or ``"MT"`` (the maker), or None. A pure function of the trade (no draw of the model's generator: every
    other part of the market stays what it was)."""
    h = zlib.crc32(("liquidation/%s/%s" % (symbol, trade_id)).encode())
    if h % LIQUIDATION_EVERY:
        return None
    return ("T", "M", "MT")[(h // LIQUIDATION_EVERY) % 3]


def liquidation_side(kind: str, buy: bool) -> str:
    """tardis' side of a liquidation: the trade's direction when the taker was liquidated, else the opposite."""
    return ("buy" if buy else "sell") if kind == "T" else ("sell" if buy else "buy")
