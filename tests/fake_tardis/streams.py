"""Raw event feeds for a replay range or a live connection, and the replay line stream.

A :class:`RawFeed` merges the market events of an options object's symbols in arrival
order (replay or live local time), removes what an exchange outage hid, and inserts the
connection events: ``disconnect`` where the link dropped, a full book snapshot per
symbol where it came back (or where a live connection subscribed), and live ``error``
messages for failed reconnects.

Times: outages, replay ranges and the live subscription are LOCAL times (the recording
host's clock); market events are selected by exchange time, which is local time minus
the config's ``skew_ms`` (and the latency).

Option instruments (``option_model.py``) have only a ticker channel: their ticker messages (``KIND_OPTION``)
join the merge like any market event (the same outages, live drops and subscription time, slice-cache blanks
and holds apply), and no book snapshot is sent for them on (re)connect.
"""
from __future__ import annotations

import heapq
import itertools
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

import numpy as np

from .market import (OPTION_BLOCK_MS, SEGMENT_MS, KIND_BOOK, KIND_OPTION, KIND_TICKER, KIND_TRADE, Market, listed,
                     option_contract, symbol_params)
from .normalize import Normalizer, OptionView, SegmentView
from .options import StreamSpec

__all__ = ["Outage", "RawFeed", "replay_lines", "merged_replay_lines", "KIND_DISCONNECT", "KIND_SNAPSHOT", "KIND_ERROR",
           "KIND_END"]

KIND_DISCONNECT, KIND_SNAPSHOT, KIND_ERROR = 3, 4, 5
KIND_END = 7  # a live feed that can send nothing more (see RawFeed): "next event never"
SEGMENT_US = SEGMENT_MS * 1000
BLOCK_US = OPTION_BLOCK_MS * 1000
_NO_END = 1 << 62
_MINUTE_US = 60_000_000


def _dt_us(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


@dataclass(frozen=True)
class Outage:
    """The exchange connection of a recorder was down in [start, end) (aware datetimes)."""

    start: datetime
    end: datetime

    def __post_init__(self):
        if self.start.tzinfo is None or self.end.tzinfo is None or self.end <= self.start:
            raise ValueError("Outage needs aware datetimes with start < end")

    @property
    def start_us(self) -> int:
        """Start in epoch µs."""
        return _dt_us(self.start)

    @property
    def end_us(self) -> int:
        """End in epoch µs."""
        return _dt_us(self.end)


def _h(text: str) -> int:
    return zlib.crc32(text.encode())


def reconnect_snapshot_ms(seed: int, exchange: str, end_us: int, skew_ms: int = 0) -> int:
    """Exchange time of the fresh snapshot after an outage ending at local ``end_us`` (end + 0.1xx s - skew)."""
    end_ms = -(-end_us // 1000)
    return end_ms + 100 + _h(f"{seed}/{exchange}/{end_ms}") % 50 - skew_ms


def snapshot_local_us(market: Market, exchange: str, symbol: str, ex_ms: int, live: bool) -> int:
    """Deterministic arrival time of a connection snapshot (µs; whole ms when live): ex + latency + skew."""
    lo, hi = market.config.latency_ms
    lat_us = int(lo * 1000) + _h(f"{exchange}/{symbol}/{ex_ms}") % max(1, int((hi - lo) * 1000))
    ex_ms += market.config.skew_ms
    if live:
        return (ex_ms + -(-lat_us // 1000)) * 1000
    return ex_ms * 1000 + lat_us


class RawFeed:
    """Iterate ``(kind, view|symbol, index, ex_ms, local_us)`` in arrival order.

    ``kind`` is a market kind (book/trade/ticker, with a :class:`SegmentView` and index;
    an option's ticker, with an :class:`OptionView`), ``KIND_SNAPSHOT`` (symbol, ex_ms),
    ``KIND_DISCONNECT`` or ``KIND_ERROR`` (index = consecutive error count). Replay feeds
    cover local times [start_us, end_us); live feeds start at the subscription
    (``subscribe_ms``: the exchange time of its snapshot) and never end: once no market
    event can come any more (every symbol an option past its expiry, or unlisted), a live
    feed yields its remaining connection events, then ``(KIND_END, None, None, None, 2**62)``
    forever, an event whose time never comes (instead of searching the future for good).
    """

    def __init__(self, market: Market, spec: StreamSpec, *, live: bool, start_us: int,
                 end_us: int | None = None, outages=(), subscribe_ms: int | None = None, blanks=()):
        self.market, self.spec, self.live = market, spec, live
        # minutes (local) the slice cache holds empty for this filter set: nothing of them is sent
        self._blanks = np.asarray(sorted(blanks), dtype=np.int64)
        self._listed = tuple(s for s in spec.symbols if listed(s))
        self._options = frozenset(s for s in self._listed if option_contract(s) is not None)
        self._books = tuple(s for s in self._listed if s not in self._options)  # symbols with a book to snapshot
        self.start_us, self.end_us = start_us, end_us if end_us is not None else _NO_END
        self._need = np.array([spec.needs_book, spec.needs_trades, spec.needs_ticker])
        self._skew = market.config.skew_ms
        # local time after which no market event can arrive: never for a symbol with a book (a perpetual ...);
        # options end at their expiry (+ skew + the longest latency), and only count when their tickers are asked
        if self._books:
            self._silent_from = _NO_END
        else:
            wanted = self._options if spec.option_summary or spec.book_ticker else ()
            last = max((option_contract(s).expiry_ms for s in wanted), default=None)
            self._silent_from = -_NO_END if last is None else (
                last + self._skew + int(np.ceil(market.config.latency_ms[1])) + 1) * 1000
        self._min_ex = subscribe_ms
        self._drops: list[tuple[int, int]] = []
        self._drop_until = -1  # live exchange drops: skip events before the resume time
        self._holds: list[tuple[int, int]] = []  # (snapshot ex ms, arrival of the last snapshot)
        self._pseudo: list = []
        self._seq = itertools.count()
        down = any(o.start_us <= ((subscribe_ms or 0) + self._skew) * 1000 < o.end_us for o in outages)
        if subscribe_ms is not None and not down:  # during an outage the link opens at its end
            self._push_snapshots(subscribe_ms)
        for o in outages:
            self._add_outage(o.start_us, o.end_us)

    # -- connection events -----------------------------------------------------------
    def _push(self, loc: int, prio: int, kind: int, a, b, ex) -> None:
        heapq.heappush(self._pseudo, (loc, prio, next(self._seq), kind, a, b, ex))

    def _push_snapshots(self, ex_ms: int) -> None:
        last = 0
        for s in self._books:
            loc = snapshot_local_us(self.market, self.spec.exchange, s, ex_ms, self.live)
            if self.start_us <= loc < self.end_us:
                self._push(loc, 0, KIND_SNAPSHOT, s, None, ex_ms)
                last = max(last, loc)
        # the exchange sends every snapshot before any later update: events stamped at or
        # after the snapshot arrive with (not before) the last snapshot
        self._holds.append((ex_ms, last))

    def _add_outage(self, start_us: int, end_us: int) -> None:
        skew = self._skew
        snap = reconnect_snapshot_ms(self.market.config.seed, self.spec.exchange, end_us, skew)
        if (snap + skew) * 1000 <= self.start_us:
            return
        # the link is down in local time: the exchange events it hides are skew earlier
        self._drops.append((-(-start_us // 1000) - skew, snap))
        # every event before the outage arrives < start + 5 ms, every event after it later
        if self.start_us <= start_us < self.end_us:
            self._push(start_us + 5000, 2, KIND_DISCONNECT, None, None, None)
            if self.live:
                # failed reconnects: now, then after 1, 2, 4 ... 32 s (tardis-node backoff)
                t, delay, n = start_us + 5000, 1, 1
                while t < (snap + skew) * 1000:
                    self._push(t, 2, KIND_ERROR, None, n, None)
                    t, delay, n = t + delay * 1_000_000, min(delay * 2, 32), n + 1
        self._push_snapshots(snap)

    def drop_now(self, now_us: int, resume_us: int) -> None:
        """Live exchange drop: skip events until local ``resume_us``, then fresh snapshots."""
        resume_ms = -(-resume_us // 1000) - self._skew  # as exchange time
        self._drop_until = max(self._drop_until, resume_ms)
        self._push_snapshots(resume_ms)

    def skips(self, ex_ms: int) -> bool:
        """Whether a raw event with this exchange time falls in a live drop."""
        return ex_ms < self._drop_until

    # -- raw events --------------------------------------------------------------------
    def _collect(self, lo: int, hi: int):
        spec, market, need = self.spec, self.market, self._need
        cols: list[list] = [[], [], [], [], []]
        views = []
        skew_us = self._skew * 1000
        for sym in self._listed:
            if sym in self._options:
                if spec.option_summary or spec.book_ticker:  # derivative_ticker skips options' tickers
                    self._collect_option(sym, lo, hi, cols, views)
                continue
            # a segment's arrivals stay within it, shifted by the skew
            for index in range((lo - skew_us) // SEGMENT_US, (hi - 1 - skew_us) // SEGMENT_US + 1):
                seg = market.segment(spec.exchange, sym, index)
                arr = seg.ev_live if self.live else seg.ev_loc
                a, b = np.searchsorted(arr, [lo, hi])
                if a >= b:
                    continue
                kind, ex = seg.ev_kind[a:b], seg.ev_ex[a:b]
                mask = need[kind]
                if self._min_ex is not None:
                    mask &= ex >= self._min_ex
                for s, e in self._drops:
                    mask &= ~((ex >= s) & (ex < e))
                if len(self._blanks):
                    mask &= ~self._blank(arr[a:b])
                sel = np.nonzero(mask)[0] + a
                if not len(sel):
                    continue
                views.append(SegmentView(seg, spec.needs_book, spec.book_change or any(
                    x.depth > 1 for x in spec.books), spec.needs_trades, spec.ticker, spec.book_ticker))
                for col, src in zip(cols, (arr, seg.ev_kind, seg.ev_idx, seg.ev_ex)):
                    col.append(src[sel])
                cols[4].append(np.full(len(sel), len(views) - 1, dtype=np.int32))
        if not views:
            return views, [[]] * 5
        merged = [np.concatenate(c) for c in cols]
        order = np.argsort(merged[0], kind="stable")
        return views, [c[order].tolist() for c in merged]

    def _collect_option(self, sym: str, lo: int, hi: int, cols: list, views: list) -> None:
        """An option's ticker messages arriving in local [lo, hi) (an hour's block holds its own arrivals)."""
        skew_us = self._skew * 1000
        for index in range((lo - skew_us) // BLOCK_US, (hi - 1 - skew_us) // BLOCK_US + 1):
            block = self.market.option_block(self.spec.exchange, sym, index)
            arr = block.ev_live if self.live else block.ev_loc
            a, b = np.searchsorted(arr, [lo, hi])
            if a >= b:
                continue
            ex = block.ev_ex[a:b]
            mask = np.ones(b - a, dtype=bool)
            if self._min_ex is not None:
                mask &= ex >= self._min_ex
            for s, e in self._drops:
                mask &= ~((ex >= s) & (ex < e))
            if len(self._blanks):
                mask &= ~self._blank(arr[a:b])
            sel = np.nonzero(mask)[0]
            if not len(sel):
                continue
            views.append(OptionView(block, a, b))
            cols[0].append(arr[a:b][sel])
            cols[1].append(np.full(len(sel), KIND_OPTION, dtype=np.int8))
            cols[2].append(sel.astype(np.int32))
            cols[3].append(ex[sel])
            cols[4].append(np.full(len(sel), len(views) - 1, dtype=np.int32))

    def _blank(self, locs) -> np.ndarray:
        """Which local times fall in a minute the slice cache holds empty."""
        minutes = np.asarray(locs, dtype=np.int64)
        return np.isin(minutes - minutes % _MINUTE_US, self._blanks)

    def __iter__(self) -> Iterator[tuple]:
        if not len(self._blanks):
            yield from self._events()
            return
        for ev in self._events():
            # a connection event (disconnect, snapshot, error) came in its minute's raw slice too
            if ev[0] in (KIND_DISCONNECT, KIND_SNAPSHOT, KIND_ERROR) and self._blank([ev[4]])[0]:
                continue
            yield ev

    def _events(self) -> Iterator[tuple]:
        # connection events go before (prio 0: snapshots) or after (prio 2) market events
        # arriving at the same microsecond
        pseudo, holds = self._pseudo, self._holds
        skew_us = self._skew * 1000
        lo = self.start_us
        while lo < self.end_us:
            if self.live and lo >= self._silent_from:
                # nothing of the market can come any more: the connection events left, then never anything
                while pseudo:
                    p = heapq.heappop(pseudo)
                    yield p[3], p[4], p[5], p[6], p[0]
                while True:
                    yield KIND_END, None, None, None, _NO_END
            # one segment's arrivals at a time: windows on the segment grid shifted by the skew
            hi = min(((lo - skew_us) // SEGMENT_US + 1) * SEGMENT_US + skew_us, self.end_us)
            views, (locs, kinds, idxs, exs, parts) = self._collect(lo, hi)
            for j in range(len(locs)):
                loc, ex = locs[j], exs[j]
                if ex < self._drop_until:
                    continue
                if holds:
                    while holds and holds[0][1] <= loc:
                        del holds[0]
                    for h_ex, h_loc in holds:
                        if ex >= h_ex and loc < h_loc:
                            loc = h_loc
                while pseudo and (pseudo[0][0], pseudo[0][1]) < (loc, 1):
                    p = heapq.heappop(pseudo)
                    yield p[3], p[4], p[5], p[6], p[0]
                if ex < self._drop_until:
                    # a drop came while a connection event before this one was out: the market event is lost
                    # with the rest (sent after the disconnect line it would be data from before the reconnect)
                    continue
                yield kinds[j], views[parts[j]], idxs[j], ex, loc
            while pseudo and pseudo[0][0] < hi:
                p = heapq.heappop(pseudo)
                yield p[3], p[4], p[5], p[6], p[0]
            lo = hi


def run_event(norm: Normalizer, feed: RawFeed, ev: tuple, disconnect_loc: int) -> None:
    """Feed one :class:`RawFeed` item to a normalizer.

    ``disconnect_loc`` stamps a disconnect: the localTimestamp of the last message output
    before it (the fixtures show exactly that; tardis-node uses the last raw message,
    which is the same whenever that message produced a line).
    """
    kind, a, b, ex, loc = ev
    if kind == KIND_BOOK:
        norm.book(a, b, ex, loc)
    elif kind == KIND_TRADE:
        norm.trades(a, b, ex, loc)
    elif kind == KIND_TICKER:
        norm.ticker(a, b, ex, loc)
    elif kind == KIND_OPTION:
        norm.option(a, b, ex, loc)
    elif kind == KIND_DISCONNECT:
        norm.disconnect(disconnect_loc)
    elif kind == KIND_SNAPSHOT:
        bids, asks = feed.market.book_before(feed.spec.exchange, a, ex)
        if bids and asks:  # before the day's first snapshot there is no book to send
            norm.snapshot(a, ex, loc, bids, asks)
    elif kind == KIND_ERROR:
        norm.error(loc, "Error: Unexpected server response: 503", b)


def replay_lines(market: Market, spec: StreamSpec, *, until_us: int, outages=(),
                 perturb: dict | None = None, blanks=()) -> Iterator[tuple[int, str]]:
    """``(local_us, line)`` of one options object, for local times [from, min(to, until)).

    ``blanks``: minutes (local) its filter set has cached empty (see ``slices.py``): their raw slices are
    empty, so nothing of them is sent and a book rebuilt across one lacks its changes.
    """
    end = min(spec.to_us, until_us)
    if spec.from_us >= end:
        return
    norm = Normalizer(spec, symbol_params, live=False, perturb=perturb,
                      trade_ids=spec.exchange not in market.config.no_trade_ids)
    feed = RawFeed(market, spec, live=False, start_us=spec.from_us, end_us=end, outages=outages, blanks=blanks)
    out = norm.out
    book, trades, ticker, option = norm.book, norm.trades, norm.ticker, norm.option
    last_loc = spec.from_us  # a disconnect carries the last line's localTimestamp (or `from`)
    for ev in feed:
        kind = ev[0]
        # the market kinds inline: this loop is the replay's hot path
        if kind == KIND_BOOK:
            book(ev[1], ev[2], ev[3], ev[4])
        elif kind == KIND_TRADE:
            trades(ev[1], ev[2], ev[3], ev[4])
        elif kind == KIND_TICKER:
            ticker(ev[1], ev[2], ev[3], ev[4])
        elif kind == KIND_OPTION:
            option(ev[1], ev[2], ev[3], ev[4])
        else:
            run_event(norm, feed, ev, out[-1][0] if out else last_loc)
        if len(out) >= 512:
            last_loc = out[-1][0]
            yield from out
            out.clear()
    yield from out


def merged_replay_lines(market: Market, specs: list[StreamSpec], *, until_us: int, outages=(),
                        perturb: dict | None = None, blanks=None) -> Iterator[str]:
    """Lines of a whole request: options objects merged by localTimestamp (``blanks``: one per spec)."""
    blanks = blanks or [()] * len(specs)
    gens = [replay_lines(market, s, until_us=until_us, outages=outages, perturb=perturb, blanks=b)
            for s, b in zip(specs, blanks)]
    if len(gens) == 1:
        return (line for _, line in gens[0])
    return (line for _, line in heapq.merge(*gens, key=lambda x: x[0]))
