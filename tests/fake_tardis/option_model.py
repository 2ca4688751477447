"""Deribit options in the synthetic market: instrument names and each option's ticker messages.

Instruments. ``<CUR>-<D><MON><YY>-<STRIKE>-<C|P>`` as Deribit writes them: ``BTC-29JAN27-85000-C``,
``ETH-8DEC26-3000-P`` (day without a leading zero, three-letter month, two-digit year, a strike without
leading zeros; a decimal strike has a ``d`` for the point, ``XRP_USDC-30JUN23-0d625-C``, which the server's
upper-casing turns into ``0D625``: read as 0.625, and answered upper case like every symbol). Any
currency, strike and valid date is an instrument (:func:`option_contract`); a name that only looks like one
(``BTC-08DEC26-90000-P``, ``BTC-31FEB27-1000-C``) is an ordinary unknown symbol, as before.
Expiry is 08:00 UTC of the date (``expirationDate``); from then on the instrument sends nothing. The
underlying is the currency's perpetual (``BTC-PERPETUAL``); ``underlyingIndex`` is the future of that expiry
(``BTC-29JAN27``) when the expiry is a Friday (Deribit lists a future for every Friday expiry), else the
synthetic index ``SYN.BTC-8DEC26``.

The model (everything a pure function of (config, exchange, symbol, time); the draws come from generators of
their own, keyed by the option's name and a tag, never from the perpetuals' generators, so the rest of the
market is byte-for-byte what it was):

* Ticker messages: one every ``ticker_interval_ms`` (1.0-2.0 s, fixed per instrument from a hash of its name)
  x uniform(0.75, 1.25), generated an hour at a time (:data:`OPTION_BLOCK_MS`, vectorised numpy: a block does
  not need the one before it). Quiet windows of the symbol (``MarketConfig.quiet``) drop them like any event.
  Arrival = exchange time + latency + skew, in order, within the hour (like a segment's events).
* ``underlyingPrice``: the perpetual's mid ``(best bid + best ask) / 2`` after every book change strictly before
  the ticker (the day's opening book before the day's snapshot), exact in the perpetual's ticks.
* ``markIV`` (percent, 2 decimals): a smooth at-the-money level per currency (50-60, +-8 over 31 h, +-2 over
  3.7 h, +-0.4 over 23 min: sinusoids of time on whole minutes, linear in between) plus a smile
  ``18 tanh(1.5 k^2) - 5 tanh(k)`` (``k = ln(K / F)``, F the underlying price), a short-expiry premium
  ``4 exp(-24 T)`` (T in years) and +-0.5 per instrument; clipped to [15, 200]. Mostly 40-80.
* ``markPrice``: Black-76 at markIV, in units of the underlying (``price in USD / F``, as Deribit quotes BTC
  options in BTC), rounded to 4 decimals, at least 0.0001. Greeks from the same model (USD, Deribit's
  conventions, 5 decimals): delta ``N(d1)`` (put ``N(d1) - 1``), gamma ``n(d1) / (F s sqrt T)``, vega
  ``F n(d1) sqrt T / 100``, theta ``-F n(d1) s / (2 sqrt T) / 365`` (per day), rho ``+-K T N(+-d2) / 100``.
* Best bid / ask: the option priced at ``markIV - w_bid`` / ``markIV + w_ask`` (w uniform 0.8-3.5 vol points;
  widths and amounts change at about a third of the tickers), to first order (the unrounded mark -+ w x vega in
  units of the underlying), the bid rounded down and the ask up to Deribit's tick (0.0001 below 0.005, else
  0.0005; the ask at least one tick above the bid); ``bestBidIV``/``bestAskIV`` are those IVs (2 decimals);
  amounts are contracts with one decimal, at least 0.1. NO bid when the bid rounds to less than one tick
  (deep out of the money), or inside a no-bid window (each ten minutes draws one, 30 s - 5 min long: present
  with probability 0.5 for an option with ``|delta| < 0.15``, else 0.03); NO ask inside a no-ask window
  (probability 0.05). A missing side leaves all three of its fields out (tardis' ``asNumberIfValid`` drops
  zero values); ``book_ticker`` of an option shows the same quotes.
* ``lastPrice``: an instrument's trades are a tape fixed per instrument: a quarter of the instruments never
  trade; the others trade first at a time drawn up to 100 days before expiry, then every 1 s - 6 h
  (exponential, mean 45 min). A trade's price is Black-76 at the model IV with the underlying's opening price
  of that day (``generator.opening_best_ticks``: no book needed), +-1 tick. ``lastPrice`` (the last trade
  strictly before the ticker) is absent until the first trade and present in every message after it.
* ``openInterest`` (contracts, one decimal): 0 until the first trade, then at least 0.1:
  ``base (0.02 + 0.98 (1 - exp(-age / 5 days))) (1 + 0.2 sin(2 pi t / 2.7 days + phase))``, base 20-1800 per
  instrument, age the time since the first trade.

Not modelled: option trades and books (``trade``, ``book_change``, ``quote`` ... send nothing for an option);
``derivative_ticker`` skips options, as tardis does. Every value is stored as the float the double prints
(``render.js_number`` round-trips: ``float(text) == value``), so ``tests/truth.py`` reads them from the blocks.
"""
from __future__ import annotations

import math
import re
import threading
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache

import numpy as np

from .generator import opening_best_ticks
from .render import fmt_ms
from .segment import DAY_MS, SEGMENT_MS, MarketConfig, symbol_params

__all__ = ["OptionContract", "OptionBlock", "option_contract", "build_option_block", "ticker_interval_ms",
           "first_trade_ms", "OPTION_BLOCK_MS", "OPTION_COLUMNS", "norm_cdf"]

OPTION_BLOCK_MS = 3_600_000  # option tickers are generated an hour at a time
YEAR_MS = 365 * DAY_MS
# the values of one option ticker, in this order (NaN = the field is absent from the message)
OPTION_COLUMNS = ("best_bid_price", "best_bid_amount", "best_bid_iv", "best_ask_price", "best_ask_amount",
                  "best_ask_iv", "last_price", "open_interest", "mark_price", "mark_iv", "delta", "gamma", "vega",
                  "theta", "rho", "underlying_price")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_OPTION_RE = re.compile(r"^([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)?)-([1-9]|[12][0-9]|3[01])(" + "|".join(_MONTHS) +
                        r")([0-9]{2})-([1-9][0-9]*(?:D[0-9]+)?|0D[0-9]+)-([CP])$")
_BLOCK_TAG = 0x6F7074  # "opt": the tag of an option block's generator (the market's own have none, or 7)
_TAPE_TAG = 0x747264  # "trd": the tag of an option's trade tape
_NEVER_TRADES = 0.25  # share of instruments that never trade
_FIRST_TRADE_SPAN_MS = 100 * DAY_MS
_TRADE_GAP_MS = 45 * 60_000
_SQRT_2PI = math.sqrt(2 * math.pi)


def _h(text: str) -> int:
    return zlib.crc32(text.encode())


def _u(*parts) -> float:
    """A uniform number in [0, 1) from a hash of ``parts`` (no generator)."""
    return _h("/".join(map(str, parts))) / 2 ** 32


@dataclass(frozen=True)
class OptionContract:
    """The static fields of one option instrument."""

    symbol: str
    currency: str
    expiry_ms: int  # 08:00 UTC of the expiry date
    strike: float
    call: bool
    underlying: str  # the perpetual whose mid is the option's underlying price
    underlying_index: str  # "BTC-29JAN27" (a Friday: a future exists) or "SYN.BTC-8DEC26"

    @property
    def option_type(self) -> str:
        return "call" if self.call else "put"

    @property
    def expiration_text(self) -> str:
        """``expirationDate`` as tardis prints it: ``2027-01-29T08:00:00.000Z``."""
        return fmt_ms(self.expiry_ms)


@lru_cache(maxsize=1 << 16)
def option_contract(symbol: str) -> OptionContract | None:
    """The option instrument ``symbol`` names (upper case, as Deribit writes it), or None."""
    m = _OPTION_RE.match(symbol)
    if m is None:
        return None
    currency, day, month, year, strike, kind = m.groups()
    try:
        expiry = datetime(2000 + int(year), _MONTHS.index(month) + 1, int(day), 8, tzinfo=timezone.utc)
    except ValueError:
        return None
    name = f"{currency}-{day}{month}{year}"
    return OptionContract(symbol=symbol, currency=currency, expiry_ms=int(expiry.timestamp()) * 1000,
                          strike=float(strike.replace("D", ".")), call=kind == "C", underlying=f"{currency}-PERPETUAL",
                          underlying_index=name if expiry.weekday() == 4 else "SYN." + name)


def ticker_interval_ms(cfg: MarketConfig, exchange: str, symbol: str) -> int:
    """The mean time between an option's ticker messages: 1000-1999 ms, fixed per instrument."""
    return 1000 + int(_u(cfg.seed, exchange, symbol, "ticker") * 1000)


# -- pricing ------------------------------------------------------------------------------------------
def norm_cdf(x, pdf=None):
    """The standard normal CDF, vectorised (Abramowitz & Stegun 26.2.17: absolute error below 7.5e-8, far
    below the 4-5 decimals the model prints; the printed numbers are the model's, whatever its accuracy).
    ``pdf``: the density at ``x`` when already known."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.2316419 * a)
    poly = t * (0.319381530 + t * (-0.356563782 + t * (1.781477937 + t * (-1.821255978 + t * 1.330274429))))
    upper = (np.exp(-0.5 * a * a) / _SQRT_2PI if pdf is None else pdf) * poly  # P(Z > |x|)
    return np.where(x > 0, 1.0 - upper, upper)


def _black76(F, K: float, T, sigma, call: bool, with_pdf: bool = False):
    """(price in units of the underlying, d1, N(d1), N(d2)[, n(d1)]) of a European option on a forward, rate 0."""
    sq = sigma * np.sqrt(T)
    d1 = (np.log(F / K) + 0.5 * sq * sq) / sq
    pdf = np.exp(-0.5 * d1 * d1) / _SQRT_2PI
    n1, n2 = norm_cdf(d1, pdf), norm_cdf(d1 - sq)
    if call:
        usd = F * n1 - K * n2
    else:
        usd = K * (1.0 - n2) - F * (1.0 - n1)
    price = np.maximum(usd, 0.0) / F
    return (price, d1, n1, n2, pdf) if with_pdf else (price, d1, n1, n2)


def _atm_iv(cfg: MarketConfig, currency: str, t_ms):
    """The currency's at-the-money IV (percent): 50-60 +- 8 over 31 h +- 2 over 3.7 h +- 0.4 over 23 min, sinusoids
    evaluated on whole minutes and interpolated linearly between them."""
    t_ms = np.asarray(t_ms)
    level = 50 + 10 * _u(cfg.seed, currency, "iv-level")
    ph1, ph2, ph3 = (2 * math.pi * _u(cfg.seed, currency, "iv", i) for i in range(3))
    lo = int(t_ms.min()) // 60_000 * 60_000 if len(t_ms) else 0
    knots = np.arange(lo, (int(t_ms.max()) if len(t_ms) else 0) + 60_001, 60_000)
    x = knots * (2 * math.pi)
    atm = (level + 8 * np.sin(x / 111_600_000 + ph1) + 2 * np.sin(x / 13_320_000 + ph2)
           + 0.4 * np.sin(x / 1_380_000 + ph3))
    return np.interp(t_ms, knots, atm)


def _model_iv(cfg: MarketConfig, c: OptionContract, t_ms, F, T):
    """The model's implied volatility (percent, unrounded) at exchange times ``t_ms``."""
    k = np.log(c.strike / F)
    atm = _atm_iv(cfg, c.currency, t_ms)
    smile = 18 * np.tanh(1.5 * k * k) - 5 * np.tanh(k)
    iv = atm + smile + 4 * np.exp(-24 * T) + (_u(cfg.seed, c.symbol, "iv") - 0.5)
    return np.clip(iv, 15, 200)


def _units(price, mode: str):
    """Prices (units of the underlying) -> counts of 0.0001 on Deribit's option tick grid (0.0001 below 0.005,
    else 0.0005), rounded ``down``, ``up`` or to the ``nearest`` tick."""
    u = np.asarray(price, dtype=np.float64) * 10_000
    if mode == "down":
        fine, coarse = np.floor(u + 1e-7), np.floor(u / 5 + 1e-7) * 5
    elif mode == "up":
        fine, coarse = np.ceil(u - 1e-7), np.ceil(u / 5 - 1e-7) * 5
    else:
        fine, coarse = np.rint(u), np.rint(u / 5) * 5
    return np.where(u < 50, fine, coarse).astype(np.int64)


# -- the trade tape ------------------------------------------------------------------------------------
class _Tape:
    """An instrument's trades: times fixed per instrument, prices computed when first needed."""

    def __init__(self, cfg: MarketConfig, exchange: str, c: OptionContract):
        self.cfg, self.exchange, self.c = cfg, exchange, c
        self.prices: dict[int, int] = {}  # trade index -> price in 0.0001 units
        first = _first_trade(cfg, exchange, c)
        if first is None:
            self.times, self.jitter, self.first = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), None
            return
        rng = np.random.default_rng([cfg.seed & 0xFFFFFFFF, _h(exchange), _h(c.symbol), _TAPE_TAG])
        span, times, jitter, total = c.expiry_ms - first, [], [], 0
        while total < span:  # chunks of draws until the tape reaches the expiry
            m = span // _TRADE_GAP_MS * 3 // 2 + 64
            gaps = np.clip(rng.exponential(_TRADE_GAP_MS, m), 1000, 6 * 3_600_000).astype(np.int64)
            times.append(first + total + np.concatenate([[0], np.cumsum(gaps[:-1])]))
            jitter.append(rng.integers(-1, 2, m))
            total += int(gaps.sum())
        times, jitter = np.concatenate(times), np.concatenate(jitter)
        keep = times < c.expiry_ms
        self.times, self.jitter, self.first = times[keep], jitter[keep], first

    def last_before(self, t: np.ndarray) -> np.ndarray:
        """The price of the last trade strictly before each time (NaN before the first trade)."""
        j = np.searchsorted(self.times, t, side="left") - 1  # ascending with t
        distinct = j[np.concatenate([[True], j[1:] != j[:-1]])] if len(j) else j
        need = [x for x in distinct.tolist() if x >= 0 and x not in self.prices]
        if need:
            self._price(np.array(need, dtype=np.int64))
        out = np.full(len(t), np.nan)
        has = j >= 0
        if has.any():
            out[has] = np.array([self.prices[int(x)] for x in j[has]], dtype=np.float64) / 10_000
        return out

    def _price(self, js: np.ndarray) -> None:
        cfg, c = self.cfg, self.c
        tau = self.times[js]
        tick_h = symbol_params(c.underlying).tick_h
        opening = [opening_best_ticks(cfg, self.exchange, c.underlying, int(d)) for d in (tau // DAY_MS).tolist()]
        F = np.array([(b + a) * tick_h for b, a in opening], dtype=np.int64) / 200.0
        T = (c.expiry_ms - tau) / YEAR_MS
        price = _black76(F, float(c.strike), T, _model_iv(cfg, c, tau, F, T) / 100, c.call)[0]
        units = _units(price, "nearest")
        units = np.maximum(units + self.jitter[js] * np.where(units < 50, 1, 5), 1)
        for j, p in zip(js.tolist(), units.tolist()):
            self.prices[j] = p


def _first_trade(cfg: MarketConfig, exchange: str, c: OptionContract) -> int | None:
    """Exchange ms of an instrument's first trade (None: it never trades): a hash of its name, no draw."""
    u = _u(cfg.seed, exchange, c.symbol, "first-trade")
    if u < _NEVER_TRADES:
        return None
    return c.expiry_ms - int((u - _NEVER_TRADES) / (1 - _NEVER_TRADES) * _FIRST_TRADE_SPAN_MS)


@lru_cache(maxsize=4096)
def _tape(cfg: MarketConfig, exchange: str, symbol: str) -> _Tape:
    return _Tape(cfg, exchange, option_contract(symbol))


def first_trade_ms(cfg: MarketConfig, exchange: str, symbol: str) -> int | None:
    """Exchange time of an option's first trade ever (None: it never trades; ``lastPrice`` appears in its first
    ticker after this time)."""
    c = option_contract(symbol)
    return None if c is None else _first_trade(cfg, exchange, c)


# -- an hour of tickers --------------------------------------------------------------------------------
class OptionBlock:
    """An hour of one option's ticker messages: exchange ms, replay local µs, live local µs, and the values
    (rows of :data:`OPTION_COLUMNS`, NaN where the message leaves the field out). Read-only."""

    __slots__ = ("contract", "start_ms", "ev_ex", "ev_loc", "ev_live", "values", "nbytes")

    def __init__(self, contract: OptionContract, start_ms: int, ex=None, loc=None, live=None, values=None):
        self.contract, self.start_ms = contract, start_ms
        self.ev_ex = np.zeros(0, dtype=np.int64) if ex is None else ex
        self.ev_loc = np.zeros(0, dtype=np.int64) if loc is None else loc
        self.ev_live = np.zeros(0, dtype=np.int64) if live is None else live
        self.values = np.zeros((0, len(OPTION_COLUMNS))) if values is None else values
        self.nbytes = self.ev_ex.nbytes + self.ev_loc.nbytes + self.ev_live.nbytes + self.values.nbytes + 200

    @property
    def symbol(self) -> str:
        return self.contract.symbol


def build_option_block(market, exchange: str, c: OptionContract, index: int) -> OptionBlock:
    """Block ``index`` (``ms // OPTION_BLOCK_MS``) of one option: pure, vectorised."""
    cfg = market.config
    start = index * OPTION_BLOCK_MS
    stop = min(start + OPTION_BLOCK_MS, c.expiry_ms)  # nothing from the expiry on
    if stop <= start:
        return OptionBlock(c, start)
    rng = np.random.default_rng([cfg.seed & 0xFFFFFFFF, _h(exchange), _h(c.symbol), index, _BLOCK_TAG])
    every = ticker_interval_ms(cfg, exchange, c.symbol)
    n = int(OPTION_BLOCK_MS / (0.75 * every)) + 2
    gaps = rng.uniform(0.75 * every, 1.25 * every, n)
    t = start + np.floor(rng.uniform(0, every) + np.concatenate([[0.0], np.cumsum(gaps[:-1])])).astype(np.int64)
    lo, hi = cfg.latency_ms
    lat = rng.uniform(lo * 1000, hi * 1000, n)
    live_lat = rng.uniform(lo, hi, n)
    # quote widths and sizes hold until a fresh draw (about a third of the tickers)
    fresh = rng.random(n) < 0.35
    fresh[0] = True
    m = int(fresh.sum())
    quotes = np.empty((4, m))
    quotes[:2] = rng.uniform(0.8, 3.5, (2, m))  # vol points under / over markIV
    quotes[2:] = np.exp(rng.normal(1.5, 1.1, (2, m)))  # contracts
    slots = OPTION_BLOCK_MS // SEGMENT_MS
    nobid = rng.random(slots), rng.uniform(0, SEGMENT_MS, slots), rng.uniform(30_000, 300_000, slots)
    noask = rng.random(slots), rng.uniform(0, SEGMENT_MS, slots), rng.uniform(30_000, 300_000, slots)
    w_bid, w_ask, a_bid, a_ask = np.repeat(quotes, np.diff(np.append(np.flatnonzero(fresh), n)), axis=1)
    # every draw is made: now keep the tickers of the hour before the expiry, outside quiet windows
    keep = t < stop
    for a, b in cfg.quiet_windows(c.symbol):
        keep &= ~((t >= a) & (t < b))
    t, lat, live_lat = t[keep], lat[keep], live_lat[keep]
    w_bid, w_ask, a_bid, a_ask = w_bid[keep], w_ask[keep], a_bid[keep], a_ask[keep]
    nk = len(t)
    if not nk:
        return OptionBlock(c, start)
    # the underlying: the perpetual's mid after every book change strictly before the ticker
    sums = np.empty(nk, dtype=np.int64)  # best bid + best ask, in ticks
    bounds = np.searchsorted(t, start + SEGMENT_MS * np.arange(slots + 1)).tolist()
    for s in range(slots):
        a, b = bounds[s], bounds[s + 1]
        if a == b:
            continue
        seg = market.segment(exchange, c.underlying, index * slots + s)
        sums[a:b] = seg.b_sum[np.searchsorted(seg.b_ex, t[a:b], side="left")]
    F = sums * symbol_params(c.underlying).tick_h / 200.0
    T = (c.expiry_ms - t) / YEAR_MS
    K = float(c.strike)
    mark_iv = np.round(_model_iv(cfg, c, t, F, T), 2)
    sigma, sq_t = mark_iv / 100, np.sqrt(T)
    price, d1, n1, n2, pdf = _black76(F, K, T, sigma, c.call, with_pdf=True)
    delta = n1 if c.call else n1 - 1
    gamma = pdf / (F * sigma * sq_t)
    vega = F * pdf * sq_t / 100
    theta = -F * pdf * sigma / (2 * sq_t) / 365
    rho = K * T * n2 / 100 if c.call else -K * T * (1.0 - n2) / 100
    # bid and ask: the mark moved by the widths in vol points (first order: vega in units of the underlying)
    vega_u = pdf * sq_t / 100
    bid_u = _units(price - vega_u * w_bid, "down")
    ask_u = np.maximum(_units(price + vega_u * w_ask, "up"), bid_u + np.where(bid_u < 50, 1, 5))
    within = (t - start) % SEGMENT_MS
    slot = (t - start) // SEGMENT_MS
    in_nobid = (within >= nobid[1][slot]) & (within < nobid[1][slot] + nobid[2][slot])
    in_noask = (within >= noask[1][slot]) & (within < noask[1][slot] + noask[2][slot])
    no_bid = (bid_u < 1) | (in_nobid & (nobid[0][slot] < np.where(np.abs(delta) < 0.15, 0.5, 0.03)))
    no_ask = in_noask & (noask[0][slot] < 0.05)
    tape = _tape(cfg, exchange, c.symbol)
    cols = np.empty((len(OPTION_COLUMNS), nk))
    cols[0] = bid_u / 10_000
    cols[1] = np.maximum(np.round(a_bid, 1), 0.1)
    cols[2] = np.round(mark_iv - w_bid, 2)
    cols[0:3, no_bid] = np.nan
    cols[3] = ask_u / 10_000
    cols[4] = np.maximum(np.round(a_ask, 1), 0.1)
    cols[5] = np.round(mark_iv + w_ask, 2)
    cols[3:6, no_ask] = np.nan
    cols[6] = tape.last_before(t)
    if tape.first is None:
        cols[7] = 0.0
    else:
        base = 20 * math.exp(4.5 * _u(cfg.seed, exchange, c.symbol, "oi"))
        phase = 2 * math.pi * _u(cfg.seed, exchange, c.symbol, "oi-phase")
        age = np.maximum(t - tape.first, 0)
        grown = 0.02 + 0.98 * (1 - np.exp(age / (-5 * DAY_MS)))
        oi = base * grown * (1 + 0.2 * np.sin(t * (2 * math.pi / 233_280_000) + phase))
        cols[7] = np.where(age > 0, np.maximum(np.round(oi, 1), 0.1), 0.0)
    cols[8] = np.maximum(np.round(price, 4), 0.0001)
    cols[9] = mark_iv
    np.round(np.array([delta, gamma, vega, theta, rho]), 5, out=cols[10:15])
    cols[15] = F
    values = cols.T  # rows of OPTION_COLUMNS (a view)
    # arrival: in order, within the hour (shifted by the skew), like a segment's events
    skew = cfg.skew_ms
    end = start + OPTION_BLOCK_MS + skew
    loc = np.minimum(np.maximum.accumulate((t + skew) * 1000 + lat.astype(np.int64)), end * 1000 - 1)
    live = np.minimum(np.maximum.accumulate(t + skew + np.ceil(live_lat).astype(np.int64)), end - 1) * 1000
    return OptionBlock(c, start, t, loc, live, values)


class BlockCache:
    """Process-wide LRU of option blocks, bounded by their array bytes (blocks need no order: any one is
    built on its own)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._blocks: dict = {}
        self._total = 0
        self._lock = threading.Lock()

    def get(self, market, exchange: str, c: OptionContract, index: int) -> OptionBlock:
        key = (market.config, exchange, c.symbol, index)
        with self._lock:
            block = self._blocks.pop(key, None)
            if block is not None:
                self._blocks[key] = block  # most recently used last
                return block
        block = build_option_block(market, exchange, c, index)  # outside the lock: pure, so a race is harmless
        with self._lock:
            if key not in self._blocks:
                self._blocks[key] = block
                self._total += block.nbytes
            while self._total > self.max_bytes and len(self._blocks) > 1:
                old = next(iter(self._blocks))
                self._total -= self._blocks.pop(old).nbytes
            return self._blocks.get(key, block)
