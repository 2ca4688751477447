"""Storage: idempotent inserts, coverage in the same transaction, refusal of foreign databases."""

import pytest

from gapless.exceptions import DatabaseUrlError, StorageError
from gapless.storage import Claim, Storage
from tests.support import foreign_sqlite_file, ingest_fixture, sqlite_store, us

QUOTES = "replay_btc_eth_quote_trade_bars_2026-11-23T0000_0020.ndjson"


def test_reinserting_the_same_data_creates_no_duplicates(store):
    types = ["quote", "quote_1m", "book_snapshot_5_1m", "trade", "trade_bar_1m", "derivative_ticker"]
    args = (store, QUOTES, "deribit", ["BTC-PERPETUAL", "ETH-PERPETUAL"], types, "2026-11-23T00:00",
            "2026-11-23T00:20")
    ingest_fixture(*args)
    counts = {t: store.count_rows(t) for t in ("book_snapshot_1", "book_snapshot_5", "trade", "trade_bar",
                                               "derivative_ticker")}
    assert counts == {"book_snapshot_1": 6602, "book_snapshot_5": 40, "trade": 3079, "trade_bar": 38,
                      "derivative_ticker": 2399}
    ingest_fixture(*args, batch_rows=97)
    assert {t: store.count_rows(t) for t in counts} == counts


def test_claims_are_upserted_per_segment_and_merged_on_read(store):
    claim = Claim("deribit", "BTC-PERPETUAL", "trade", "replay", "run1:0", us("2026-11-23T00:00"),
                  us("2026-11-23T00:05"))
    store.write({}, [claim])
    store.write({}, [Claim(**dict(claim.__dict__, end=us("2026-11-23T00:10")))])
    store.write({}, [Claim(**dict(claim.__dict__, segment="run2:0", start=us("2026-11-23T00:10"),
                                  end=us("2026-11-23T00:12")))])
    assert len(store.coverage_rows()) == 2
    assert store.covered("deribit", "BTC-PERPETUAL", "trade", "replay") == [(us("2026-11-23T00:00"),
                                                                            us("2026-11-23T00:12"))]
    assert store.covered("deribit", "BTC-PERPETUAL", "trade", "live") == []


def test_a_failed_write_stores_neither_rows_nor_coverage(store):
    claim = Claim("deribit", "X", "trade", "replay", "r:0", 0, 10)
    good = ("deribit", "X", "trade", "trade", "replay", 1, 2, "id1", 1.0, 1.0, "buy", None)
    bad = ("deribit", "X", "trade", "trade", "replay", 1, 2, "id2", None, 1.0, "buy", None)  # NOT NULL price
    with pytest.raises(StorageError):
        store.write({"trade": [good, bad]}, [claim])
    assert store.count_rows("trade") == 0
    assert store.coverage_rows() == []


def test_a_database_that_is_not_gapless_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    before = foreign_sqlite_file(path)
    with pytest.raises(DatabaseUrlError, match="not a gapless database"):
        Storage("sqlite:///%s" % path)
    assert path.read_bytes() == before


def test_a_corrupted_database_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not an sqlite file at all" * 100)
    before = path.read_bytes()
    with pytest.raises(StorageError, match="broken.db"):
        Storage("sqlite:///%s" % path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("url, message", [
    ("mysql://x/y", "unsupported scheme"),
    ("gapless.db", "is not a URL"),
    ("sqlite://", "expected sqlite:///"),
    ("sqlite:////no/such/dir/x.db", "does not exist"),
])
def test_bad_database_urls_are_named(url, message):
    with pytest.raises(DatabaseUrlError, match=message):
        Storage(url)


def test_wal_mode_and_busy_timeout_are_set(tmp_path):
    store = sqlite_store(tmp_path)
    assert store.db.execute_sql("pragma journal_mode").fetchone()[0] == "wal"
    assert store.db.execute_sql("pragma busy_timeout").fetchone()[0] >= 1000
