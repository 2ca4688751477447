"""tardis normalization of raw events: messages and computables, rendered as JSON lines.

A :class:`Normalizer` is one options object of one request (or live connection): it
receives raw exchange events in arrival order and appends ``(local_us, line)`` pairs to
``out``. The computables are ports of tardis-node ``src/computable/booksnapshot.ts`` and
``tradebar.ts``:

* a source message is output first, then the samples it triggered, computables in the
  order of ``dataTypes``, all with the trigger's localTimestamp;
* an interval snapshot is emitted (stamped with the end of its interval) by the first
  book change after that interval, only if the top ``depth`` levels changed; the first
  snapshot after a start or reset is unaligned (stamped with the change's own time);
* a time bar is emitted by the first trade of a later interval; bars are triggered by
  trades only (tardis-machine 18.2.0 does not close bars on book changes: see the
  fixture, the BTC bar of 00:02 waits for the trade at 00:02:01.473);
* ``disconnect`` resets every computable and ticker state, and book changes are ignored
  until the next snapshot (the mappers are re-created, as in tardis-node).

Ticker channel (one exchange ``ticker`` message per ticker event; tardis-node's mappers in its normalizer
order: derivative_ticker, option_summary, book_ticker, all with the ticker's timestamps):

* ``derivative_ticker`` (perpetuals only: tardis skips option tickers) is sent only when a value changed;
* ``option_summary`` (options only: nothing for a perpetual), one per option ticker, no change detection::

    {"type":"option_summary","symbol":"BTC-29JAN27-85000-C","exchange":"deribit","optionType":"call",
     "strikePrice":85000,"expirationDate":"2027-01-29T08:00:00.000Z","bestBidPrice":0.0815,"bestBidAmount":4.5,
     "bestBidIV":61.02,"bestAskPrice":0.084,"bestAskAmount":12.3,"bestAskIV":63.9,"lastPrice":0.0825,
     "openInterest":512.3,"markPrice":0.0829,"markIV":62.35,"delta":0.52311,"gamma":0.00002,"vega":153.20754,
     "theta":-64.8235,"rho":78.1201,"underlyingPrice":85210.25,"underlyingIndex":"BTC-29JAN27",
     "timestamp":"...","localTimestamp":"..."}

  a missing best bid leaves out bestBidPrice, bestBidAmount and bestBidIV (likewise the ask), lastPrice is left
  out until the instrument's first trade (tardis' ``asNumberIfValid``: zero, null and NaN become undefined);
* ``book_ticker`` (any symbol), one per ticker, no change detection, tardis-node's key order::

    {"type":"book_ticker","symbol":"BTC-PERPETUAL","exchange":"deribit","askAmount":2000,"askPrice":85001,
     "bidPrice":85000.5,"bidAmount":1000,"timestamp":"...","localTimestamp":"..."}

  a side whose best level is empty (no level, zero size) leaves out both its keys. A perpetual's values are the
  top of the model's book at the ticker (``Segment.k_top``: every change strictly before it), an option's its
  quotes (the option_summary's best bid / ask). Neither needs the book channel nor a snapshot.

Neither book_ticker nor option_summary keeps state, so a ``disconnect`` has nothing of theirs to reset.
"""
from __future__ import annotations

import json
from bisect import bisect_left, insort

from .market import OptionBlock, Segment, liquidation_kind, liquidation_side, option_contract
from .options import StreamSpec
from .render import cents_str, fmt_local, fmt_ms, js_number, price_str

__all__ = ["SegmentView", "OptionView", "Normalizer"]


def _fnum(x: float) -> str:
    """``js_number`` of a finite float, fast path (no exponent: the repr is what JS prints, minus a ``.0``)."""
    r = repr(x)
    if r[-2:] == ".0":
        return r[:-2] if x else "0"  # -0.0 prints as 0
    return r if "e" not in r else js_number(x)


class OptionView:
    """Python-list copies of an option block's values for its events ``a:b`` (indexed from ``a``)."""

    def __init__(self, block: OptionBlock, a: int, b: int):
        self.symbol = block.contract.symbol
        self.rows = block.values[a:b].tolist()


class SegmentView:
    """Python-list copies of the segment arrays a normalizer reads (numpy scalars are slow)."""

    def __init__(self, seg: Segment, book: bool, changes: bool, trades: bool, tickers: bool,
                 book_tickers: bool = False):
        self.symbol, self.params = seg.symbol, seg.params
        if book:
            self.b_snap = seg.b_snap.tolist()
            self.b_best = seg.b_best.tolist()
            self.b_low = seg.b_low.tolist()
        if changes:
            self.b_off = seg.b_off.tolist()
            self.c_side, self.c_px, self.c_amt = seg.c_side.tolist(), seg.c_px.tolist(), seg.c_amt.tolist()
        if trades:
            self.g_off, self.t_id = seg.g_off.tolist(), seg.t_id.tolist()
            self.t_px, self.t_amt, self.t_buy = seg.t_px.tolist(), seg.t_amt.tolist(), seg.t_buy.tolist()
        if tickers:
            self.k = list(zip(seg.k_last.tolist(), seg.k_oi.tolist(), seg.k_fund.tolist(),
                              seg.k_index.tolist(), seg.k_mark.tolist()))
        if book_tickers:
            self.k_top = seg.k_top.tolist()

    def changes(self, i: int):
        """(bid changes, ask changes) of book event ``i`` as [(price ticks, amount)]."""
        bids, asks = [], []
        side, px, amt = self.c_side, self.c_px, self.c_amt
        for c in range(self.b_off[i], self.b_off[i + 1]):
            (bids if side[c] == 0 else asks).append((px[c], amt[c]))
        return bids, asks


class _Side:
    """One side of an order book, best first (bids keyed by -price)."""

    __slots__ = ("keys", "amt", "sign")

    def __init__(self, sign: int):
        self.keys, self.amt, self.sign = [], {}, sign

    def apply(self, px: int, a: int) -> None:
        """Set a level; amount 0 deletes it."""
        k = px * self.sign
        if a == 0:
            if self.amt.pop(k, None) is not None:
                del self.keys[bisect_left(self.keys, k)]
        else:
            if k not in self.amt:
                insort(self.keys, k)
            self.amt[k] = a

    def top(self, n: int):
        """The best ``n`` levels as ((price ticks, amount), ...)."""
        s, amt = self.sign, self.amt
        return tuple((k * s, amt[k]) for k in self.keys[:n])


class _BookSampler:
    """State of one BookSnapshotComputable."""

    __slots__ = ("depth", "interval", "changed", "initialized", "last_ts", "fresh", "prefix")

    def __init__(self, spec, symbol: str, exchange: str):
        self.depth, self.interval = spec.depth, spec.interval
        self.prefix = (f'{{"type":"book_snapshot","symbol":"{symbol}","exchange":"{exchange}","name":"{spec.name}",'
                       f'"depth":{spec.depth},"interval":{spec.interval},"bids":[')
        self.reset()

    def reset(self) -> None:
        self.changed = self.initialized = False
        self.fresh = True  # its stored levels are empty, so any book is a change
        self.last_ts = -1


class _Bar:
    """State of one TradeBarComputable."""

    __slots__ = ("kind", "interval", "prefix", "trades", "open", "high", "low", "close", "volume",
                 "buy", "sell", "vwap", "open_ts", "close_ts", "ts")

    def __init__(self, spec, symbol: str, exchange: str):
        self.kind, self.interval = spec.kind, spec.interval
        self.prefix = (f'{{"type":"trade_bar","symbol":"{symbol}","exchange":"{exchange}","name":"{spec.name}",'
                       f'"interval":{spec.interval},"kind":"{spec.kind}",')
        self.reset()

    def reset(self) -> None:
        self.trades = self.volume = self.buy = self.sell = 0
        self.open = self.close = 0
        self.high, self.low = -9007199254740991, 9007199254740991  # JS MIN/MAX_SAFE_INTEGER
        self.vwap = 0
        self.open_ts = self.close_ts = self.ts = -1

    def add(self, price: float, amount: int, buy: bool, ex: int) -> None:
        """Add one trade to the bar in progress (tradebar.ts ``_update``)."""
        if self.trades == 0:
            self.open, self.open_ts = price, ex
        if self.high < price:
            self.high = price
        if self.low > price:
            self.low = price
        self.close, self.close_ts = price, ex
        if buy:
            self.buy += amount
        else:
            self.sell += amount
        self.trades += 1
        # same float operations, in the same order, as tradebar.ts
        self.vwap = (self.vwap * self.volume + price * amount) / (self.volume + amount)
        self.volume += amount
        self.ts = ex

    def line(self, loc: str) -> str:
        """The bar as a JSON line (tardis key order: localTimestamp before timestamp)."""
        n = js_number
        return (f'{self.prefix}"open":{n(self.open)},"high":{n(self.high)},"low":{n(self.low)},'
                f'"close":{n(self.close)},"volume":{n(self.volume)},"buyVolume":{n(self.buy)},'
                f'"sellVolume":{n(self.sell)},"trades":{self.trades},"vwap":{n(self.vwap)},'
                f'"openTimestamp":"{fmt_ms(self.open_ts)}","closeTimestamp":"{fmt_ms(self.close_ts)}",'
                f'"localTimestamp":"{loc}","timestamp":"{fmt_ms(self.ts)}"}}')


class _Sym:
    """Per-symbol normalizer state."""

    def __init__(self, symbol: str, spec: StreamSpec, params):
        ex = spec.exchange
        self.symbol, self.params = symbol, params
        self.samplers = [_BookSampler(s, symbol, ex) for s in spec.books]
        self.bars = [_Bar(s, symbol, ex) for s in spec.bars]
        self.deep = any(s.depth > 1 for s in spec.books)  # needs a full order book
        # only real-time top-of-book samplers ("quote"): a change at level 0 is a sample
        self.quotes_only = bool(spec.books) and not spec.book_change and all(
            s.depth == 1 and s.interval == 0 for s in spec.books)
        self.head = f'"symbol":"{symbol}","exchange":"{ex}",'
        self.px_cache: dict[int, tuple[str, float]] = {}
        contract = option_contract(symbol)
        if contract is not None:  # the static part of its option_summary
            self.option_head = (f'{{"type":"option_summary",{self.head}"optionType":"{contract.option_type}",'
                                f'"strikePrice":{js_number(contract.strike)},'
                                f'"expirationDate":"{contract.expiration_text}",')
            self.option_index = contract.underlying_index
        self.reset()

    def reset(self) -> None:
        self.ready = False  # book changes are ignored until a snapshot
        self.best = None
        self.bids, self.asks = _Side(-1), _Side(1)
        self.last_book_ex = -1
        self.ticker = None
        for s in self.samplers:
            s.reset()
        for b in self.bars:
            b.reset()

    def px(self, ticks: int) -> tuple[str, float]:
        """Price text and float for a tick count, memoized per symbol."""
        r = self.px_cache.get(ticks)
        if r is None:
            s = price_str(ticks, self.params.tick_h)
            r = self.px_cache[ticks] = (s, float(s))
        return r

    def top(self, n: int):
        """Top ``n`` levels of the symbol's current book (bids, asks)."""
        if n == 1 and self.best is not None:
            b = self.best
            return ((b[0], b[1]),), ((b[2], b[3]),)
        return self.bids.top(n), self.asks.top(n)


class Normalizer:
    """Raw events -> tardis-machine JSON lines for one options object.

    ``live`` selects live timestamp precision (ms) and the live ``disconnect`` shape;
    ``perturb`` maps (symbol, minute start ms) -> price factor for this source; ``trade_ids=False``
    leaves the ``id`` out of trade messages (an exchange without trade ids, see
    ``MarketConfig.no_trade_ids``); ``arrival_shift_us`` stamps every localTimestamp that much earlier
    than the arrival it is sent at (a live connection's own exchange connection, see
    ``MarketConfig.live_arrival_spread_ms``).
    """

    def __init__(self, spec: StreamSpec, params_of, *, live: bool, perturb: dict | None = None,
                 trade_ids: bool = True, arrival_shift_us: int = 0):
        self.spec, self.live = spec, live
        self.trade_ids = trade_ids
        shift = arrival_shift_us
        self._local = (lambda us: fmt_local(us - shift, live)) if shift else (lambda us: fmt_local(us, live))
        self.perturb = perturb or {}
        self.syms = {s: _Sym(s, spec, params_of(s)) for s in spec.symbols}
        self.out: list[tuple[int, str]] = []
        self._want_change, self._want_trade, self._want_ticker = spec.book_change, spec.trade, spec.ticker
        self._want_liquidation = spec.liquidation
        self._want_book_ticker, self._want_option_summary = spec.book_ticker, spec.option_summary

    # -- helpers ---------------------------------------------------------------------
    def _factor(self, symbol: str, ex_ms: int):
        return self.perturb.get((symbol, ex_ms - ex_ms % 60_000)) if self.perturb else None

    def _levels(self, st: _Sym, levels, n: int, factor) -> str:
        parts = []
        for p, a in levels:
            s = st.px(p)[0] if factor is None else js_number(st.px(p)[1] * factor)
            parts.append(f'{{"price":{s},"amount":{a}}}')
        parts.extend(["{}"] * (n - len(levels)))  # JSON.stringify of an empty level
        return ",".join(parts)

    def _snapshot_line(self, st, s: _BookSampler, tops, ts: int, loc: str, book_ex: int) -> str:
        f = self._factor(st.symbol, book_ex)
        bids, asks = tops
        if f is None and s.depth == 1 and bids and asks:  # the quote fast path
            px = st.px
            (bp, ba), (ap, aa) = bids[0], asks[0]
            return (f'{s.prefix}{{"price":{px(bp)[0]},"amount":{ba}}}],"asks":[{{"price":{px(ap)[0]},'
                    f'"amount":{aa}}}],"timestamp":"{fmt_ms(ts)}","localTimestamp":"{loc}"}}')
        return (f'{s.prefix}{self._levels(st, bids, s.depth, f)}],"asks":[{self._levels(st, asks, s.depth, f)}],'
                f'"timestamp":"{fmt_ms(ts)}","localTimestamp":"{loc}"}}')

    # -- book ------------------------------------------------------------------------
    def book(self, v: SegmentView, i: int, ex: int, loc_us: int) -> None:
        """A book change of the market (``i`` indexes the view's book arrays)."""
        st = self.syms[v.symbol]
        snap = v.b_snap[i]
        if not st.ready:
            if not snap:
                return
            st.ready = True
        if st.quotes_only and not snap:
            # fast path, same result as _on_book: interval 0 samplers emit iff level 0 changed
            best = st.best = v.b_best[i]
            st.last_book_ex = ex
            if v.b_low[i] == 0:
                loc = self._local(loc_us)
                tops = ((best[0], best[1]),), ((best[2], best[3]),)
                for s in st.samplers:
                    self.out.append((loc_us, self._snapshot_line(st, s, tops, ex, loc, ex)))
            return
        changes = v.changes(i) if (self._want_change or st.deep) else None
        self._on_book(st, ex, loc_us, snap, v.b_best[i], v.b_low[i], changes)

    def snapshot(self, symbol: str, ex: int, loc_us: int, bids, asks) -> None:
        """A full book snapshot sent by the exchange on (re)connect."""
        st = self.syms[symbol]
        st.ready = True
        best = (bids[0][0], bids[0][1], asks[0][0], asks[0][1])
        self._on_book(st, ex, loc_us, True, best, 0, (list(bids), list(asks)))

    def _on_book(self, st: _Sym, ex: int, loc_us: int, snap: bool, best, low: int, changes) -> None:
        loc = None
        out = self.out
        if self._want_change:
            loc = self._local(loc_us)
            f = self._factor(st.symbol, ex)
            b, a = changes
            out.append((loc_us, f'{{"type":"book_change",{st.head}"isSnapshot":{"true" if snap else "false"},'
                                f'"bids":[{self._levels(st, b, 0, f)}],"asks":[{self._levels(st, a, 0, f)}],'
                                f'"timestamp":"{fmt_ms(ex)}","localTimestamp":"{loc}"}}'))
        samplers = st.samplers
        if not samplers:
            st.best, st.last_book_ex = best, ex
            return
        # check before the update: an interval ended -> emit the book as it was
        early = None
        pre = {}
        for s in samplers:
            if s.changed and s.interval and s.initialized and ex // s.interval > s.last_ts // s.interval:
                if s.depth not in pre:
                    pre[s.depth] = st.top(s.depth)
                ts = (s.last_ts // s.interval + 1) * s.interval
                if loc is None:
                    loc = self._local(loc_us)
                if early is None:
                    early = {}
                early[s] = self._snapshot_line(st, s, pre[s.depth], ts, loc, st.last_book_ex)
                s.changed = False
        if snap:
            for s in samplers:
                if s.depth not in pre:
                    pre[s.depth] = st.top(s.depth) if st.best is not None else ((), ())
            st.bids, st.asks = _Side(-1), _Side(1)
        # update
        st.best = best
        if st.deep:
            for p, a in changes[0]:
                st.bids.apply(p, a)
            for p, a in changes[1]:
                st.asks.apply(p, a)
        book_ex = st.last_book_ex = ex
        post = {}
        for s in samplers:
            if early is not None and s in early:
                out.append((loc_us, early[s]))
            if snap:
                if s.depth not in post:
                    post[s.depth] = st.top(s.depth)
                changed = s.fresh or pre[s.depth] != post[s.depth]
            else:
                changed = low < s.depth
            s.fresh = False
            if changed:
                s.changed = True
            s.last_ts = ex
            # check after the update: real-time snapshots, or the first (unaligned) one
            if s.changed and (s.interval == 0 or not s.initialized):
                if s.depth not in post:
                    post[s.depth] = st.top(s.depth)
                if loc is None:
                    loc = self._local(loc_us)
                out.append((loc_us, self._snapshot_line(st, s, post[s.depth], ex, loc, book_ex)))
                s.changed = False
                s.initialized = True

    # -- trades ----------------------------------------------------------------------
    def trades(self, v: SegmentView, g: int, ex: int, loc_us: int) -> None:
        """A trade message of the market: trades ``g_off[g]:g_off[g+1]`` sharing ``ex``."""
        st = self.syms[v.symbol]
        out, bars = self.out, st.bars
        loc = self._local(loc_us)
        exs = fmt_ms(ex)
        f = self._factor(st.symbol, ex)
        prefix = st.params.id_prefix
        for j in range(v.g_off[g], v.g_off[g + 1]):
            ps, pf = st.px(v.t_px[j])
            if f is not None:
                pf = pf * f
                ps = js_number(pf)
            amount, buy = v.t_amt[j], v.t_buy[j]
            trade_id = f'"id":"{prefix}{v.t_id[j]}",' if self.trade_ids else ""  # JSON drops an undefined id
            if self._want_trade:
                out.append((loc_us, f'{{"type":"trade",{st.head}{trade_id}"price":{ps},'
                                    f'"amount":{amount},"side":"{"buy" if buy else "sell"}",'
                                    f'"timestamp":"{exs}","localTimestamp":"{loc}"}}'))
            if self._want_liquidation:
                # right after its trade, with the same timestamps (tardis-machine.md, "Liquidations")
                kind = liquidation_kind(st.symbol, f"{prefix}{v.t_id[j]}")
                if kind is not None:
                    out.append((loc_us, f'{{"type":"liquidation",{st.head}{trade_id}"price":{ps},'
                                        f'"amount":{amount},"side":"{liquidation_side(kind, buy)}",'
                                        f'"timestamp":"{exs}","localTimestamp":"{loc}"}}'))
            for b in bars:
                if b.trades and b.kind == "time" and ex // b.interval > b.open_ts // b.interval:
                    b.ts = (b.open_ts // b.interval + 1) * b.interval
                    out.append((loc_us, b.line(loc)))
                    b.reset()
                b.add(pf, amount, buy, ex)
                if (b.kind == "tick" and b.trades >= b.interval) or (b.kind == "volume" and b.volume >= b.interval):
                    out.append((loc_us, b.line(loc)))
                    b.reset()

    # -- tickers ---------------------------------------------------------------------
    def ticker(self, v: SegmentView, k: int, ex: int, loc_us: int) -> None:
        """A perpetual's ticker message: derivative_ticker (when a value changed), then book_ticker."""
        if self._want_ticker:
            self._derivative_ticker(v, k, ex, loc_us)
        if self._want_book_ticker:
            st = self.syms[v.symbol]
            bp, ba, ap, aa = v.k_top[k]
            f = self._factor(st.symbol, ex)
            px = (lambda t: st.px(t)[0]) if f is None else (lambda t: js_number(st.px(t)[1] * f))
            parts = ['{"type":"book_ticker",', st.head]
            if aa:  # an empty side (no level: all zero) is left out
                parts.append(f'"askAmount":{aa},"askPrice":{px(ap)},')
            if ba:
                parts.append(f'"bidPrice":{px(bp)},"bidAmount":{ba},')
            parts.append(f'"timestamp":"{fmt_ms(ex)}","localTimestamp":"{self._local(loc_us)}"}}')
            self.out.append((loc_us, "".join(parts)))

    def option(self, v: OptionView, i: int, ex: int, loc_us: int) -> None:
        """An option's ticker message: option_summary, then book_ticker (never derivative_ticker)."""
        if not (self._want_option_summary or self._want_book_ticker):
            return
        st = self.syms[v.symbol]
        bp, ba, biv, ap, aa, aiv, last, oi, mark, iv, delta, gamma, vega, theta, rho, und = v.rows[i]
        n = _fnum
        f = self._factor(st.symbol, ex)
        if f is not None:  # a perturbed minute: every price of the message (not amounts, IVs nor greeks)
            bp, ap, last, mark, und = bp * f, ap * f, last * f, mark * f, und * f
        tail = f'"timestamp":"{fmt_ms(ex)}","localTimestamp":"{self._local(loc_us)}"}}'
        # NaN is a field the message leaves out (x == x is False only for NaN)
        if self._want_option_summary:
            parts = [st.option_head]
            if bp == bp:
                parts.append(f'"bestBidPrice":{n(bp)},"bestBidAmount":{n(ba)},"bestBidIV":{n(biv)},')
            if ap == ap:
                parts.append(f'"bestAskPrice":{n(ap)},"bestAskAmount":{n(aa)},"bestAskIV":{n(aiv)},')
            if last == last:
                parts.append(f'"lastPrice":{n(last)},')
            parts.append(f'"openInterest":{n(oi)},"markPrice":{n(mark)},"markIV":{n(iv)},"delta":{n(delta)},'
                         f'"gamma":{n(gamma)},"vega":{n(vega)},"theta":{n(theta)},"rho":{n(rho)},'
                         f'"underlyingPrice":{n(und)},"underlyingIndex":"{st.option_index}",')
            parts.append(tail)
            self.out.append((loc_us, "".join(parts)))
        if self._want_book_ticker:
            parts = ['{"type":"book_ticker",', st.head]
            if ap == ap:
                parts.append(f'"askAmount":{n(aa)},"askPrice":{n(ap)},')
            if bp == bp:
                parts.append(f'"bidPrice":{n(bp)},"bidAmount":{n(ba)},')
            parts.append(tail)
            self.out.append((loc_us, "".join(parts)))

    def _derivative_ticker(self, v: SegmentView, k: int, ex: int, loc_us: int) -> None:
        """A derivative ticker update; sent only when a value changed."""
        st = self.syms[v.symbol]
        last, oi, fund, idx, mark = v.k[k]
        f = self._factor(st.symbol, ex)
        if f is None:
            vals = (st.px(last)[0], oi, js_number(fund / 1e8), cents_str(idx), cents_str(mark))
        else:
            vals = (js_number(st.px(last)[1] * f), oi, js_number(fund / 1e8),
                    js_number(idx / 100 * f), js_number(mark / 100 * f))
        if vals == st.ticker:
            return
        st.ticker = vals
        self.out.append((loc_us, f'{{"type":"derivative_ticker",{st.head}"lastPrice":{vals[0]},'
                                 f'"openInterest":{oi},"fundingRate":{vals[2]},"indexPrice":{vals[3]},'
                                 f'"markPrice":{vals[4]},"timestamp":"{fmt_ms(ex)}",'
                                 f'"localTimestamp":"{self._local(loc_us)}"}}'))

    # -- connection ------------------------------------------------------------------
    def disconnect(self, loc_us: int) -> None:
        """The exchange connection dropped: maybe tell, then forget every state."""
        if self.spec.with_disconnect:
            line = f'{{"type":"disconnect","exchange":"{self.spec.exchange}","localTimestamp":"{self._local(loc_us)}"'
            if self.live:
                line += ',"symbols":[' + ",".join(f'"{s}"' for s in self.spec.symbols) + "]"
            self.out.append((loc_us, line + "}"))
        for st in self.syms.values():
            st.reset()

    def error(self, loc_us: int, details: str, count: int) -> None:
        """A live ``error`` message (only with withErrorMessages)."""
        if self.spec.with_errors:
            self.out.append((loc_us, f'{{"type":"error","exchange":"{self.spec.exchange}",'
                                     f'"localTimestamp":"{self._local(loc_us)}",'
                                     f'"details":{json.dumps(details)},"subSequentErrorsCount":{count}}}'))
