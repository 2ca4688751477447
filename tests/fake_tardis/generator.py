"""Generate ten minutes of raw events for one (exchange, symbol): the synthetic exchange itself.

Random draws come from a generator keyed by (seed, exchange, symbol, minute), so any minute
is reproducible on its own; the book, last price, open interest and funding rate are
carried from segment to segment and start fresh at each day's snapshot (00:00:00.1xx). The book
is the only sequential part (a Python loop over its changes); trades and tickers are
vectorized against the book's best levels.
"""
from __future__ import annotations

import zlib

import numpy as np

from .segment import (DAY_MS, SEGMENT_MS, KIND_BOOK, KIND_TICKER, KIND_TRADE, MarketConfig, Segment, SymbolParams,
                      symbol_params)

__all__ = ["SegmentBuilder", "Carry", "day_snapshot_ms", "opening_best_ticks"]

_P_MOVE = 0.40  # share of book events that move the top of book
_CHECKPOINT_EVERY = 512  # book states kept per segment, to rebuild the book at any time
# per-event draws of each kind (pools such as "pool" and "gaps" are consumed by index instead)
_BOOK_KEYS = ("b_t", "b_u", "b_delta", "b_spread", "b_side", "b_lvl", "b_two", "b_lvl2", "b_lat", "b_live")
_GROUP_KEYS = ("g_t", "g_size", "g_buy", "g_lat", "g_live")
_TRADE_KEYS = ("t_step", "t_amt")
_TICKER_KEYS = ("k_t", "k_lat", "k_live", "k_oi", "k_fund", "k_idx", "k_mark", "k_same")


def _h(text: str) -> int:
    return zlib.crc32(text.encode())


def day_snapshot_ms(cfg: MarketConfig, exchange: str, symbol: str, day: int) -> int:
    """Exchange time of the day's initial book snapshot of a symbol: 00:00:00.1xx (- a negative skew).

    The recorder's day starts at LOCAL midnight; with the exchange clock ahead (negative
    skew) the snapshot it gets then is stamped later by as much, so it still arrives
    after local 00:00 (a replay from 00:00 always has it).
    """
    return day * DAY_MS + 100 + (_h(f"{cfg.seed}/{exchange}/{symbol}/{day}") % 50) + max(0, -cfg.skew_ms)


def opening_best_ticks(cfg: MarketConfig, exchange: str, symbol: str, day: int) -> tuple[int, int]:
    """(best bid, best ask) in ticks of the day's opening book (its 00:00:00.1xx snapshot), without building it.

    The same first draw of the day's own generator as ``SegmentBuilder._initial_book`` (a second generator
    made the same way: the market's draws are untouched). The option model prices option trades with it.
    """
    sp = symbol_params(symbol)
    rng = np.random.default_rng([cfg.seed & 0xFFFFFFFF, _h(exchange), _h(symbol), day, 7])
    base_ticks = int(sp.base * 100 / sp.tick_h)
    best = int(base_ticks * (1 + 0.03 * (2 * rng.random() - 1)))
    return best, best + 1


class Carry:
    """State handed from one segment to the next within a day."""

    def __init__(self):
        self.book = None  # (bp, ba, ap, aa) lists, None before the day's snapshot
        self.last_trade_px = None
        self.oi = 0
        self.fund = 0
        self.trades = 0
        self.prev_loc = 0
        self.prev_live = 0


def _minute_rng(cfg: MarketConfig, exchange: str, symbol: str, minute: int):
    return np.random.default_rng([cfg.seed & 0xFFFFFFFF, _h(exchange), _h(symbol), minute])


def _draw_levels(rng, sp: SymbolParams, n: int, mu: float) -> np.ndarray:
    lots = np.exp(rng.normal(mu, 1.0, n)).astype(np.int64) + 1
    return np.minimum(lots, 10_000_000) * sp.lot


_SAME_FILL = 0.25  # share of a sweep's later fills that repeat the fill before them (id-less exchanges)
_ECHO = 0.10  # share of trade messages sent again as a second packet (id-less exchanges)


def _identical_trades(rng, parts: dict, cfg: MarketConfig, lo_us: float, hi_us: float) -> None:
    """Make some of the minute's trades identical, as exchanges without trade ids print them.

    Rewrites the minute's draws just added to ``parts``: a later fill of a sweep may repeat the fill
    before it (no price step, the same amount), and a trade message may come twice: a second packet
    with the same exchange time and the same fills (so the same prices, drawn from the same book),
    arriving no earlier than the first and still within the latency bounds.
    """
    sizes, steps, amounts = parts["g_size"][-1], parts["t_step"][-1], parts["t_amt"][-1]
    nt, ng = len(steps), len(sizes)
    starts = np.cumsum(sizes) - sizes
    same = rng.random(nt) < _SAME_FILL
    same[starts] = False  # a sweep's first fill has no fill before it
    steps = np.where(same, 0, steps)
    amounts = amounts[np.maximum.accumulate(np.where(same, 0, np.arange(nt)))] if nt else amounts
    echo = rng.random(ng) < _ECHO
    later = rng.random(ng)
    reps = 1 + echo.astype(np.int64)
    trade_index = []
    for g, (a, n) in enumerate(zip(starts.tolist(), sizes.tolist())):
        trade_index.extend(list(range(a, a + n)) * int(reps[g]))
    trade_index = np.array(trade_index, dtype=np.int64)
    copy = np.zeros(int(reps.sum()), dtype=bool)  # the second packet of each echoed message
    copy[np.cumsum(reps)[echo] - 1] = True
    for key in ("g_t", "g_size", "g_buy"):
        parts[key][-1] = np.repeat(parts[key][-1], reps)
    lat, live = np.repeat(parts["g_lat"][-1], reps), np.repeat(parts["g_live"][-1], reps)
    later = np.repeat(later, reps)
    lat[copy] += (hi_us - lat[copy]) * later[copy]
    live[copy] += (cfg.latency_ms[1] - live[copy]) * later[copy]
    parts["g_lat"][-1], parts["g_live"][-1] = lat, live
    parts["t_step"][-1], parts["t_amt"][-1] = steps[trade_index], amounts[trade_index]


class SegmentBuilder:
    """Generate one segment from the carried state (sequential book, vectorized rest)."""

    def __init__(self, cfg: MarketConfig, exchange: str, symbol: str, index: int, carry: Carry):
        self.cfg, self.exchange, self.symbol, self.carry = cfg, exchange, symbol, carry
        self.sp = symbol_params(symbol)
        self.start_ms = index * SEGMENT_MS
        self.day = self.start_ms // DAY_MS
        # best levels in force when the segment starts (None in the first: the snapshot opens the day)
        self._start_best = None if carry.book is None else tuple(x[0] for x in carry.book)

    def build(self) -> Segment:
        """Draw, then build the book (sequential), trades, tickers and the arrival order."""
        d = self._draw()
        seg = Segment()
        seg.symbol, seg.params, seg.start_ms = self.symbol, self.sp, self.start_ms
        self._book(seg, d)
        self._trades(seg, d)
        self._tickers(seg, d)
        self._merge(seg, d)
        seg.nbytes = sum(getattr(seg, k).nbytes for k in Segment.__slots__ if isinstance(getattr(seg, k, None), np.ndarray))
        return seg

    # -- random draws, per minute so any minute is reproducible on its own --------
    def _draw(self) -> dict:
        cfg, sp = self.cfg, self.sp
        lo_us, hi_us = cfg.latency_ms[0] * 1000, cfg.latency_ms[1] * 1000
        tick_ms = max(1, int(round(cfg.ticker_interval_s * 1000)))
        parts: dict[str, list] = {}

        def add(key, arr):
            parts.setdefault(key, []).append(arr)

        first_minute = self.start_ms // 60_000
        for m in range(first_minute, first_minute + SEGMENT_MS // 60_000):
            rng = _minute_rng(cfg, self.exchange, self.symbol, m)
            m0 = m * 60_000
            nb = rng.poisson(cfg.book_rate * 60)
            add("b_t", m0 + np.sort(rng.integers(0, 60_000, nb)))
            add("b_u", rng.random(nb))
            add("b_delta", rng.choice([-3, -2, -1, 1, 2, 3], nb, p=[0.05, 0.15, 0.3, 0.3, 0.15, 0.05]))
            add("b_spread", np.where(rng.random(nb) < 0.85, 1, 2))
            add("b_side", rng.integers(0, 2, nb))
            add("b_lvl", np.where(rng.random(nb) < 0.55, 0, np.minimum(rng.geometric(0.3, nb), cfg.depth - 1)))
            add("b_two", rng.random(nb) < 0.3)
            add("b_lvl2", rng.integers(1, cfg.depth, nb))
            add("b_lat", rng.uniform(lo_us, hi_us, nb))
            add("b_live", rng.uniform(cfg.latency_ms[0], cfg.latency_ms[1], nb))
            add("pool", _draw_levels(rng, sp, nb * 3 + 32, sp.book_mu))
            add("gaps", rng.choice([1, 1, 1, 1, 1, 1, 1, 2, 2, 3], nb * 3 + 32))
            ng = rng.poisson(cfg.trade_rate * 60 / 1.8)
            sizes = rng.geometric(1 / 1.8, ng)
            nt = int(sizes.sum())
            add("g_t", m0 + np.sort(rng.integers(0, 60_000, ng)))
            add("g_size", sizes)
            add("g_buy", rng.random(ng) < 0.5)
            add("g_lat", rng.uniform(lo_us, hi_us, ng))
            add("g_live", rng.uniform(cfg.latency_ms[0], cfg.latency_ms[1], ng))
            add("t_step", rng.choice([0, 0, 1, 2], nt))
            add("t_amt", _draw_levels(rng, sp, nt, sp.trade_mu))
            k_first = -(-m0 // tick_ms)
            slots = np.arange(k_first, -(-(m0 + 60_000) // tick_ms), dtype=np.int64) * tick_ms
            nk = len(slots)
            jitter = rng.integers(0, max(1, int(min(tick_ms, 1000) * 0.98)), nk)
            add("k_t", np.minimum(slots + jitter, m0 + 59_999))  # stay inside the minute (and segment)
            add("k_lat", rng.uniform(lo_us, hi_us, nk))
            add("k_live", rng.uniform(cfg.latency_ms[0], cfg.latency_ms[1], nk))
            add("k_oi", np.round(rng.normal(0, 30_000 / sp.lot, nk)).astype(np.int64) * sp.lot)
            add("k_fund", np.round(rng.normal(0, 40, nk)).astype(np.int64))
            add("k_idx", rng.normal(-2e-4, 2e-5, nk))
            add("k_mark", rng.normal(0, 1e-5, nk))
            add("k_same", rng.random(nk) < 0.04)
            if self.exchange in cfg.no_trade_ids:
                # drawn last: every draw above is the same as for an exchange with trade ids
                _identical_trades(rng, parts, cfg, lo_us, hi_us)
        d = {k: np.concatenate(v) for k, v in parts.items()}
        self._drop_quiet(d)
        return d

    def _drop_quiet(self, d: dict) -> None:
        """Remove the events of quiet windows (after drawing: the draws stay the same)."""
        lo, hi = self.start_ms, self.start_ms + SEGMENT_MS
        windows = [(a, b) for a, b in self.cfg.quiet_windows(self.symbol) if a < hi and b > lo]
        if not windows:
            return

        def quiet(t):
            mask = np.zeros(len(t), dtype=bool)
            for a, b in windows:
                mask |= (t >= a) & (t < b)
            return mask

        keep_g = ~quiet(d["g_t"])
        keep_t = np.repeat(keep_g, d["g_size"])  # a trade message's trades go with it
        for keys, keep in ((_BOOK_KEYS, ~quiet(d["b_t"])), (_GROUP_KEYS, keep_g), (_TRADE_KEYS, keep_t),
                           (_TICKER_KEYS, ~quiet(d["k_t"]))):
            for k in keys:
                d[k] = d[k][keep]

    # -- book: the only sequential part ------------------------------------------
    def _initial_book(self):
        """The day's opening book, drawn from the day's own generator."""
        cfg, sp = self.cfg, self.sp
        rng = np.random.default_rng([cfg.seed & 0xFFFFFFFF, _h(self.exchange), _h(self.symbol), self.day, 7])
        base_ticks = int(sp.base * 100 / sp.tick_h)
        best = int(base_ticks * (1 + 0.03 * (2 * rng.random() - 1)))
        gaps = rng.choice([1, 1, 1, 1, 1, 1, 1, 2, 2, 3], 2 * cfg.depth)
        amts = _draw_levels(rng, sp, 2 * cfg.depth, sp.book_mu).tolist()
        bp = (best - np.concatenate([[0], np.cumsum(gaps[: cfg.depth - 1])])).tolist()
        ap = (best + 1 + np.concatenate([[0], np.cumsum(gaps[cfg.depth: 2 * cfg.depth - 1])])).tolist()
        self.carry.oi = int(sp.oi_base * (1 + 0.05 * (2 * rng.random() - 1))) // sp.lot * sp.lot
        self.carry.fund = int(rng.normal(3000, 2000))
        return bp, amts[: cfg.depth], ap, amts[cfg.depth:]

    def _book(self, seg: Segment, d: dict) -> None:
        depth, carry = self.cfg.depth, self.carry
        t = d["b_t"]
        keep = np.ones(len(t), dtype=bool)
        snap_ms = None
        if self.start_ms % DAY_MS == 0:
            snap_ms = day_snapshot_ms(self.cfg, self.exchange, self.symbol, self.day)
            keep = t >= snap_ms  # no book before the day's snapshot
        for k in _BOOK_KEYS:
            d[k] = d[k][keep]
        pool, gaps = d["pool"].tolist(), d["gaps"].tolist()
        npool, ngap = len(pool), len(gaps)
        ip = ig = 0
        ex_list, snap_list, off, cs, cp, ca = [], [], [0], [], [], []
        best, low, checkpoints = [], [], []

        if snap_ms is not None:
            carry.book = self._initial_book()
            checkpoints.append((0, None))
            bp, ba, ap, aa = carry.book
            for p, a in zip(bp, ba):
                cs.append(0), cp.append(p), ca.append(a)
            for p, a in zip(ap, aa):
                cs.append(1), cp.append(p), ca.append(a)
            ex_list.append(snap_ms), snap_list.append(True), off.append(len(cs)), low.append(0)
            best.append((bp[0], ba[0], ap[0], aa[0]))
            lo, hi = self.cfg.latency_ms
            lat = lo + (hi - lo) * (_h(f"{self.symbol}/{snap_ms}") % 1000) / 1000
            d["b_lat"] = np.concatenate([[lat * 1000], d["b_lat"]])
            d["b_live"] = np.concatenate([[lat], d["b_live"]])
        elif carry.book is None:
            raise RuntimeError("segment built without the previous one")
        else:
            checkpoints.append((0, tuple(x[:] for x in carry.book)))
        bp, ba, ap, aa = carry.book
        us, deltas, spreads = d["b_u"].tolist(), d["b_delta"].tolist(), d["b_spread"].tolist()
        sides, lvls, twos, lvl2s = d["b_side"].tolist(), d["b_lvl"].tolist(), d["b_two"].tolist(), d["b_lvl2"].tolist()
        add_s, add_p, add_a = cs.append, cp.append, ca.append  # bound once: this loop is hot
        add_ex, add_snap, add_off, add_best, add_low = (ex_list.append, snap_list.append, off.append,
                                                        best.append, low.append)
        lot = self.sp.lot
        for k, ex in enumerate(d["b_t"].tolist()):
            n_ev = len(ex_list)
            if n_ev % _CHECKPOINT_EVERY == 0 and n_ev:
                checkpoints.append((n_ev, (bp[:], ba[:], ap[:], aa[:])))
            nb = bp[0] + deltas[k]
            if nb < 50:
                nb = 50
            na = nb + spreads[k]
            if us[k] < _P_MOVE and (nb != bp[0] or na != ap[0]):
                # move the top: remove crossed levels, add the new best, keep `depth` levels
                while bp and bp[0] > nb:
                    add_s(0), add_p(bp.pop(0)), add_a(0)
                    ba.pop(0)
                while ap and ap[0] < na:
                    add_s(1), add_p(ap.pop(0)), add_a(0)
                    aa.pop(0)
                if not bp or bp[0] < nb:
                    a = pool[ip % npool]
                    ip += 1
                    bp.insert(0, nb), ba.insert(0, a), add_s(0), add_p(nb), add_a(a)
                if not ap or ap[0] > na:
                    a = pool[ip % npool]
                    ip += 1
                    ap.insert(0, na), aa.insert(0, a), add_s(1), add_p(na), add_a(a)
                for side, px, am, sign in ((0, bp, ba, -1), (1, ap, aa, 1)):
                    while len(px) > depth:
                        add_s(side), add_p(px.pop()), add_a(0)
                        am.pop()
                    while len(px) < depth:
                        p = px[-1] + sign * gaps[ig % ngap]
                        a = pool[ip % npool]
                        ig += 1
                        ip += 1
                        px.append(p), am.append(a), add_s(side), add_p(p), add_a(a)
                lo = 0
            else:
                # change the size of one level (and sometimes one on the other side)
                side, lo = sides[k], lvls[k]
                px, am = (bp, ba) if side == 0 else (ap, aa)
                a = pool[ip % npool]
                ip += 1
                if a == am[lo]:
                    a += lot
                am[lo] = a
                add_s(side), add_p(px[lo]), add_a(a)
                if twos[k]:
                    lvl = lvl2s[k]
                    px, am = (ap, aa) if side == 0 else (bp, ba)
                    a = pool[ip % npool]
                    ip += 1
                    if a == am[lvl]:
                        a += lot
                    am[lvl] = a
                    add_s(1 - side), add_p(px[lvl]), add_a(a)
                    if lvl < lo:
                        lo = lvl
            add_ex(ex), add_snap(False), add_off(len(cs)), add_low(lo)
            add_best((bp[0], ba[0], ap[0], aa[0]))
        carry.book = (bp, ba, ap, aa)
        seg.checkpoints = checkpoints
        seg.b_ex = np.array(ex_list, dtype=np.int64)
        seg.b_snap = np.array(snap_list, dtype=bool)
        seg.b_off = np.array(off, dtype=np.int64)
        seg.c_side = np.array(cs, dtype=np.int8)
        seg.c_px = np.array(cp, dtype=np.int32)
        seg.c_amt = np.array(ca, dtype=np.int64)
        seg.b_best = np.array(best, dtype=np.int64).reshape(-1, 4)
        seg.b_low = np.array(low, dtype=np.int16)

    def _best_at(self, seg: Segment, t: np.ndarray) -> np.ndarray:
        """Best (bid px, bid amt, ask px, ask amt) in force at exchange times ``t``."""
        i = np.searchsorted(seg.b_ex, t, side="right") - 1
        if self._start_best is not None:
            table = np.vstack([np.array(self._start_best, dtype=np.int64), seg.b_best])
        else:  # first segment: before the snapshot, use the opening book
            table = np.vstack([seg.b_best[:1], seg.b_best])
        return table[i + 1]

    # -- trades and tickers: vectorized against the book's best levels ------------
    def _trades(self, seg: Segment, d: dict) -> None:
        sizes = d["g_size"]
        ng = len(sizes)
        best = self._best_at(seg, d["g_t"])
        buy = d["g_buy"]
        base = np.where(buy, best[:, 2], best[:, 0]) if ng else np.zeros(0, np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        steps = d["t_step"].astype(np.int64)
        steps[starts[:-1]] = 0  # a sweep starts at the touch
        csum = np.cumsum(steps)
        within = csum - np.repeat(csum[starts[:-1]], sizes) if ng else csum
        sign = np.repeat(np.where(buy, 1, -1), sizes)
        seg.g_off = starts
        seg.t_px = (np.repeat(base, sizes) + sign * within).astype(np.int32)
        seg.t_amt = d["t_amt"]
        seg.t_buy = np.repeat(buy, sizes)
        nt = len(seg.t_px)
        day_base = self.day * 10_000_000
        seg.t_id = day_base + self.carry.trades + np.arange(nt, dtype=np.int64)
        self.carry.trades += nt
        self._trade_t = np.repeat(d["g_t"], sizes)

    def _tickers(self, seg: Segment, d: dict) -> None:
        sp, carry = self.sp, self.carry
        t = d["k_t"]
        nk = len(t)
        best = self._best_at(seg, t)
        mid = (best[:, 0] + best[:, 2]) * sp.tick_h / 2.0  # in cents
        i = np.searchsorted(self._trade_t, t, side="right") - 1
        prev_last = carry.last_trade_px if carry.last_trade_px is not None else -1
        last = np.where(i >= 0, seg.t_px[np.maximum(i, 0)] if len(seg.t_px) else 0, prev_last)
        last = np.where(last < 0, best[:, 0], last)
        oi = carry.oi + np.cumsum(d["k_oi"])
        fund = carry.fund + np.cumsum(d["k_fund"])
        idx = np.round(mid * (1 + d["k_idx"])).astype(np.int64)
        mark = np.round(mid * (1 + d["k_mark"])).astype(np.int64)
        # a few tickers repeat the previous values exactly: those are not sent
        src = np.where(d["k_same"], 0, np.arange(nk))
        src[:1] = 0
        src = np.maximum.accumulate(src) if nk else src
        seg.k_last, seg.k_oi, seg.k_fund = last[src].astype(np.int32), oi[src], fund[src]
        seg.k_index, seg.k_mark = idx[src], mark[src]
        # the top of the book a ticker message shows (book_ticker): every change strictly before the ticker,
        # nothing (zeros) before the day's snapshot; no draw
        before = np.searchsorted(seg.b_ex, t, side="left")
        opening = np.array(self._start_best if self._start_best is not None else (0, 0, 0, 0), dtype=np.int64)
        seg.k_top = np.vstack([opening[None, :], seg.b_best])[before]
        seg.start_best = self._start_best
        # best bid + best ask (ticks) after the first i book events (the day's opening book before its snapshot):
        # the option model's underlying price, also a pure function of the book
        first = seg.b_best[0] if self._start_best is None else opening
        seg.b_sum = np.concatenate([[first[0] + first[2]], seg.b_best[:, 0] + seg.b_best[:, 2]])
        if nk:
            carry.oi, carry.fund = int(oi[-1]), int(fund[-1])
        if len(seg.t_px):
            carry.last_trade_px = int(seg.t_px[-1])

    # -- arrival order -----------------------------------------------------------
    def _merge(self, seg: Segment, d: dict) -> None:
        nb, ng, nk = len(seg.b_ex), len(d["g_t"]), len(d["k_t"])
        ex = np.concatenate([seg.b_ex, d["g_t"], d["k_t"]]).astype(np.int64)
        kind = np.concatenate([np.full(nb, KIND_BOOK), np.full(ng, KIND_TRADE), np.full(nk, KIND_TICKER)]).astype(np.int8)
        idx = np.concatenate([np.arange(nb), np.arange(ng), np.arange(nk)]).astype(np.int32)
        lat = np.concatenate([d["b_lat"], d["g_lat"], d["k_lat"]])
        live_lat = np.ceil(np.concatenate([d["b_live"], d["g_live"], d["k_live"]])).astype(np.int64)
        order = np.lexsort((idx, kind, ex))
        ex, kind, idx, lat, live_lat = ex[order], kind[order], idx[order], lat[order], live_lat[order]
        # one connection delivers in order: arrival = max(previous arrival, ex + latency + skew)
        skew = self.cfg.skew_ms
        loc = np.maximum.accumulate(np.concatenate([[self.carry.prev_loc],
                                                    (ex + skew) * 1000 + lat.astype(np.int64)]))[1:]
        live = np.maximum.accumulate(np.concatenate([[self.carry.prev_live], ex + skew + live_lat]))[1:]
        # events of the segment also arrive within it, shifted by the skew (a few of the last
        # 5 ms get a shorter latency), so reading a segment never needs the previous one, or day
        end = self.start_ms + SEGMENT_MS + skew
        loc, live = np.minimum(loc, end * 1000 - 1), np.minimum(live, end - 1)
        if len(ex):
            self.carry.prev_loc, self.carry.prev_live = int(loc[-1]), int(live[-1])
        seg.ev_ex, seg.ev_kind, seg.ev_idx, seg.ev_loc, seg.ev_live = ex, kind, idx, loc, live * 1000
