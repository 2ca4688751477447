"""Regenerate docs/coverage.png: a real service run against the fake tardis-machine of the tests.

    python docs/example_picture.py [docs/coverage.png]

The double's clock runs 30x real time from 00:20 of a UTC day; the service keeps a 40-minute lookback
of BTC-PERPETUAL quote_1m and trade with history 5 minutes behind. History has an exchange outage at
00:08 (replay cannot deliver it and the recorder was not running yet: a gap, reason ``disconnect``);
the live stream has an exchange disconnect at 00:31 (healed: replay covers it once history reaches it);
the live server is down from 00:36 to 00:37:30 (newer than history: a gap, reason ``downtime``).
The newest minutes are live. Takes about 45 s.
"""
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gapless.service import Gapless  # noqa: E402
from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig, Outage  # noqa: E402


def at(hh_mm_ss):
    return datetime.strptime("2026-11-25T" + hh_mm_ss, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)


def main(out="docs/coverage.png"):
    import tempfile
    clock = FakeClock(start=at("00:20:00"), speed=30.0)
    with tempfile.TemporaryDirectory() as tmp, FakeTardisMachine(
            clock=clock, market=MarketConfig(book_rate=2.0, trade_rate=1.0), availability_delay=timedelta(minutes=5),
            replay_outages=[Outage(at("00:08:10"), at("00:09:40"))],
            live_outages=[Outage(at("00:31:10"), at("00:31:50"))]) as tardis:
        gapless = Gapless("deribit", ["BTC-PERPETUAL"], ["quote_1m", "trade"], lookback="40m",
                          database_url="sqlite:///%s/gapless.db" % tmp, tardis_url=tardis.http_url,
                          tardis_ws_url=tardis.ws_url, history_delay="5m", rebuild_interval="2s", now=clock.now_us,
                          recorder_options={"backoff_base": 0.05, "backoff_cap": 0.5})
        with gapless:
            clock.wait_until(int(at("00:36:00").timestamp() * 1e6))
            tardis.stop_ws()
            clock.wait_until(int(at("00:37:30").timestamp() * 1e6))
            tardis.start_ws()
            clock.wait_until(int(at("00:40:30").timestamp() * 1e6))
            gapless.heal(download=False)
            picture = gapless.plot(out)
        print("wrote %s (%dx%d px, %d bytes)" % (out, picture.width, picture.height, Path(out).stat().st_size))
        for gap in gapless.gaps():
            print("gap", gap["data_type"], gap["start"], gap["end"], gap["reason"])


if __name__ == "__main__":
    main(*sys.argv[1:])
