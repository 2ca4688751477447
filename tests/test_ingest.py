"""RunParser on captured replay lines: coverage claims say exactly what was delivered."""
from gapless.claims import REPLAY_START_MARGIN_US
from gapless.ingest import LATENCY_MARGIN_US
from gapless.timeutil import MINUTE_US, iso
from tests.support import ingest_fixture, sqlite_store, us

DISCONNECT = "replay_btc_disconnect_2026-11-24T1330_1345.ndjson"
QUOTES = "replay_btc_eth_quote_trade_bars_2026-11-23T0000_0020.ndjson"
MIDDAY = "replay_btc_midday_start_no_snapshot_2026-11-23T1335_1340.ndjson"


def _coverage(store):
    return sorted((r["symbol"], r["data_type"], iso(r["start"]), iso(r["end"]), r["end_reason"])
                  for r in store.coverage_rows())


def test_a_complete_run_claims_up_to_one_minute_before_its_to(tmp_path):
    store = sqlite_store(tmp_path)
    ingest_fixture(store, QUOTES, "deribit", ["BTC-PERPETUAL", "ETH-PERPETUAL"],
                   ["quote_1m", "trade", "trade_bar_1m"], "2026-11-23T00:00", "2026-11-23T00:20")
    assert _coverage(store) == [
        (symbol, data_type, "2026-11-23T00:00:00Z", "2026-11-23T00:19:00Z", "complete")
        for symbol in ("BTC-PERPETUAL", "ETH-PERPETUAL") for data_type in ("quote_1m", "trade", "trade_bar_1m")]


def test_a_replay_disconnect_ends_coverage_and_a_new_segment_starts_at_the_next_message(tmp_path):
    store = sqlite_store(tmp_path)
    ingest_fixture(store, DISCONNECT, "deribit", ["BTC-PERPETUAL"], ["quote_1m", "trade_bar_1m", "trade"],
                   "2026-11-24T13:30", "2026-11-24T13:45")
    disconnect_at = us("2026-11-24T13:37:09.527805")
    back = us("2026-11-24T13:37:30.107674")  # the fresh snapshot after the outage: the first line after it
    assert _coverage(store) == [
        # quotes: the replay started mid-day, so no book until the fresh snapshot after the outage; the book
        # is known from the snapshot's own (exchange) time
        ("BTC-PERPETUAL", "quote_1m", "2026-11-24T13:37:30.104000Z", "2026-11-24T13:44:00Z", "complete"),
        # raw trades: everything up to the disconnect, minus the latency margin (in-flight prints are lost);
        # after it, from the first line plus the skew bound (the recorder was up when that line arrived)
        ("BTC-PERPETUAL", "trade", "2026-11-24T13:30:00Z", iso(disconnect_at - LATENCY_MARGIN_US), "disconnect"),
        ("BTC-PERPETUAL", "trade", iso(back + REPLAY_START_MARGIN_US), "2026-11-24T13:44:00Z", "complete"),
        # bars: up to the interval of the last trade before the outage (that bar in progress is discarded);
        # after it, from the first whole interval
        ("BTC-PERPETUAL", "trade_bar_1m", "2026-11-24T13:30:00Z", "2026-11-24T13:37:00Z", "disconnect"),
        ("BTC-PERPETUAL", "trade_bar_1m", "2026-11-24T13:38:00Z", "2026-11-24T13:44:00Z", "complete"),
    ]


def test_a_stream_that_sent_nothing_is_not_claimed(tmp_path):
    store = sqlite_store(tmp_path)
    ingest_fixture(store, MIDDAY, "deribit", ["BTC-PERPETUAL"], ["quote", "trade"], "2026-11-23T13:35",
                   "2026-11-23T13:40")
    assert _coverage(store) == [("BTC-PERPETUAL", "trade", "2026-11-23T13:35:00Z", "2026-11-23T13:39:00Z",
                                 "complete")]


def test_a_cut_stream_claims_only_what_arrived(tmp_path):
    store = sqlite_store(tmp_path)
    batches = ingest_fixture(store, DISCONNECT, "deribit", ["BTC-PERPETUAL"], ["trade", "trade_bar_1m"],
                             "2026-11-24T13:30", "2026-11-24T13:45", cut_after=300)
    last_lts = max(r[6] for b in batches for rows in b.rows.values() for r in rows)
    coverage = {r["data_type"]: r for r in store.coverage_rows()}
    assert coverage["trade"]["end"] == last_lts - LATENCY_MARGIN_US
    assert coverage["trade"]["end_reason"] == "partial"
    # bars: up to the interval of the last trade of a packet that was followed by another one (the last
    # packet may have been cut between a trade and the bar it triggered); that trade's bar is pending
    last_trade_ts = max(r[5] for b in batches for r in b.rows.get("trade", []) if r[6] < last_lts)
    assert coverage["trade_bar_1m"]["end"] == last_trade_ts - last_trade_ts % MINUTE_US
    assert store.count_rows("trade") == 300 - sum(1 for b in batches for r in b.rows.get("trade_bar", []))


def test_malformed_lines_are_counted_not_stored(tmp_path):
    from gapless.ingest import ReplayRequest, RunParser
    from tests.support import fixture_lines
    lines = fixture_lines(MIDDAY)[:50]
    bad = [b"not json", b'{"type":"trade","symbol":"BTC-PERPETUAL"}', b'{"type":"wat","localTimestamp":"x"}',
           lines[3].replace(b'"price":', b'"price":"NaN","p":')]
    request = ReplayRequest("deribit", ("BTC-PERPETUAL",), ("trade",), us("2026-11-23T13:35"), us("2026-11-23T13:39"))
    parser = RunParser(request, batch_rows=10)
    batches = parser.feed(lines[:10] + bad + lines[10:])
    batches.append(parser.finish(True))
    assert sum(b.malformed for b in batches) == 4
    assert sum(len(b.rows.get("trade", [])) for b in batches) == 50
    assert any("not JSON" in s or "not a tardis message" in s for b in batches for s in b.samples)


def _trade_line(lts_us, trade_id):
    import orjson
    stamp = iso(lts_us).replace("Z", "")[:23] + "Z"
    return orjson.dumps({"type": "trade", "symbol": "BTC-PERPETUAL", "exchange": "deribit", "id": trade_id,
                         "price": 100.0, "amount": 1.0, "side": "buy", "timestamp": stamp, "localTimestamp": stamp})


def test_a_line_older_than_the_latency_margin_is_rejected_a_small_reordering_is_kept():
    from gapless.ingest import ReplayRequest, RunParser
    start = us("2026-11-23T13:35")
    lines = [_trade_line(start + i * 1_000_000, "t%d" % i) for i in range(20)]  # one trade a second
    late = _trade_line(start + 19_000_000 - LATENCY_MARGIN_US - 1_000_000, "too-late")  # 6 s behind the last
    slight = _trade_line(start + 19_000_000 - 2_000_000, "slightly-late")  # 2 s behind: inside the margin
    request = ReplayRequest("deribit", ("BTC-PERPETUAL",), ("trade",), start, start + 60_000_000)
    for fast in (True, False):  # whole lists take the vectorised path; one at a time the line-by-line one
        parser = RunParser(request, batch_rows=1000)
        feed = lines + [late, slight, _trade_line(start + 20_000_000, "t20")]
        batches = parser.feed(feed) if fast else [b for line in feed for b in parser.feed([line])]
        batches.append(parser.finish(True))
        ids = [r[7] for b in batches for r in b.rows.get("trade", [])]
        assert "too-late" not in ids and "slightly-late" in ids and len(ids) == 22, ids
        assert sum(b.malformed for b in batches) == 1
        assert any("out of localTimestamp order" in s for b in batches for s in b.samples)
