"""Types shared by the market generator and its readers: config, symbol shapes, segments."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["MarketConfig", "SymbolParams", "symbol_params", "listed", "Segment", "KNOWN_EXCHANGES", "SYMBOL_RE",
           "SEGMENT_MS", "SEGMENTS_PER_DAY", "DAY_MS", "KIND_BOOK", "KIND_TRADE", "KIND_TICKER", "KIND_OPTION",
           "MARKET_KINDS", "MAX_SKEW_MS"]

KNOWN_EXCHANGES = ("deribit", "binance", "binance-futures", "bitmex", "okex", "bybit", "coinbase", "kraken")
SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9._:/-]*$")
# names no exchange lists: the real server accepts them in a request and simply has no data for them
# (gapless names a filter set of its own with one, so tardis-machine cannot answer it from its cache)
UNLISTED_PREFIXES = ("GAPLESS-",)


def listed(symbol: str) -> bool:
    """Whether the synthetic exchanges list (and so trade) ``symbol``."""
    return not symbol.startswith(UNLISTED_PREFIXES)

SEGMENT_MS = 600_000  # events are generated ten minutes at a time
SEGMENTS_PER_DAY = 144
DAY_MS = 86_400_000
KIND_BOOK, KIND_TRADE, KIND_TICKER = 0, 1, 2
KIND_OPTION = 6  # an option's ticker message (option_model.py); 3-5 are the feeds' connection events
MARKET_KINDS = (KIND_BOOK, KIND_TRADE, KIND_TICKER, KIND_OPTION)
MAX_SKEW_MS = 2000


@dataclass(frozen=True)
class MarketConfig:
    """Parameters of the synthetic market (all rates per second per symbol).

    ``skew_ms``: the recording host's clock minus the exchange's, within +-2000 ms. Every
    localTimestamp (replay and live) is exchange time + latency + skew; negative means
    the exchange's timestamps run ahead of the local ones. Replay ``from``/``to`` select
    by local time, so with skew -2000 a trade stamped 00:00:01 (exchange) that arrived
    23:59:59.xxx (local) belongs to the previous day's replay, not to one from 00:00. The
    day's initial book snapshot is sent when the recorder's day starts, so with a
    negative skew it is stamped 00:00:00.1xx - skew (exchange) and still arrives just
    after local 00:00 (no book before it); with a positive skew the previous day's last
    events arrive after local midnight, before it.

    ``quiet``: ``(symbol or "*", start_ms, end_ms)`` windows of exchange time during which
    that symbol's market is quiet: no trades, no book changes, no ticker changes (the
    day's 00:00 snapshot still exists; book and prices stay as they were). A silent
    symbol is a window over all time, e.g. ``("SILENT-PERP", 0, 2**62)``. Draws are made
    as without the window and then dropped, so everything before a window is unchanged.

    ``no_trade_ids``: exchanges whose normalized ``trade`` messages carry no ``id`` field, in replay and
    live alike (tardis-node's ``kraken`` trades mapper sends ``id: undefined``, which JSON leaves out).
    Their markets also print identical trades (same exchange time, price, amount and side), as such
    exchanges do: about a quarter of a sweep's later fills repeat the fill before them, and about one
    trade message in ten comes again as a second packet a little later (same exchange time, same fills).
    Exchanges with ids draw exactly as before.

    ``live_arrival_spread_ms``: every live connection has its own exchange connection on the real server,
    so two connections stamp the same trade with different localTimestamps (0.3-5 ms apart were seen).
    With a spread of N, connection number ``c`` stamps every localTimestamp ``c % (N + 1)`` ms earlier
    than the model's arrival (it still sends each message when the clock reaches the model's arrival, so
    what a connection delivers, and :func:`tests.truth.whole_minutes`, do not change). 0 (the default):
    every connection stamps the model's arrival.
    """

    seed: int = 1
    book_rate: float = 2.0
    trade_rate: float = 1.0
    ticker_interval_s: float = 1.0
    depth: int = 25
    latency_ms: tuple[float, float] = (0.3, 5.0)
    skew_ms: int = 0
    quiet: tuple[tuple[str, int, int], ...] = ()
    no_trade_ids: tuple[str, ...] = ("kraken",)
    live_arrival_spread_ms: int = 0

    def __post_init__(self):
        if int(self.skew_ms) != self.skew_ms or abs(self.skew_ms) > MAX_SKEW_MS:
            raise ValueError(f"skew_ms must be whole milliseconds within +-{MAX_SKEW_MS}")
        object.__setattr__(self, "skew_ms", int(self.skew_ms))
        windows = []
        for w in self.quiet:  # normalized to a tuple of tuples: part of the config's hash and cache keys
            symbol, start, end = w
            if not isinstance(symbol, str) or int(start) >= int(end):
                raise ValueError(f"quiet window {w!r}: expected (symbol or '*', start_ms, end_ms) with start < end")
            windows.append((symbol, int(start), int(end)))
        object.__setattr__(self, "quiet", tuple(windows))
        object.__setattr__(self, "no_trade_ids", tuple(self.no_trade_ids))  # hashable: part of cache keys
        if int(self.live_arrival_spread_ms) != self.live_arrival_spread_ms or self.live_arrival_spread_ms < 0:
            raise ValueError("live_arrival_spread_ms must be whole non-negative milliseconds")

    def quiet_windows(self, symbol: str) -> list[tuple[int, int]]:
        """The quiet windows ``[start_ms, end_ms)`` of ``symbol``, sorted."""
        return sorted((a, b) for s, a, b in self.quiet if s in ("*", symbol))


@dataclass(frozen=True)
class SymbolParams:
    """Per-symbol shape of prices and sizes."""

    base: float  # typical price
    tick_h: int  # tick size in hundredths (50 = 0.5)
    lot: int  # amounts are multiples of this
    btc_like: bool  # numeric trade ids
    id_prefix: str
    book_mu: float  # log-mean of book level sizes, in lots
    trade_mu: float  # log-mean of trade sizes, in lots
    oi_base: int


def symbol_params(symbol: str) -> SymbolParams:
    """BTC-* ~ 85000 tick 0.5, ETH-* ~ 2700 tick 0.05, anything else ~ 100 tick 0.01."""
    if symbol.startswith(("BTC", "XBT")):
        return SymbolParams(85000.0, 50, 10, True, "", 6.2, 5.2, 1_050_000_000)
    prefix = re.split(r"[^A-Z0-9]", symbol, maxsplit=1)[0] or symbol
    if symbol.startswith("ETH"):
        return SymbolParams(2700.0, 5, 1, False, prefix + "-", 7.0, 6.0, 410_000_000)
    return SymbolParams(100.0, 1, 1, False, prefix + "-", 6.5, 5.5, 50_000_000)


class Segment:
    """Ten minutes of raw events for one (exchange, symbol); numpy arrays, read-only.

    ``ev_*`` is the merged event index in arrival order (kind, index into the kind's
    arrays, exchange ms, replay local µs, live local µs). Book events store their
    changes flat (``b_off`` delimits them), the best level after the change, and the
    shallowest level index the change touched (``b_low``: a snapshot of depth N
    changed iff ``b_low < N``). Every event of the segment also arrives within it
    shifted by the skew (local times in ``[start + skew, end + skew)``), so reading a
    segment never needs the previous one.

    ``start_best``: the best levels (bid px, bid amt, ask px, ask amt) in force when the segment
    starts, None in a day's first segment (its book opens with the day's snapshot). ``k_top``: per
    ticker event, the top of the book the exchange's ticker message shows (``book_ticker``): the best
    levels after every change of the same UTC day with exchange time strictly BEFORE the ticker's
    (the rule of ``Market.book_before``, except that the day's book starts empty at 00:00:00.000),
    all zero while the day's book is still empty (before its 00:00:00.1xx snapshot). ``b_sum[i]``: best
    bid + best ask (ticks) after the segment's first ``i`` book events (the opening snapshot's while the
    day's book is empty): the option model's underlying. All pure functions of the book arrays: no draw.
    """

    __slots__ = (
        "symbol", "params", "start_ms", "ev_kind", "ev_idx", "ev_ex", "ev_loc", "ev_live",
        "b_ex", "b_snap", "b_off", "c_side", "c_px", "c_amt", "b_best", "b_low",
        "g_off", "t_id", "t_px", "t_amt", "t_buy",
        "k_last", "k_oi", "k_fund", "k_index", "k_mark", "k_top", "start_best", "b_sum",
        "checkpoints", "nbytes",
    )

    def book_state_before(self, ex_ms: int):
        """Book (bids desc, asks asc as [price, amount] lists) after all events < ex_ms."""
        n = int(np.searchsorted(self.b_ex, ex_ms, side="left"))
        ck = max(i for i in range(len(self.checkpoints)) if self.checkpoints[i][0] <= n)
        start, state = self.checkpoints[ck]
        if state is None:
            bids, asks = {}, {}
        else:
            bids = dict(zip(state[0], state[1]))
            asks = dict(zip(state[2], state[3]))
        off, side, px, amt = self.b_off, self.c_side, self.c_px, self.c_amt
        for e in range(start, n):
            if self.b_snap[e]:
                bids, asks = {}, {}
            for c in range(off[e], off[e + 1]):
                book = bids if side[c] == 0 else asks
                p, a = int(px[c]), int(amt[c])
                if a == 0:
                    book.pop(p, None)
                else:
                    book[p] = a
        return sorted(bids.items(), reverse=True), sorted(asks.items())
