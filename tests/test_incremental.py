"""The incremental minute store and publisher against a full recompute, on randomized histories.

Each example is a random schedule of writes (live segments, replay heals that change earlier minutes, late
rows inside an open segment's latency margin, holes, quiet stretches that carry state across the edge of a
dirty range) and of windows that move. After every step the incrementally published series must equal,
frame for frame, the series a fresh database computes from scratch out of the same raw rows.

``GAPLESS_INCREMENTAL_EXAMPLES`` sets how many random schedules run (default 6).
"""
import os
import random
import threading

import numpy as np
import pytest

from gapless.convert import Converter
from gapless.publish import rebuild
from gapless.storage import Claim, Storage
from gapless.timeutil import MINUTE_US, US, iso

EXAMPLES = int(os.environ.get("GAPLESS_INCREMENTAL_EXAMPLES", "6"))
T0 = 1795564800 * US  # 2026-11-25T00:00:00Z
SYMBOLS = ("BTC-PERPETUAL", "ETH-PERPETUAL")
TYPES = ("trade", "quote", "quote_1m", "derivative_ticker")
STREAMS = [("deribit", s, d) for s in SYMBOLS for d in TYPES]
TICKER_FIELDS = ("lastPrice", "openInterest", "fundingRate", "indexPrice", "markPrice")


def stamp(us):
    return iso(us - us % US).replace("Z", "") + ".%06dZ" % (us % US)


class Market:
    """A random market of both symbols: trades, top-of-book changes and ticker updates at random times,
    with quiet stretches (nothing at all for minutes)."""

    def __init__(self, rng, minutes):
        self.events = {}
        for symbol in SYMBOLS:
            price = 100.0 if symbol == "ETH-PERPETUAL" else 80000.0
            events, t = [], T0 + rng.randrange(0, 5 * US)
            end = T0 + minutes * MINUTE_US
            while t < end:
                if rng.random() < 0.03:  # a quiet stretch of up to 4 minutes
                    t += rng.randrange(MINUTE_US, 4 * MINUTE_US)
                    continue
                price = round(price * (1 + rng.uniform(-0.001, 0.001)), 1)
                kind = rng.choice(("trade", "trade", "book", "book", "ticker"))
                events.append((t, kind, price, rng.randrange(1, 50), rng))
                t += rng.randrange(200_000, 9 * US)
            self.events[symbol] = [(t, kind, price, amount, self._fields(rng, price, kind))
                                   for t, kind, price, amount, rng in events]

    @staticmethod
    def _fields(rng, price, kind):
        if kind != "ticker":
            return None
        # a ticker update may leave fields out (null): they carry from earlier updates
        return {f: (price + i if rng.random() < 0.7 else None) for i, f in enumerate(TICKER_FIELDS)}

    def messages(self, symbol, lo, hi, latency_us, rng=None, drop=0.0, skew=0.0):
        """The normalized messages of ``[lo, hi)`` (exchange time), as a source would deliver them."""
        out = []
        for n, (t, kind, price, amount, fields) in enumerate(self.events[symbol]):
            if not lo <= t < hi or (rng is not None and rng.random() < drop):
                continue
            if rng is not None and rng.random() < skew:
                price = round(price * 1.01, 1)  # this source saw another value (a disagreement)
            local = t + latency_us
            common = {"symbol": symbol, "exchange": "deribit", "timestamp": stamp(t), "localTimestamp": stamp(local)}
            if kind == "trade":
                out.append(dict(common, type="trade", id="%s-%d" % (symbol, n), price=price, amount=amount,
                                side="buy" if n % 2 else "sell"))
            elif kind == "book":
                book = {"bids": [{"price": price - 0.5, "amount": amount}], "asks": [{"price": price + 0.5,
                                                                                      "amount": amount + 1}]}
                out.append(dict(common, type="book_snapshot", name="quote", depth=1, interval=0, **book))
            else:
                out.append(dict(common, type="derivative_ticker", **fields))
        return out

    def sampled(self, symbol, lo, hi, latency_us):
        """``quote_1m`` snapshots stamped at each minute boundary of ``(lo, hi]`` (the book before it)."""
        out, book = [], None
        events = [e for e in self.events[symbol] if e[1] == "book"]
        i = 0
        for boundary in range(lo - lo % MINUTE_US + MINUTE_US, hi + 1, MINUTE_US):
            while i < len(events) and events[i][0] < boundary:
                book = events[i]
                i += 1
            if book is None or boundary <= lo:
                continue
            _, _, price, amount, _ = book
            out.append({"type": "book_snapshot", "symbol": symbol, "exchange": "deribit", "name": "quote_1m",
                        "depth": 1, "interval": 60000, "timestamp": stamp(boundary),
                        "localTimestamp": stamp(boundary + latency_us),
                        "bids": [{"price": price - 0.5, "amount": amount}],
                        "asks": [{"price": price + 0.5, "amount": amount + 1}]})
        return out


def write_piece(market, source, segment, lo, hi, claim_from, claim_to, rng=None, drop=0.0, skew=0.0,
                end_reason=None, is_open=False):
    """One write: the rows of ``[lo, hi)`` and claims ``[claim_from, claim_to)`` for every stream."""
    converter = Converter(source)
    rows, claims = {}, []
    latency = 3_000 if source == "live" else 2_000
    for symbol in SYMBOLS:
        messages = market.messages(symbol, lo, hi, latency, rng, drop, skew) + market.sampled(symbol, lo, hi, latency)
        for message in messages:
            table, row = converter.convert(message)
            rows.setdefault(table, []).append(row)
        for data_type in TYPES:
            claims.append(Claim("deribit", symbol, data_type, source, "%s-%s" % (segment, symbol), claim_from,
                                claim_to, end_reason=end_reason, is_open=is_open))
    return rows, claims


def schedule(seed, minutes=100):
    """A random list of writes and windows: ``[("write", rows, claims) | ("window", start, end)]``."""
    rng = random.Random(seed)
    market = Market(rng, minutes)
    steps, now = [], T0 + rng.randrange(20, 40) * MINUTE_US
    lookback = rng.choice((30, 45, 60)) * MINUTE_US
    live_from = T0 + rng.randrange(5, 20) * MINUTE_US + rng.randrange(0, MINUTE_US)
    segment, written_to = 0, live_from
    while now < T0 + (minutes - 5) * MINUTE_US:
        # live grows batch by batch; a claim trails the newest row by a latency margin, and the next batch
        # also brings rows stamped before the previous batch's end that arrive late (inside that margin)
        step = rng.randrange(20 * US, 3 * MINUTE_US)
        margin = rng.randrange(1 * US, 10 * US)
        rows_from = max(live_from, written_to - margin)
        if rng.random() < 0.15:  # the connection drops: a hole, then a new segment
            steps.append(("write",) + write_piece(market, "live", "live%d" % segment, rows_from, now, live_from, now,
                                                  rng, drop=0.02, skew=0.02, end_reason="disconnect"))
            segment += 1
            live_from = written_to = now + rng.randrange(10 * US, 4 * MINUTE_US)
            now = live_from + step
        else:
            steps.append(("write",) + write_piece(market, "live", "live%d" % segment, rows_from, now, live_from,
                                                  now - margin, rng, drop=0.02, skew=0.02, is_open=True))
            written_to = now
            now += step
        if rng.random() < 0.35:  # a heal: replay of an earlier stretch, maybe over a hole
            a = T0 + rng.randrange(0, max(1, (now - T0) // MINUTE_US - 3)) * MINUTE_US
            b = min(now - 2 * MINUTE_US, a + rng.randrange(1, 40) * MINUTE_US)
            if b > a:
                outage = rng.random() < 0.2  # history itself has a hole inside
                if outage:
                    cut = a + (b - a) // 2
                    steps.append(("write",) + write_piece(market, "replay", "rp%d" % len(steps), a, cut, a, cut,
                                                          end_reason="disconnect"))
                else:
                    steps.append(("write",) + write_piece(market, "replay", "rp%d" % len(steps), a, b, a, b))
        end = now - now % MINUTE_US - MINUTE_US
        steps.append(("window", end - lookback, end))
    return steps


def fresh_full(tmp_path, writes, start, end, name):
    """A new database holding exactly ``writes``, published once from scratch: the reference."""
    store = Storage("sqlite:///%s" % (tmp_path / name))
    try:
        store.ensure_tables({"book_snapshot_1"})
        for rows, claims in writes:
            store.write(rows, claims)
        rebuild(store, STREAMS, start, end, full=True)
        return published(store)
    finally:
        store.close()


def published(store):
    """Everything a reader of the published tables sees: series rows, comparison rows and status counts."""
    models = store.models
    series = models["minute_series"]
    def rows_of(model):
        names = ["exchange", "symbol", "data_type", "minute"]
        # seq and revision tell the history of the passes, which a fresh recompute does not have
        names += sorted(f for f in model._meta.fields if f not in names + ["seq", "revision"])
        return sorted(model.select(*[model._meta.fields[n] for n in names]).tuples(), key=lambda row: row[:4])
    rows = rows_of(series)
    compare = rows_of(models["minute_compare"])
    status = sorted((s.exchange, s.symbol, s.data_type, s.window_start, s.window_end, s.minutes_replay,
                     s.minutes_live, s.minutes_missing, s.compared, s.disagreements, s.max_difference,
                     s.worst_minute, s.worst_column, s.error)
                    for s in models["stream_status"].select())
    return rows, compare, status


def assert_same(got, want, context):
    for part, (a, b) in zip(("minute_series", "minute_compare", "stream_status"), zip(got, want)):
        assert len(a) == len(b), "%s: %s has %d rows, the full recompute %d" % (context, part, len(a), len(b))
        for x, y in zip(a, b):
            same = all(u == v or (isinstance(u, float) and isinstance(v, float) and np.isnan(u) and np.isnan(v))
                       for u, v in zip(x, y))
            assert same, "%s: %s differs:\n incremental %r\n full        %r" % (context, part, x, y)


@pytest.mark.parametrize("seed", [pytest.param(s, marks=() if s == 0 else pytest.mark.slow) for s in range(EXAMPLES)])
def test_incremental_publishing_equals_a_full_recompute_on_random_histories(tmp_path, seed):
    store = Storage("sqlite:///%s" % (tmp_path / "incremental.db"))
    store.ensure_tables({"book_snapshot_1"})
    writes, checked = [], 0
    steps = schedule(seed)
    last = len(steps) - 1
    try:
        for i, step in enumerate(steps):
            if step[0] == "write":
                store.write(step[1], step[2])
                writes.append(step[1:])
                continue
            _, start, end = step
            rebuild(store, STREAMS, start, end)
            checked += 1
            if checked % 4 and i != last:  # each reference is a fresh database: check every fourth pass, and the last
                continue
            want = fresh_full(tmp_path, writes, start, end, "full%d.db" % i)
            assert_same(published(store), want, "seed %d, step %d, window %s .. %s" % (seed, i, iso(start), iso(end)))
    finally:
        store.close()
    assert checked > 10


@pytest.mark.slow
def test_a_reader_never_sees_half_a_publishing_pass(database_url, tmp_path):
    """Every stream's status row of one pass carries the same pass time, and the series rows of every stream
    match its status counts; a reader checking that in one snapshot, while passes run, never sees otherwise."""
    steps = [s for s in schedule(7) if s[0] == "write"]
    writer = Storage(database_url)
    reader = Storage(database_url)
    writer.ensure_tables({"book_snapshot_1"})
    start, end = T0, T0 + 100 * MINUTE_US
    seen, problems, done = [], [], threading.Event()

    def read_loop():
        status, series = reader.models["stream_status"], reader.models["minute_series"]
        while not done.is_set():
            with reader.snapshot():
                rows = list(status.select())
                counts = {}
                from peewee import fn
                for e, s, d, source, n in (series.select(series.exchange, series.symbol, series.data_type,
                                                         series.source, fn.COUNT(series.minute))
                                           .group_by(series.exchange, series.symbol, series.data_type,
                                                     series.source).tuples()):
                    counts[(e, s, d, source)] = n
            if not rows:
                continue
            passes = {r.rebuilt_at for r in rows}
            if len(rows) != len(STREAMS) or len(passes) != 1:
                problems.append("status of %d stream(s) from %d pass(es)" % (len(rows), len(passes)))
            for r in rows:
                key = (r.exchange, r.symbol, r.data_type)
                got = tuple(counts.get(key + (s,), 0) for s in ("replay", "live", "missing"))
                if got != (r.minutes_replay, r.minutes_live, r.minutes_missing):
                    problems.append("%s: series %r, status %r" % (key, got, (r.minutes_replay, r.minutes_live,
                                                                              r.minutes_missing)))
            seen.append(passes.pop())

    thread = threading.Thread(target=read_loop, name="reader", daemon=True)
    try:
        for n, (_, rows, claims) in enumerate(steps[:40]):
            writer.write(rows, claims)
            rebuild(writer, STREAMS, start, end, now_us=end + n, full=n % 5 == 0)
            if n == 0:
                thread.start()
        done.set()
        thread.join(30)
    finally:
        done.set()
        writer.close()
        reader.close()
    assert not problems, problems[:5]
    assert len(set(seen)) >= 5  # the reader did watch several passes go by


@pytest.mark.parametrize("data_type", ["trade", "quote_1m"])
def test_a_live_minute_is_aggregated_once_when_its_claims_pass_its_end(tmp_path, data_type):
    """A recorder writes every few seconds; each write marks what it changed. A minute its claims have not
    passed is not final: it is aggregated once, when they pass its end, not again after every write (a live
    minute of 500 options was aggregated about three times over). ``quote_1m`` rows are stamped at the end of the
    minute they describe: they must still be aggregated into that minute, once."""
    from gapless.minutes import MinuteStore
    rng = random.Random(7)
    market = Market(rng, 12)
    store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
    try:
        store.ensure_tables({"book_snapshot_1"})
        minutes = MinuteStore(store)
        key = ("deribit", "BTC-PERPETUAL", data_type, "live")
        computed = {}  # minute -> times aggregated
        live_from, written = T0 + 30 * US, T0 + 30 * US
        claim_end = live_from
        while written < T0 + 10 * MINUTE_US:
            now = written + rng.randrange(1 * US, 8 * US)
            rows, claims = write_piece(market, "live", "live0", written, now, live_from, now - 500_000, is_open=True)
            store.write(rows, claims)
            written, claim_end = now, now - 500_000
            result = minutes.refresh([key[:3]])
            for lo, hi in result.ranges.get(key, ()):
                for minute in range(lo, hi, MINUTE_US):
                    assert minute + MINUTE_US <= claim_end, "%s aggregated before its claims passed its end" % iso(
                        minute)
                    computed[minute] = computed.get(minute, 0) + 1
        assert len(computed) >= 8
        assert set(computed.values()) == {1}, {iso(m): n for m, n in computed.items() if n != 1}
        # and what was aggregated is what one computation of the same rows, written at once, says
        whole = Storage("sqlite:///%s" % (tmp_path / "whole.db"))
        try:
            whole.ensure_tables({"book_snapshot_1"})
            whole.write(*write_piece(market, "live", "live0", live_from, written, live_from, claim_end))
            MinuteStore(whole).refresh([key[:3]])
            final = claim_end - claim_end % MINUTE_US
            assert minute_aggs(store, key, final) == minute_aggs(whole, key, final)
            assert len(minute_aggs(store, key, final)) >= 5  # minutes with rows (a quiet one has none)
        finally:
            whole.close()
    finally:
        store.close()


def minute_aggs(store, key, before):
    cursor = store.db.execute_sql('SELECT * FROM "minute_agg" WHERE "exchange" = ? AND "symbol" = ? AND "data_type" = ? '
                                  'AND "source" = ? AND "minute" < ? ORDER BY "minute"', key + (before,))
    names = [d[0] for d in cursor.description]
    return [{k: v for k, v in zip(names, row) if k != "id" and not (isinstance(v, float) and v != v)}
            for row in cursor.fetchall()]


def test_a_dirty_mark_written_while_a_refresh_computes_is_left_for_the_next_one(store):
    """The minute store reads each stream's marks grouped by minute and consumes them up to the last id it read: a
    mark the recorder writes after that read (while the refresh computes) stays, and its minutes are computed by
    the next refresh. Other streams' marks are left alone."""
    from gapless.minutes import MinuteStore
    model = store.models["dirty_rows"]
    columns = ["exchange", "symbol", "data_type", "source", "lo", "hi"]
    key = ("deribit", "BTC-PERPETUAL", "trade", "live")
    other = ("deribit", "ETH-PERPETUAL", "trade", "live")
    marks = [key + (T0 + k * US, T0 + k * US + 1) for k in range(0, 150, 5)]  # three minutes, 30 writes
    with store.write_transaction():
        store.bulk_insert(model, columns, marks + [other + (T0, T0 + 1)])
    minutes = MinuteStore(store)
    pending = minutes.pending([key[:3]])
    ranges, last_id = pending[key]
    assert list(pending) == [key] and ranges == [(T0, T0 + 3 * MINUTE_US)]
    with store.write_transaction():  # the recorder, between the read and the consumption
        store.bulk_insert(model, columns, [key + (T0 + 10 * US, T0 + 11 * US)])
    with store.write_transaction():
        minutes._consume([(key, last_id)])
    left = minutes.pending()
    assert left[key][0] == [(T0, T0 + MINUTE_US)] and left[key][1] > last_id
    assert left[other][0] == [(T0, T0 + MINUTE_US)]
