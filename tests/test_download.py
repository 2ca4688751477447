"""Replay downloads from the fake tardis-machine into storage (SQLite and PostgreSQL)."""
from datetime import datetime, timedelta, timezone

import pytest

from gapless.convert import Converter, table_columns
from gapless.download import Downloader
from gapless.stitch import series
from gapless.timeutil import MINUTE_US, iso
from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig, Outage
from tests.support import us

SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]
ALL_TYPES = ["quote", "quote_1m", "book_snapshot_5_1m", "trade", "trade_bar_1m", "derivative_ticker"]


def stored_rows(store):
    """Every stored row, per table, as a set of tuples in converter order."""
    result = {}
    for table in ("book_snapshot_1", "book_snapshot_5", "trade", "trade_bar", "derivative_ticker", "book_change"):
        if not store.has_table(table):
            continue
        columns = ", ".join('"%s"' % c for c in table_columns(table))
        rows = store.db.execute_sql('SELECT %s FROM "%s"' % (columns, table)).fetchall()
        if rows:
            result[table] = rows
    return result


def expected_rows(tardis):
    """What the double sent (fault-free) for every request it received, converted like replay rows."""
    converter = Converter("replay")
    expected = {}
    for record in tardis.requests:
        if record.status != 200:
            continue
        for message in tardis.expected_replay(record.options):
            if message["type"] in ("disconnect", "error"):
                continue
            table, row = converter.convert(message)
            expected.setdefault(table, set()).add(row)
    return expected


def as_sets(rows):
    return {t: {tuple(r) for r in v} for t, v in rows.items()}


def _download(store, tardis, types, start, end, **options):
    options.setdefault("workers", 0)
    options.setdefault("backoff_base", 0.01)
    downloader = Downloader(store, tardis.http_url, progress=False, **options)
    return downloader.download("deribit", SYMBOLS, types, us(start), us(end))


def test_every_data_type_lands_in_its_table_with_the_servers_values(tardis, store):
    report = _download(store, tardis, ALL_TYPES, "2026-11-25T00:05", "2026-11-25T00:15")
    assert report.complete and report.malformed == 0
    stored = stored_rows(store)
    assert set(stored) == {"book_snapshot_1", "book_snapshot_5", "trade", "trade_bar", "derivative_ticker"}
    for table, rows in stored.items():
        assert len(rows) == len(set(rows)), "duplicates in %s" % table
    assert as_sets(stored) == expected_rows(tardis)
    # book-derived types were asked from 00:00 (the day's only initial snapshot), the rest from 00:05 with
    # the look-behind (two minutes when nothing anchors the start), and every request asked one minute past the end
    ranges = sorted((r.from_.strftime("%H:%M"), r.to.strftime("%H:%M"), tuple(r.options[0]["dataTypes"]))
                    for r in tardis.requests)
    assert ranges == [("00:00", "00:16", ("book_snapshot_5_1m", "quote", "quote_1m")),
                      ("00:03", "00:16", ("derivative_ticker", "trade", "trade_bar_1m"))]
    frames = series(store, "deribit", SYMBOLS, ALL_TYPES, us("2026-11-25T00:05"), us("2026-11-25T00:15"))
    for key, frame in frames.items():
        assert not frame["missing"].any(), key
        assert set(frame["source"]) == {"replay"}


def test_mid_day_start_has_quotes_from_the_requested_start(tmp_path):
    clock = FakeClock(start=datetime(2026, 11, 25, 13, 50, tzinfo=timezone.utc))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=0.5, trade_rate=0.5),
                           availability_delay=timedelta(seconds=5)) as tardis:
        from gapless.storage import Storage
        store = Storage("sqlite:///%s" % (tmp_path / "g.db"))
        report = _download(store, tardis, ["quote_1m", "trade"], "2026-11-25T13:35", "2026-11-25T13:40")
        assert report.complete
        quote_request = [r for r in tardis.requests if "quote_1m" in r.options[0]["dataTypes"]]
        assert [r.from_.strftime("%H:%M") for r in quote_request] == ["00:00"]
        frames = series(store, "deribit", SYMBOLS, ["quote_1m", "trade"], us("2026-11-25T13:35"),
                        us("2026-11-25T13:40"))
        for key, frame in frames.items():
            assert not frame["missing"].any(), key
        quotes = frames[("BTC-PERPETUAL", "quote_1m")]
        assert quotes["bid_price"].notna().all() and (quotes["ask_price"] > quotes["bid_price"]).all()


def test_a_cut_stream_and_an_error_line_are_retried_to_completion_without_duplicates(tardis, store):
    tardis.add_replay_fault("cut", after_lines=700, reset=True)
    tardis.add_replay_fault("error_line", after_lines=1500)
    report = _download(store, tardis, ALL_TYPES, "2026-11-25T00:05", "2026-11-25T00:15")
    assert report.complete
    assert [r.fault for r in tardis.requests[:2]] == ["cut", "error_line"]
    assert report.attempts > report.requests  # retried
    stored = stored_rows(store)
    for table, rows in stored.items():
        assert len(rows) == len(set(rows)), "duplicates in %s" % table
    assert as_sets(stored) == expected_rows(tardis)
    for symbol in SYMBOLS:
        for data_type in ALL_TYPES:
            covered = store.covered("deribit", symbol, data_type, "replay")
            assert any(a <= us("2026-11-25T00:05") and b >= us("2026-11-25T00:15") for a, b in covered), \
                (symbol, data_type, [(iso(a), iso(b)) for a, b in covered])


def test_a_retry_asks_only_for_what_is_still_missing(tardis, store):
    tardis.add_replay_fault("cut", after_lines=500, match=lambda o: "trade" in o[0]["dataTypes"])
    _download(store, tardis, ["trade"], "2026-11-25T00:00", "2026-11-25T00:15")
    first, retry = tardis.requests[0], tardis.requests[1]
    assert first.fault == "cut" and first.from_.strftime("%H:%M") == "23:58"  # the look-behind
    # the retry starts at the minute the committed coverage reached, not at the beginning again
    assert retry.from_ > first.from_


def test_a_second_download_of_the_same_range_makes_no_request(tardis, store):
    _download(store, tardis, ALL_TYPES, "2026-11-25T00:05", "2026-11-25T00:15")
    before = len(tardis.requests)
    report = _download(store, tardis, ALL_TYPES, "2026-11-25T00:05", "2026-11-25T00:15")
    assert report.requests == 0 and len(tardis.requests) == before
    # an extension asks only for the new minutes (book-derived types from 00:00: the 00:00 rule)
    report = _download(store, tardis, ALL_TYPES, "2026-11-25T00:05", "2026-11-25T00:18")
    new = sorted((r.from_.strftime("%H:%M"), r.to.strftime("%H:%M")) for r in tardis.requests[before:])
    assert new == [("00:00", "00:19"), ("00:14", "00:19")]


def test_minutes_of_an_outage_in_history_are_flagged_missing(clock, store):
    outage = Outage(datetime(2026, 11, 25, 0, 7, 10, tzinfo=timezone.utc),
                    datetime(2026, 11, 25, 0, 7, 40, tzinfo=timezone.utc))
    with FakeTardisMachine(clock=clock, replay_outages=[outage], availability_delay=timedelta(seconds=5)) as tardis:
        _download(store, tardis, ["quote_1m", "trade", "trade_bar_1m"], "2026-11-25T00:05", "2026-11-25T00:15")
    frames = series(store, "deribit", SYMBOLS, ["quote_1m", "trade", "trade_bar_1m"], us("2026-11-25T00:05"),
                    us("2026-11-25T00:15"))
    for key, frame in frames.items():
        missing = [t.strftime("%H:%M") for t in frame.index[frame["missing"]]]
        assert missing == ["00:07"], key
        assert frame.loc[frame["missing"]].drop(columns=["source", "missing"]).isna().all().all()


def test_history_newer_than_available_is_claimed_only_as_far_as_delivered(tardis, store):
    # ask past the availability limit: the double streams what it has, then its error line
    now = tardis.clock.now_us() if hasattr(tardis.clock, "now_us") else None
    end = iso((now // MINUTE_US + 2) * MINUTE_US)
    report = _download(store, tardis, ["trade"], "2026-11-25T00:10", end, max_attempts=2)
    assert not report.complete
    assert any(r.error_line for r in tardis.requests)
    for symbol in SYMBOLS:
        for a, b in store.covered("deribit", symbol, "trade", "replay"):
            assert b <= now - tardis.availability_delay_us


@pytest.mark.parametrize("workers", [2])
def test_worker_processes_store_the_same_as_inline(tardis, tmp_path, workers):
    from gapless.storage import Storage
    inline = Storage("sqlite:///%s" % (tmp_path / "inline.db"))
    pooled = Storage("sqlite:///%s" % (tmp_path / "pooled.db"))
    _download(inline, tardis, ALL_TYPES, "2026-11-25T00:02", "2026-11-25T00:12", workers=0)
    _download(pooled, tardis, ALL_TYPES, "2026-11-25T00:02", "2026-11-25T00:12", workers=workers)
    assert as_sets(stored_rows(inline)) == as_sets(stored_rows(pooled))
