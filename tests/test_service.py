"""The gapless service: stitching, healing, the history horizon, the library API, and the process itself.

The double's clock runs 30x faster than real time here, so minutes of market time pass in seconds.
"""
import json
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from gapless import GapWarning, get_data_without_gap
from gapless.service import Gapless
from gapless.storage import Storage
from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig, Outage
from tests.http_stubs import HeldHealthCheck
from tests.service_process import run_status, start_service
from tests.support import live_rows_by_table, sent_rows_by_table, wait_until

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
TYPES = ["quote_1m", "trade_bar_1m", "trade"]
SPEED = 30.0
START = datetime(2026, 11, 25, 0, 20, tzinfo=timezone.utc)


def at(hh_mm_ss):
    return datetime.strptime("2026-11-25T" + hh_mm_ss, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)


@pytest.fixture
def fast_clock():
    return FakeClock(start=START, speed=SPEED)


@pytest.fixture
def fast_tardis(fast_clock):
    with FakeTardisMachine(clock=fast_clock, market=MarketConfig(book_rate=2.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=5)) as machine:
        yield machine


def make_gapless(database_url, tardis, **options):
    options.setdefault("lookback", "10m")
    options.setdefault("history_delay", "10s")
    options.setdefault("rebuild_interval", "0.5s")
    options.setdefault("workers", 0)
    options.setdefault("recorder_options", {"backoff_base": 0.05, "backoff_cap": 0.5})
    return Gapless("deribit", SYMBOLS, options.pop("data_types", TYPES), database_url=database_url,
                   tardis_url=tardis.http_url, tardis_ws_url=tardis.ws_url, now=tardis.clock.now_us, **options)


def sources_by_minute(frame):
    return {t.strftime("%H:%M"): s for t, s in frame["source"].items()}


def test_a_fresh_start_reports_gaps_then_becomes_gapless_with_replay_then_live(fast_tardis, database_url, tmp_path):
    export = tmp_path / "series.parquet"
    # history 90 s behind: the newest minutes can only be live (a server that refuses minutes not available
    # yet lets requests reach past the edge, so with a few seconds' lag replay would cover the whole window)
    fast_tardis.availability_delay = timedelta(seconds=90)
    gapless = make_gapless(database_url, fast_tardis, export=str(export))
    with gapless:
        wait_until(lambda: gapless.last_rebuild is not None, message="first rebuild")
        first = gapless.status()
        assert not all(s["gapless"] for s in first["streams"])
        reasons = {g["reason"] for s in first["streams"] for g in s["gaps"]}
        # before the first download: history cannot deliver the newest minutes yet, or the download is due
        # (which one depends on when the status is read against the measured delay)
        assert reasons and reasons <= {"not_yet_available", "not_downloaded"}, reasons
        # the series and the status of one moment (at 30x a minute is 2 s: the window moves between two reads,
        # and its newest minute may wait for the recorder's next commit)
        def both_gapless():
            frames, status = gapless.series(), gapless.status()
            whole = gapless.is_gapless(frames) and all(s["gapless"] and not s["gaps"] for s in status["streams"])
            return (frames, status) if whole else None
        frames, status = wait_until(both_gapless, timeout=30, message="gapless")
    for key, frame in frames.items():
        assert not frame["missing"].any(), key
        sources = list(frame["source"])
        # history first, recorded live data after it: replay up to the watermark, then live
        assert sources[0] == "replay" and set(sources) <= {"replay", "live"}
        assert sources == sorted(sources, key=lambda s: s == "live"), key
        assert "live" in sources, key
    # the live minutes are the newest: after the recording started
    live_minutes = [t for t, s in frames[("BTC-PERPETUAL", "trade")]["source"].items() if s == "live"]
    assert min(live_minutes) >= pd.Timestamp(START)
    # the export is the published series, one row per (symbol, data type, minute), written atomically
    exported = pd.read_parquet(export)
    assert set(exported.groupby(["symbol", "data_type"]).size()) == {10}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".series.parquet")]  # no temp file left


@pytest.mark.slow
def test_live_and_replay_agree_and_a_forced_disagreement_is_reported(fast_tardis, database_url):
    fast_tardis.perturb("live", "BTC-PERPETUAL", at("00:21:00"), factor=1.01)
    gapless = make_gapless(database_url, fast_tardis, data_types=["trade", "trade_bar_1m"])
    with gapless:
        # wait until history covers minute 00:21 too, so both sources know it
        wait_until(lambda: gapless.last_rebuild is not None and any(
            c.compared >= 2 for c in gapless.last_rebuild.comparisons.values()), timeout=40,
            message="overlap of replay and live")
        wait_until(lambda: gapless.status()["streams"][0]["disagreements"] is not None, message="status")
        comparisons = gapless.last_rebuild.comparisons
        status = {(s["symbol"], s["data_type"]): s["disagreements"] for s in gapless.status()["streams"]}
    for key, comparison in comparisons.items():
        if key[0] == "ETH-PERPETUAL":
            assert comparison.compared >= 1 and comparison.disagreements == 0, key
    btc = comparisons[("BTC-PERPETUAL", "trade")]
    assert btc.disagreements == 1 and btc.worst_minute == pd.Timestamp(at("00:21:00"))
    assert btc.max_difference > 100  # 1 % of a BTC price
    assert status[("BTC-PERPETUAL", "trade")]["count"] == 1


@pytest.mark.slow
def test_a_live_outage_is_healed_by_replay(fast_clock, database_url):
    outage = Outage(at("00:21:10"), at("00:21:40"))
    # history 90 s behind: at 00:23 it holds 00:20 but not the outage minute (a few seconds behind, replay would
    # heal it at once)
    with FakeTardisMachine(clock=fast_clock, live_outages=[outage], availability_delay=timedelta(seconds=90)) as tm:
        gapless = make_gapless(database_url, tm, data_types=["trade", "quote_1m"])
        with gapless:
            wait_until(lambda: any(r["end_reason"] == "disconnect" for r in gapless.storage.coverage_rows(source="live")),
                       timeout=30, message="live disconnect")
            # before history reaches it, the outage minute is a gap
            wait_until(lambda: tm.clock.now_us() > 1795566180000000, message="00:23")  # 00:23:00
            gaps = gapless.gaps()
            assert any(g["start"] == "2026-11-25T00:21:00Z" and g["reason"] == "disconnect" for g in gaps), gaps
            wait_until(lambda: "00:21" in (lambda f: [m for m, s in sources_by_minute(f).items() if s == "replay"])(
                gapless.series()[("BTC-PERPETUAL", "trade")]), timeout=30, message="healed by replay")
            frames = gapless.series()
    for key, frame in frames.items():
        assert sources_by_minute(frame)["00:21"] == "replay", key


@pytest.mark.slow
def test_an_outage_in_history_is_filled_from_live_data(fast_clock, database_url):
    outage = Outage(at("00:21:10"), at("00:21:40"))
    with FakeTardisMachine(clock=fast_clock, replay_outages=[outage], availability_delay=timedelta(seconds=5)) as tm:
        gapless = make_gapless(database_url, tm, data_types=["trade", "trade_bar_1m"])
        with gapless:
            wait_until(lambda: any(r["end_reason"] == "disconnect" for r in gapless.storage.coverage_rows(source="replay")),
                       timeout=40, message="history with its outage downloaded")
            # gapless once the window holds the outage's minute (history a few seconds behind gets there early)
            wait_until(lambda: tm.clock.now() > at("00:22:30") and gapless.is_gapless(), timeout=30, message="gapless")
            frames = gapless.series()
    for key, frame in frames.items():
        sources = sources_by_minute(frame)
        assert sources["00:21"] == "live", key  # the recorder was connected then
        assert sources["00:20"] == "replay", key


@pytest.mark.slow
def test_the_history_delay_adapts_to_what_the_server_refuses(fast_clock, tmp_path):
    # the server has history only up to now - 3 min; gapless starts believing 10 s
    with FakeTardisMachine(clock=fast_clock, availability_delay=timedelta(minutes=3)) as tm:
        gapless = make_gapless("sqlite:///%s" % (tmp_path / "g.db"), tm, data_types=["trade"])
        with gapless:
            wait_until(lambda: gapless.horizon.state()["delay"] >= 3 * 60 * 10 ** 6, timeout=30,
                       message="delay learned")
            learned = len(tm.requests)
            wait_until(lambda: len(tm.requests) >= learned + 6, timeout=30, message="more passes")
            state = gapless.horizon.state()
        assert any(r.error_line for r in tm.requests[:learned])
        # the server refuses minutes not available yet: requests may reach past the edge and be refused there
        # (lines prove what they reach); that refusal is expected and the delay stays what the server shows
        assert state["mode"] == "error"
        assert 3 * 60 * 10 ** 6 <= state["delay"] <= 3 * 60 * 10 ** 6 + 60 * 10 ** 6, state
        assert gapless.status()["history_delay_minutes"] >= 3


@pytest.mark.slow
def test_get_data_without_gap_returns_a_gapless_frame(fast_tardis, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GapWarning)
        frames = get_data_without_gap("deribit", SYMBOLS, ["quote_1m", "trade_bar_1m"], lookback="8m",
                                      recording_warmup_seconds=60, database_url="sqlite:///%s" % (tmp_path / "g.db"),
                                      tardis_url=fast_tardis.http_url, tardis_ws_url=fast_tardis.ws_url,
                                      history_delay="10s", now=fast_tardis.clock.now_us, poll_seconds=0.2)
    assert set(frames) == {(s, d) for s in SYMBOLS for d in ("quote_1m", "trade_bar_1m")}
    for key, frame in frames.items():
        assert len(frame) == 8 and not frame["missing"].any(), key
        assert str(frame.index.tz) == "UTC"
        assert set(frame["source"]) <= {"replay", "live"}
    assert all(c.closed_at is not None for c in fast_tardis.connections)  # it stopped what it started


def test_get_data_without_gap_with_a_short_warmup_flags_missing_minutes_and_warns(fast_tardis, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fast_tardis.availability_delay = timedelta(minutes=3)  # the newest minutes: history cannot have them yet
    with pytest.warns(GapWarning, match="missing minute"):
        frames = get_data_without_gap("deribit", ["BTC-PERPETUAL"], ["trade"], lookback="8m",
                                      recording_warmup_seconds=0.5, database_url="sqlite:///%s" % (tmp_path / "g.db"),
                                      tardis_url=fast_tardis.http_url, tardis_ws_url=fast_tardis.ws_url,
                                      history_delay="10s", now=fast_tardis.clock.now_us, poll_seconds=0.1)
    frame = frames[("BTC-PERPETUAL", "trade")]
    assert frame["missing"].any()
    missing = frame[frame["missing"]]
    assert (missing["source"] == "missing").all() and missing[["close", "volume"]].isna().all().all()


# -- the service as a process -------------------------------------------------------------------------
def all_gapless(tardis, database_url, tmp_path):
    status = run_status(tardis, database_url, tmp_path, must_work=False)
    return status is not None and all(s["gapless"] for s in status["streams"])


@pytest.mark.slow
def test_sigkill_then_restart_reports_the_downtime_heals_it_and_downloads_only_what_was_missed(
        fast_tardis, database_url, tmp_path):
    service = start_service(fast_tardis, database_url, tmp_path)
    try:
        wait_until(lambda: all_gapless(fast_tardis, database_url, tmp_path), timeout=60,
                   message="gapless before the kill")
    finally:
        service.kill()
        service.wait(10)
    killed_at = fast_tardis.clock.now_us()
    requests_before = len(fast_tardis.requests)
    covered_before = {}
    store = Storage(database_url)
    for symbol in SYMBOLS:
        for data_type in TYPES:
            covered_before[(symbol, data_type)] = store.covered("deribit", symbol, data_type, "replay")
    store.close()
    # down for about three market minutes
    wait_until(lambda: fast_tardis.clock.now_us() > killed_at + 180 * 10 ** 6, message="downtime")
    service = start_service(fast_tardis, database_url, tmp_path)
    try:
        status = wait_until(lambda: (lambda s: s if any(g["reason"] == "downtime" for st in s["streams"]
                                                         for g in st["gaps"]) else None)(
            run_status(fast_tardis, database_url, tmp_path, "gaps")), timeout=30, message="downtime gap reported")
        assert status["streams"][0]["gaps"][0]["minutes"] >= 2
        wait_until(lambda: all_gapless(fast_tardis, database_url, tmp_path), timeout=60, message="healed")
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(15) == 0
    # after the restart: book-derived types from 00:00 (the 00:00 rule), everything else only from
    # where replay coverage ended before the kill
    for record in fast_tardis.requests[requests_before:]:
        data_types = record.options[0]["dataTypes"]
        start = int(record.from_.timestamp() * 10 ** 6)
        if any(s.startswith("GAPLESS-") for s in record.options[0]["symbols"]) or not set(data_types) <= set(TYPES):
            continue  # a history-delay probe or a check of silent minutes (filter sets of their own, or raw types)
        if data_types == ["quote_1m"]:
            assert record.from_.strftime("%H:%M") == "00:00"
            continue
        for symbol in record.options[0]["symbols"]:
            for data_type in data_types:
                ends = [b for a, b in covered_before[(symbol, data_type)]]
                assert start >= max(ends) - 60 * 10 ** 6, (record.from_, symbol, data_type)


@pytest.mark.slow
def test_sigterm_under_load_exits_0_quickly_with_every_received_frame_stored(clock, tmp_path):
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=300.0, trade_rate=100.0),
                           availability_delay=timedelta(seconds=5)) as tardis:
        database_url = "sqlite:///%s" % (tmp_path / "g.db")
        service = start_service(tardis, database_url, tmp_path, GAPLESS_DATA_TYPES="quote,trade",
                                GAPLESS_LOOKBACK="5m")
        try:
            wait_until(lambda: tardis.connections and len(tardis.connections[0].sent) > 5000, timeout=60,
                       message="load")
            began = time.monotonic()
            service.send_signal(signal.SIGTERM)
            code = service.wait(15)
            elapsed = time.monotonic() - began
        finally:
            if service.poll() is None:
                service.kill()
        log = Path(service.log_path).read_text()
        assert code == 0, log[-3000:]
        assert elapsed < 10, elapsed
        store = Storage(database_url)
        stored = live_rows_by_table(store)
        store.close()
        (connection,) = tardis.connections
        sent = sent_rows_by_table([connection])
        stored_count = sum(len(v) for v in stored.values())
        # what was stored is exactly a prefix of what was sent: nothing received was dropped
        from types import SimpleNamespace
        prefix = sent_rows_by_table([SimpleNamespace(sent=connection.sent[:stored_count])])
        assert {t: Counter(v) for t, v in stored.items()} == {t: Counter(v) for t, v in prefix.items()}
        assert stored_count > 1000  # under load: the recorder had received this much when stopped
        # the recorder's own account at its stop: every frame it received was stored
        import re
        final = re.search(r"frames received (\d+), rows stored (\d+), duplicates (\d+)", log)
        assert final, log[-2000:]
        assert int(final.group(1)) == int(final.group(2)) + int(final.group(3)) == stored_count
        del sent


def test_sigterm_while_the_service_starts_exits_0(tardis, tmp_path):
    """A stop asked for before the service is up (here: during its health check) is a clean stop with exit 0,
    not a death by SIGTERM's default action (exit -15 and an empty log: seen once in CI in the SIGKILL loop,
    whose last SIGTERM can reach a service that is still starting)."""
    with HeldHealthCheck() as held:
        service = start_service(tardis, "sqlite:///%s" % (tmp_path / "g.db"), tmp_path,
                                GAPLESS_TARDIS_URL=held.url)
        try:
            assert held.asked.wait(30), Path(service.log_path).read_text()
            service.send_signal(signal.SIGTERM)
            held.release()
            code = service.wait(15)
        finally:
            if service.poll() is None:
                service.kill()
    log = Path(service.log_path).read_text()
    assert code == 0, log[-3000:]
    assert "stop asked for while starting" in log and "stopped in" in log, log[-3000:]
    assert not tardis.connections or all(not c.sent for c in tardis.connections)  # never started recording


READER = """
import sys, time, json
sys.path.insert(0, %r)
from gapless.storage import Storage
from gapless.published import read_published
store = Storage(sys.argv[1], create=False)
deadline = time.time() + float(sys.argv[2])
reads, sizes, errors = 0, set(), []
while time.time() < deadline:
    try:
        for symbol in ("BTC-PERPETUAL", "ETH-PERPETUAL"):
            frame = read_published(store, "deribit", symbol, "trade")
            if frame is not None and len(frame):
                sizes.add(len(frame))
                reads += 1
                steps = set((frame.index[1:] - frame.index[:-1]).total_seconds())
                if steps - {60.0}:
                    errors.append("minutes not contiguous: " + str(sorted(steps)))
    except Exception as exc:
        errors.append(repr(exc))
print(json.dumps({"reads": reads, "sizes": sorted(sizes), "errors": errors}))
"""


@pytest.mark.slow
def test_a_reader_process_reads_while_the_service_writes(fast_tardis, tmp_path):
    database_url = "sqlite:///%s" % (tmp_path / "g.db")
    service = start_service(fast_tardis, database_url, tmp_path)
    try:
        wait_until(lambda: (lambda s: s is not None and s["streams"][0]["disagreements"] is not None)(
            run_status(fast_tardis, database_url, tmp_path, must_work=False)), timeout=60, message="first rebuild")
        script = tmp_path / "reader.py"
        script.write_text(READER % str(ROOT))
        result = subprocess.run([sys.executable, str(script), database_url, "6"], capture_output=True, text=True,
                                timeout=60)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(15)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == []
    assert report["reads"] > 20
    # every read saw a whole pass, never a half-written one: the window (10 minutes), contiguous, and at most the
    # newest final minute after it (a live minute is published as soon as its claim covers it, before the
    # window's end reaches it)
    assert set(report["sizes"]) <= {10, 11} and 10 in report["sizes"]
