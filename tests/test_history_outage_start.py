"""Issue 21, item 4: the minute after a hole in tardis' own recording is replay when history provably holds it.

After a ``disconnect`` in a replay, a claim starts at the segment's first line plus the skew bound (see
``REPLAY_START_MARGIN_US`` in :mod:`gapless.claims`); it used to be plus 10 s, so the first minute after every
history outage stayed missing forever wherever nothing recorded it live. Checked with the double (its history
outages: the recorder down in local ``[start, end)``, every event before the reconnect snapshot lost) against
the market model, never against gapless' own output.
"""
from datetime import timedelta

import pytest

from gapless.service import Gapless
from gapless.timeutil import iso
from tests.fake_tardis import FakeTardisMachine, ManualClock, MarketConfig, Outage
from tests.truth import whole_minutes
from tests.truth_checks import false_minutes
from tests.test_truth_regressions import SYMBOLS, at, dt, minutes

TYPES = ["trade", "trade_bar_1m", "quote_1m"]


def _heal(tmp_path, outages, skew_ms):
    clock = ManualClock(at("00:50"))
    market = MarketConfig(trade_rate=2.0, skew_ms=skew_ms)
    with FakeTardisMachine(clock=clock, market=market, replay_outages=outages,
                           availability_delay=timedelta(seconds=20)) as tm:
        gapless = Gapless("deribit", SYMBOLS, TYPES, lookback="45m", database_url="sqlite:///%s" % (
            tmp_path / "g.db"), tardis_url=tm.http_url, tardis_ws_url=tm.ws_url, history_delay="1m",
                          now=clock.now_us)
        try:
            gapless.heal()
            frames, gaps = gapless.series(), gapless.gaps()
        finally:
            gapless.stop()
        return tm, frames, gaps


def _reason(gaps, key, minute):
    """The reason of the gap of stream ``key`` that holds ``minute`` (``hh:mm``), or None."""
    t = iso(at(minute))
    found = [g["reason"] for g in gaps if (g["symbol"], g["data_type"]) == key and g["start"] <= t < g["end"]]
    return found[0] if found else None


@pytest.mark.parametrize("skew_ms", [0, -2000, 2000])
def test_the_minute_after_a_history_outage_is_replay_when_history_holds_all_of_it(skew_ms, tmp_path):
    back = Outage(dt(at("00:10:20")), dt(at("00:14:55")))  # the recorder is back 5 s before 00:15
    exact = Outage(dt(at("00:20:00")), dt(at("00:25:00")))  # back exactly at 00:25 (local time)
    mid = Outage(dt(at("00:30:00")), dt(at("00:33:53")))  # back in the middle of 00:33
    tm, frames, gaps = _heal(tmp_path, [back, exact, mid], skew_ms)
    assert false_minutes(tm, frames) == []
    # the double's own account of what history holds whole (exchange minutes, raw events)
    whole = {iso(m)[11:16] for m in whole_minutes(tm.market.config, at("00:00"), at("00:48"),
                                                  outages=[back, exact, mid])}
    assert {"00:15", "00:34", "00:26"} <= whole and not {"00:14", "00:33"} & whole
    for key, frame in frames.items():
        replay = minutes(frame, "replay")
        # every event stamped from 00:15 on is in history (the first line after the outage arrived before
        # 00:14:58 local, 2 s before it): the minute is replay, with the true values (false_minutes above)
        assert "00:15" in replay, (key, minutes(frame, "missing"))
        # mid-minute: the minute the recorder came back in is partial, the next one whole
        assert "00:33" not in replay and _reason(gaps, key, "00:33") == "history_outage", key
        assert "00:34" in replay, (key, minutes(frame, "missing"))
        assert "00:14" not in replay and _reason(gaps, key, "00:14") == "history_outage", key
        # back exactly at 00:25 local: what reached the recorder from then on proves trades only from 00:25:02
        # (the skew bound), so 00:25 stays missing (with no skew the double even lost 00:25:00.000-00:25:00.1xx,
        # before its reconnect snapshot); a book is known from the snapshot's own stamp, 00:24:58.1xx when the
        # local clock runs 2 s ahead; 00:26 is replay
        if key[1] == "quote_1m" and skew_ms == 2000:
            assert "00:25" in replay, (key, minutes(frame, "missing"))
        else:
            assert "00:25" not in replay and _reason(gaps, key, "00:25") == "history_outage", key
        assert "00:26" in replay, (key, minutes(frame, "missing"))
    if skew_ms == 0:
        assert "00:25" not in whole  # the double lost the first 100-150 ms of 00:25: it must stay missing
