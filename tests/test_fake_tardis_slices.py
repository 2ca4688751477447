"""The double's slice cache: a minute asked before it was available, from an upstream that answers such
minutes EMPTY, stays empty for that filter set for good (tardis-machine.md, "The slice cache")."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import requests

from tests.fake_tardis import FakeTardisMachine, ManualClock
from tests.fake_tardis.render import parse_ts_us
from tests.truth import trades_truth

UTC = timezone.utc
DAY = datetime(2026, 11, 25, tzinfo=UTC)
MINUTE = 60_000_000
BTC = ["BTC-PERPETUAL"]


def _opts(frm, to, types=("trade",), symbols=BTC):
    return {"exchange": "deribit", "symbols": list(symbols), "from": frm.isoformat(), "to": to.isoformat(),
            "dataTypes": list(types), "withDisconnectMessages": True}


def _ask(tm, options):
    body = requests.get(f"{tm.http_url}/replay-normalized", params={"options": json.dumps(options)},
                        timeout=10).content.decode()
    return [json.loads(x) for x in body.splitlines() if x.endswith("}")]


def _trade_minutes(lines, symbol="BTC-PERPETUAL"):
    minutes = {}
    for m in lines:
        if m["type"] == "trade" and m["symbol"] == symbol:
            minute = parse_ts_us(m["localTimestamp"]) // MINUTE * MINUTE
            minutes[minute] = minutes.get(minute, 0) + 1
    return minutes


def test_a_minute_asked_too_early_in_empty_mode_stays_empty_for_its_filter_set_only():
    clock = ManualClock(DAY + timedelta(minutes=10, seconds=30))
    with FakeTardisMachine(clock=clock, availability_delay=timedelta(minutes=5), availability_mode="empty") as tm:
        early = _ask(tm, _opts(DAY + timedelta(minutes=3), DAY + timedelta(minutes=8)))
        # whole minutes only: 00:05 is not complete at 00:05:30, so nothing of it is sent
        assert max(parse_ts_us(m["localTimestamp"]) for m in early) < parse_ts_us("2026-11-25T00:05:00Z")
        start = int((DAY + timedelta(minutes=5)).timestamp()) * 1_000_000
        poisoned = [start, start + MINUTE, start + 2 * MINUTE]
        assert tm.slices.poisoned("deribit", ["trades"], BTC) == poisoned
        clock.advance(20 * 60)  # upstream has had those minutes for a long time now
        again = _trade_minutes(_ask(tm, _opts(DAY + timedelta(minutes=3), DAY + timedelta(minutes=9))))
        true = {m: len(trades_truth(tm.market, "deribit", "BTC-PERPETUAL", m, m + MINUTE)) for m in range(
            start - 2 * MINUTE, start + 4 * MINUTE, MINUTE)}
        assert all(true[m] > 0 for m in true)  # a busy market: every minute has trades
        assert all(m not in again for m in poisoned)  # the cached empty answer, a quiet market to the eye
        assert again[start + 3 * MINUTE] > 0 and again[start - MINUTE] > 0
        # another filter set (one more symbol, one no exchange lists) is fetched fresh: every trade is there
        fresh = _trade_minutes(_ask(tm, _opts(DAY + timedelta(minutes=3), DAY + timedelta(minutes=9),
                                              symbols=BTC + ["GAPLESS-CHECK-1"])))
        assert all(fresh[m] > 0 for m in poisoned)
        assert not [m for m in _ask(tm, _opts(DAY, DAY + timedelta(minutes=9), symbols=["GAPLESS-CHECK-2"]))
                    if m["type"] != "disconnect"]  # an unlisted symbol has no data at all
        # another channel of the same symbols is another filter set too
        assert tm.slices.poisoned("deribit", ["book"], BTC) == []
        assert tm.expected_replay(_opts(DAY + timedelta(minutes=3), DAY + timedelta(minutes=9))) == \
            _ask(tm, _opts(DAY + timedelta(minutes=3), DAY + timedelta(minutes=9)))
        tm.clear_slice_cache()
        cleared = _trade_minutes(_ask(tm, _opts(DAY + timedelta(minutes=3), DAY + timedelta(minutes=9))))
        assert all(cleared[m] > 0 for m in poisoned)


def test_error_mode_caches_nothing_and_a_poisoned_minute_leaves_a_book_without_its_changes():
    clock = ManualClock(DAY + timedelta(minutes=10))
    with FakeTardisMachine(clock=clock, availability_delay=timedelta(minutes=5)) as tm:
        _ask(tm, _opts(DAY + timedelta(minutes=3), DAY + timedelta(minutes=8), types=("quote",)))
        assert tm.slices.poisoned("deribit", ["book"], BTC) == []
        tm.availability_mode = "empty"
        _ask(tm, _opts(DAY + timedelta(minutes=3), DAY + timedelta(minutes=8), types=("quote",)))
        assert tm.slices.poisoned("deribit", ["book"], BTC)
        clock.advance(20 * 60)
        options = _opts(DAY, DAY + timedelta(minutes=20), types=("book_snapshot_5_1m",))
        quotes = [m for m in _ask(tm, options) if m["type"] == "book_snapshot"]
        truth = [m for m in tm.expected_replay(dict(options, symbols=BTC + ["GAPLESS-X"]))
                 if m["type"] == "book_snapshot"]
        # the filter set of quote is the book channel's, like book_snapshot_5_1m's: the book after the
        # poisoned minutes was rebuilt without their changes
        late = lambda ms: [(m["timestamp"], m["bids"], m["asks"]) for m in ms
                           if m["timestamp"] >= "2026-11-25T00:09:00"]
        assert late(quotes) != late(truth)
