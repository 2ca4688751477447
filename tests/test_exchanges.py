"""Several exchanges in one service: one recorder (one websocket) and one history horizon per exchange,
the series healed for each, status grouped by exchange, and a dead recorder of either one ends the service.

The double serves every exchange it knows from one market model; the truth comes from that model.
"""
import threading
from datetime import datetime, timedelta, timezone

import pytest

from gapless.cli import main
from gapless.config import load_settings
from gapless.exceptions import ConfigurationError
from gapless.service import Gapless
from gapless.status import format_status
from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig, Outage
from tests.support import wait_until
from tests.truth_checks import false_minutes

START = datetime(2026, 11, 25, 0, 20, tzinfo=timezone.utc)
STREAMS = "deribit:BTC-PERPETUAL,ETH-PERPETUAL:trade,quote_1m;binance-futures:BTCUSDT:trade,trade_bar_1m"
EXPECTED = {("deribit", "BTC-PERPETUAL", "trade"), ("deribit", "BTC-PERPETUAL", "quote_1m"),
            ("deribit", "ETH-PERPETUAL", "trade"), ("deribit", "ETH-PERPETUAL", "quote_1m"),
            ("binance-futures", "BTCUSDT", "trade"), ("binance-futures", "BTCUSDT", "trade_bar_1m")}


def at(hh_mm_ss):
    return datetime.strptime("2026-11-25T" + hh_mm_ss, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)


def make_service(tm, database_url, **options):
    options.setdefault("recorder_options", {"backoff_base": 0.05, "backoff_cap": 0.5})
    return Gapless(streams=STREAMS, lookback="8m", history_delay="10s", rebuild_interval="0.5s", workers=0,
                   database_url=database_url, tardis_url=tm.http_url, tardis_ws_url=tm.ws_url, now=tm.clock.now_us,
                   **options)


def exchange_of(connection):
    """The one exchange a websocket connection asked for."""
    (exchange,) = {option["exchange"] for option in connection.options}
    return exchange


def minute_sources(frame):
    return {t.strftime("%H:%M"): s for t, s in frame["source"].items()}


@pytest.mark.slow
def test_two_exchanges_record_both_heal_both_and_report_them_separately(tmp_path):
    clock = FakeClock(start=START, speed=30.0)
    outage = Outage(at("00:21:10"), at("00:21:40"))  # every live connection drops: both exchanges lose 00:21
    database_url = "sqlite:///%s" % (tmp_path / "gapless.db")
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=2.0, trade_rate=1.0), live_outages=[outage],
                           availability_delay=timedelta(seconds=5)) as tm:
        gapless = make_service(tm, database_url)
        assert len(gapless.feeds) == 2 and gapless.feeds[0].recorder is not gapless.feeds[1].recorder
        with gapless:
            # one websocket per exchange, each asking only for its own streams
            wait_until(lambda: {exchange_of(c) for c in tm.connections} >= {"deribit", "binance-futures"},
                       timeout=30, message="a connection per exchange")
            for connection in tm.connections:
                symbols = {s for option in connection.options for s in option["symbols"]}
                assert symbols == ({"BTCUSDT"} if exchange_of(connection) == "binance-futures"
                                   else {"BTC-PERPETUAL", "ETH-PERPETUAL"}), connection.options
            stored = lambda exchange: [r for r in gapless.storage.coverage_rows(source="live")  # noqa: E731
                                       if r["exchange"] == exchange and r["end_reason"] == "disconnect"]
            wait_until(lambda: stored("deribit") and stored("binance-futures"), timeout=40,
                       message="both recorders saw the outage")

            def healed():
                frames = gapless.series()
                return (set(frames) == EXPECTED and gapless.is_gapless(frames)
                        and all(minute_sources(f).get("00:21") == "replay" for f in frames.values()))
            wait_until(healed, timeout=60, message="both exchanges healed by replay over the outage")
            frames = gapless.series()
            status = gapless.status()
            # each exchange has its own horizon, measured against the same double (5 s delay)
            horizons = {feed.exchange: feed.horizon.state() for feed in gapless.feeds}
    assert set(horizons) == {"deribit", "binance-futures"}
    assert all(h["measured_at"] is not None and h["delay"] >= 5_000_000 for h in horizons.values()), horizons
    # every served minute of both exchanges is what the market model says happened
    for exchange in ("deribit", "binance-futures"):
        part = {key[1:]: frame for key, frame in frames.items() if key[0] == exchange}
        assert false_minutes(tm, part, exchange=exchange) == []
        assert len(part) == (4 if exchange == "deribit" else 2)
    # status: one entry per exchange, streams of each under their exchange, no gaps
    assert [e["exchange"] for e in status["exchanges"]] == ["deribit", "binance-futures"]
    assert {(s["exchange"], s["symbol"], s["data_type"]) for s in status["streams"]} == EXPECTED
    assert all(s["gaps"] == [] for s in status["streams"]), status
    text = format_status(status)
    assert text.index("deribit") < text.index("binance-futures BTCUSDT trade")
    assert "binance-futures" in text.split("\n")[0] or any(line.startswith("binance-futures") for line in
                                                         text.splitlines())


@pytest.mark.slow
def test_the_command_line_reports_each_exchange_of_gapless_streams(tmp_path, capsys, monkeypatch, isolated_cli):
    clock = FakeClock(start=START, speed=30.0)
    database_url = "sqlite:///%s" % (tmp_path / "gapless.db")
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=2.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=5)) as tm:
        gapless = make_service(tm, database_url)
        with gapless:
            wait_until(lambda: gapless.last_rebuild is not None and gapless.last_download is not None, timeout=40,
                       message="a pass")
        now = clock.now()
    monkeypatch.setenv("GAPLESS_STREAMS", STREAMS)
    code = main(["status", "--json", "--database", database_url, "--lookback", "8m"], now=lambda: now)
    assert code == 0
    import json
    report = json.loads(capsys.readouterr().out)
    assert [e["exchange"] for e in report["exchanges"]] == ["deribit", "binance-futures"]
    assert {(s["exchange"], s["symbol"], s["data_type"]) for s in report["streams"]} == EXPECTED
    # the single-exchange flags are the shorthand: they win over GAPLESS_STREAMS
    code = main(["status", "--json", "--database", database_url, "--lookback", "8m", "--exchange",
                 "binance-futures", "--symbols", "BTCUSDT", "--data-types", "trade"], now=lambda: now)
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [(s["exchange"], s["symbol"], s["data_type"]) for s in report["streams"]] == [
        ("binance-futures", "BTCUSDT", "trade")]
    # a picture of both exchanges
    picture = tmp_path / "both.png"
    assert main(["plot", "--database", database_url, "--lookback", "8m", "--out", str(picture)],
                now=lambda: now) == 0
    assert "6 stream(s)" in capsys.readouterr().out


def test_gapless_streams_is_parsed_strictly():
    settings = load_settings(environ={"GAPLESS_STREAMS": STREAMS}, config_dir="/nonexistent", dotenv_path=None)
    assert [(g.exchange, g.symbols, g.data_types) for g in settings.streams] == [
        ("deribit", ("BTC-PERPETUAL", "ETH-PERPETUAL"), ("trade", "quote_1m")),
        ("binance-futures", ("BTCUSDT",), ("trade", "trade_bar_1m"))]
    assert settings.exchange == "deribit"  # the first group is the single-exchange view
    for bad, named in (("deribit:BTC-PERPETUAL", "is not exchange:symbols:data_types"),
                       ("Deribit!:BTC:trade", "is not an exchange name"),
                       ("deribit:BTC-PERPETUAL:quotes", "quotes")):
        with pytest.raises(ConfigurationError, match="GAPLESS_STREAMS") as caught:
            load_settings(environ={"GAPLESS_STREAMS": bad}, config_dir="/nonexistent", dotenv_path=None)
        assert named in str(caught.value)


def test_a_bad_gapless_streams_exits_2_naming_it(tmp_path, capsys, monkeypatch, isolated_cli):
    monkeypatch.setenv("GAPLESS_STREAMS", "deribit:BTC-PERPETUAL:quote_1m;binance-futures::trade")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["status", "--database", "sqlite:///%s" % (tmp_path / "x.db")]) == 2
    assert "GAPLESS_STREAMS" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created
    # a type without a minute series is refused for series, accepted for download
    assert main(["status", "--streams", "deribit:BTC-PERPETUAL:quote_1m;binance-futures:BTCUSDT:book_change",
                 "--database", "sqlite:///%s" % (tmp_path / "x.db")]) == 2
    err = capsys.readouterr().err
    assert "binance-futures" in err and "book_change" in err


def test_a_dead_recorder_of_either_exchange_ends_the_service_non_zero(tardis, tmp_path):
    gapless = make_service(tardis, "sqlite:///%s" % (tmp_path / "gapless.db"))
    result = {}
    runner = threading.Thread(target=lambda: result.update(status=gapless.run(install_signals=False)),
                              name="test-service", daemon=True)
    runner.start()
    try:
        wait_until(lambda: all(f.recorder.health()["connected"] for f in gapless.feeds), timeout=30,
                   message="both recorders connected")
        gapless.feeds[1].recorder.stop()  # binance-futures' thread ends for real; deribit's lives on
        assert not gapless.feeds[1].recorder.is_alive() and gapless.feeds[0].recorder.is_alive()
        runner.join(30)
    finally:
        gapless.stop_event.set()
        runner.join(15)
    assert result["status"] == 3
