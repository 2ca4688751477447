"""Issue 6, bad input to the command line: a one-line error naming the culprit, exit status 2, and nothing
stored changed (row counts and coverage compared before and after).

Bad lines from the server are in tests/test_bad_lines.py.
"""
import os
import socket
import sqlite3

import pytest

from gapless.cli import main
from tests.conftest import _pg_connect, pg_schema_url
from tests.http_stubs import NotTardis, SilentSymbols
from tests.service_process import error_lines, run_cli, service_env
from tests.support import foreign_sqlite_file

WINDOW = ["--from", "2026-11-25T00:05", "--to", "2026-11-25T00:10"]


pytestmark = pytest.mark.usefixtures("isolated_cli")


def run(capture, clock, *argv):
    capture.readouterr()  # drop what earlier steps printed
    code = main(list(argv), now=clock.now)
    out, err = capture.readouterr()
    return code, out, err


def snapshot(path):
    """Row counts of every table and the coverage rows, read with plain sqlite3 (read-only)."""
    connection = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        counts = {t: connection.execute('SELECT count(*) FROM "%s"' % t).fetchone()[0] for t in tables}
        coverage = sorted(connection.execute(
            'SELECT exchange, symbol, data_type, source, segment, "start", "end", end_reason FROM coverage'))
        return counts, coverage
    finally:
        connection.close()


@pytest.fixture
def populated(tardis, tmp_path):
    """A gapless SQLite database holding a good download (trades and 1-minute quotes, 00:05-00:10)."""
    db = tmp_path / "g.db"
    code = main(["download", *base(tardis, db), "--data-types", "trade,quote_1m", *WINDOW, "--history-delay", "10s",
                 "--no-progress"], now=tardis.clock.now)
    assert code == 0
    before = snapshot(db)
    assert before[0]["trade"] > 0 and before[1]
    return db, before


def base(tardis, db):
    return ["--exchange", "deribit", "--symbols", "BTC-PERPETUAL,ETH-PERPETUAL", "--tardis-url", tardis.http_url,
            "--database", "sqlite:///%s" % db]


def assert_bad_input(code, err, *names):
    """Exit 2 and exactly one ``gapless: error:`` line, the last line of the output, naming every culprit."""
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    assert "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- unknown exchange, symbol, data type -------------------------------------------------------------
def test_unknown_exchange_shows_the_servers_own_message(tardis, populated, capsys):
    db, before = populated
    code, _, err = run(capsys, tardis.clock, "download", *base(tardis, db), "--exchange", "deribitx",
                       "--data-types", "trade", "--from", "2026-11-25T00:10", "--to", "2026-11-25T00:12",
                       "--history-delay", "10s", "--no-progress")
    assert_bad_input(code, err, "deribitx not supported")
    assert tardis.requests[-1].status == 500
    assert snapshot(db) == before


def test_unknown_exchange_stops_the_service_with_exit_2(tardis, populated, tmp_path):
    db, before = populated
    result = run_cli(tmp_path, "serve", env=service_env(tardis, "sqlite:///%s" % db, GAPLESS_EXCHANGE="deribitx"),
                     timeout=60)
    assert_bad_input(result.returncode, result.stderr + result.stdout, "deribitx")
    assert snapshot(db)[1] == before[1]


def test_an_unknown_symbol_is_reported_missing_never_covered(tardis, populated, tmp_path, capfd):
    """tardis-machine sends nothing for a symbol the exchange does not list; gapless cannot tell it from a
    silent market, so it must not claim the stream: it says so, and status reports every minute missing."""
    db, before = populated
    with SilentSymbols(tardis.http_url, {"NOPE-PERPETUAL"}) as proxy:
        # (capfd: the warning comes from the download worker process)
        code, out, err = run(capfd, tardis.clock, "download", *base(tardis, db), "--tardis-url", proxy.url,
                             "--symbols", "BTC-PERPETUAL,NOPE-PERPETUAL", "--data-types", "trade",
                             "--from", "2026-11-25T00:10", "--to", "2026-11-25T00:12", "--history-delay", "10s",
                             "--no-progress")
    assert code in (0, 1), err
    assert "NOPE-PERPETUAL" in err and "not claiming coverage" in err, err
    counts, coverage = snapshot(db)
    assert not [c for c in coverage if c[1] == "NOPE-PERPETUAL"]
    assert any(c[1] == "BTC-PERPETUAL" and c[6] >= 1795565520000000 for c in coverage)  # BTC got 00:10-00:12
    code, out, err = run(capfd, tardis.clock, "gaps", "--json", *base(tardis, db),
                         "--symbols", "NOPE-PERPETUAL", "--data-types", "trade", "--lookback", "15m",
                         "--history-delay", "10s")
    assert code == 0, err
    import json
    (stream,) = json.loads(out)["streams"]
    assert stream["symbol"] == "NOPE-PERPETUAL" and sum(g["minutes"] for g in stream["gaps"]) == 15


@pytest.mark.parametrize("data_types, culprit", [
    ("quote_1x", "quote_1x"),
    ("trade,book_snapshot_0_1m", "book_snapshot_0_1m"),
    ("trade_bar_0s", "trade_bar_0s"),
    ("quote_99999999m", "quote_99999999m"),
    ("trades", "trades"),
])
def test_unknown_data_type(tardis, populated, capsys, data_types, culprit):
    db, before = populated
    code, _, err = run(capsys, tardis.clock, "download", *base(tardis, db), "--data-types", data_types, *WINDOW,
                       "--history-delay", "10s", "--no-progress")
    assert_bad_input(code, err, culprit)
    code, _, err = run(capsys, tardis.clock, "serve", *base(tardis, db)[:-2], "--database",
                       "sqlite:///%s" % db, "--data-types", data_types)
    assert_bad_input(code, err, culprit)
    assert len(tardis.requests) == 2  # the fixture's two requests, none new
    assert snapshot(db) == before


# -- lookback, times ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "0m", "-5m", "500d", "99999999999d", "1e9", "nan", "5 parsecs", ""])
def test_a_zero_negative_or_absurd_lookback(tardis, populated, capsys, monkeypatch, value):
    db, before = populated
    for command in ("status", "gaps", "serve"):
        argv = [command, *base(tardis, db), "--data-types", "trade"]
        code, _, err = run(capsys, tardis.clock, *argv, "--lookback=%s" % value)
        assert_bad_input(code, err, "--lookback")
        with monkeypatch.context() as env:
            env.setenv("GAPLESS_LOOKBACK", value)
            code, _, err = run(capsys, tardis.clock, *argv)
        assert_bad_input(code, err, "GAPLESS_LOOKBACK")
    assert len(tardis.requests) == 2 and not tardis.connections  # no service started
    assert snapshot(db) == before


@pytest.mark.parametrize("times, culprit", [
    (["--from", "2026-11-25T00:10", "--to", "2026-11-25T00:05"], "is not before --to"),
    (["--from", "2026-11-25T00:05", "--to", "2026-11-25T00:05"], "is not before --to"),
    (["--from", "2026-13-45"], "--from: '2026-13-45'"),
    (["--from", "yesterday"], "--from: 'yesterday'"),
    (["--from", "2026-11-25T25:00"], "--from: '2026-11-25T25:00'"),
    (["--from", "2026-11-25T00:05", "--to", "2026-11-25 00:10:99"], "--to: '2026-11-25 00:10:99'"),
    (["--from", ""], "--from: ''"),
    (["--from", "2099-01-01", "--to", "2099-01-02"], "history is not available yet"),
])
def test_bad_times(tardis, populated, capsys, times, culprit):
    db, before = populated
    requests = len(tardis.requests)
    code, _, err = run(capsys, tardis.clock, "download", *base(tardis, db), "--data-types", "trade", *times,
                       "--history-delay", "10s", "--no-progress")
    assert_bad_input(code, err, culprit)
    assert len(tardis.requests) == requests
    assert snapshot(db) == before


# -- URLs ------------------------------------------------------------------------------------------------
def test_unreachable_and_non_tardis_urls(tardis, populated, capsys):
    db, before = populated
    unreachable = "http://127.0.0.1:%d" % free_port()
    with NotTardis() as web:
        for url, culprit in ((unreachable, "cannot reach tardis-machine at %s" % unreachable),
                             (web.url, "%s does not look like tardis-machine" % web.url),
                             (tardis.ws_url.replace("ws://", "http://"), "does not look like tardis-machine"),
                             ("http://no-such-host.invalid:8000", "no-such-host.invalid"),
                             ("htp://127.0.0.1:8000", "--tardis-url"),
                             ("http://127.0.0.1:99999", "--tardis-url")):
            code, _, err = run(capsys, tardis.clock, "download", *base(tardis, db), "--tardis-url", url,
                               "--data-types", "trade", "--from", "2026-11-25T00:10", "--to", "2026-11-25T00:12",
                               "--history-delay", "10s", "--no-progress")
            assert_bad_input(code, err, culprit)
    assert snapshot(db) == before


# -- databases ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, culprit", [
    ("mysql://x/y", "--database: 'mysql://x/y'"),
    ("sqlite://g.db", "--database: 'sqlite://g.db'"),
    ("sqlite:///", "--database"),
    ("postgresql://postgres@127.0.0.1:5432/", "names no database"),
    ("postgresql://postgres@127.0.0.1:notaport/test", "notaport"),
    ("sqlite:////no/such/directory/g.db", "/no/such/directory"),
])
def test_a_malformed_database_url(tardis, populated, capsys, url, culprit):
    db, before = populated
    requests = len(tardis.requests)
    for command in (["download", *WINDOW, "--history-delay", "10s", "--no-progress"], ["status"]):
        code, _, err = run(capsys, tardis.clock, command[0], *base(tardis, db)[:-2], "--database", url,
                           "--data-types", "trade", *command[1:])
        assert_bad_input(code, err, culprit)
    assert snapshot(db) == before
    assert len(tardis.requests) == requests


@pytest.mark.parametrize("problem", ["no such database", "nothing listening"])
def test_a_postgresql_url_that_is_wrong(tardis, capsys, pg_database, problem):
    if problem == "no such database":
        url, culprit = pg_database.rsplit("/", 1)[0] + "/gapless_no_such_database", "gapless_no_such_database"
    else:
        port = free_port()
        url, culprit = "postgresql://postgres@127.0.0.1:%d/test" % port, "127.0.0.1:%d" % port
    for command in (["download", *WINDOW, "--history-delay", "10s", "--no-progress"], ["status"]):
        code, _, err = run(capsys, tardis.clock, command[0], "--tardis-url", tardis.http_url, "--database", url,
                           "--data-types", "trade", *command[1:])
        assert_bad_input(code, err, culprit)
    assert tardis.requests == []


def test_a_database_that_is_not_a_gapless_database_is_refused_untouched(tardis, tmp_path, capsys, pg_database):
    foreign = tmp_path / "accounts.db"
    original = foreign_sqlite_file(foreign)
    schema, pg_url = pg_schema_url(pg_database)
    with _pg_connect(pg_database.rsplit("/", 1)[1]) as pg:
        pg.execute('CREATE TABLE "%s".customers (id int primary key, name text)' % schema)
    try:
        for url in ("sqlite:///%s" % foreign, pg_url):
            for command in (["download", *WINDOW, "--history-delay", "10s", "--no-progress"], ["status"],
                            ["series", *WINDOW]):
                code, _, err = run(capsys, tardis.clock, command[0], "--tardis-url", tardis.http_url, "--database",
                                   url, "--data-types", "trade", *command[1:])
                assert_bad_input(code, err, "is not a gapless database", "customers")
        assert foreign.read_bytes() == original
        assert sorted(os.listdir(tmp_path)) == ["accounts.db"]
        with _pg_connect(pg_database.rsplit("/", 1)[1]) as pg:
            tables = [r[0] for r in pg.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))]
        assert tables == ["customers"]
    finally:
        with _pg_connect(pg_database.rsplit("/", 1)[1]) as pg:
            pg.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % schema)


@pytest.mark.parametrize("damage", ["garbage", "torn-pages"])
def test_a_corrupted_sqlite_file(tardis, populated, capsys, damage):
    db, _ = populated
    data = bytearray(db.read_bytes())
    if damage == "garbage":
        data = bytearray(b"this is not a database, just some text " * 200)
    else:  # a gapless database whose pages after the first were overwritten (header and schema intact)
        for offset in range(4096 * 2, len(data), 4096 * 2):
            data[offset:offset + 2048] = os.urandom(2048)
    db.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(db) + suffix):
            os.unlink(str(db) + suffix)
    damaged = db.read_bytes()
    for command in (["download", "--from", "2026-11-25T00:10", "--to", "2026-11-25T00:12", "--history-delay", "10s",
                     "--no-progress"], ["status"], ["series", *WINDOW]):
        code, _, err = run(capsys, tardis.clock, command[0], *base(tardis, db), "--data-types", "trade", *command[1:])
        assert_bad_input(code, err, str(db))
    assert db.read_bytes() == damaged


# -- .env and symbols -----------------------------------------------------------------------------------
def test_a_typo_in_a_settings_key_is_warned_about_by_name(tardis, populated, tmp_path, capsys):
    db, before = populated
    (tmp_path / ".env").write_text("GAPLESS_LOOKBAK=2h\nGAPLESS_DATA_TYPES=trade\n")
    config = tmp_path / "config"
    config.mkdir()
    (config / "gapless.env").write_text("GAPLESS_HISTROY_DELAY=5m\n")
    code, out, err = run(capsys, tardis.clock, "status", "--json", *base(tardis, db), "--config-dir", str(config))
    assert code == 0, err
    assert "unknown setting GAPLESS_LOOKBAK in .env; did you mean GAPLESS_LOOKBACK?" in err, err
    assert "GAPLESS_HISTROY_DELAY" in err and "did you mean GAPLESS_HISTORY_DELAY?" in err, err
    import json
    report = json.loads(out)
    assert [s["data_type"] for s in report["streams"]] == ["trade", "trade"]  # the good key was used
    assert report["streams"][0]["minutes"]["total"] == 1440  # the misspelt lookback was not: 1d default
    assert snapshot(db) == before


@pytest.mark.parametrize("symbols", ["BTC'X", 'BTC"X', "X'); DROP TABLE trade;--", "BTC PERPETUAL",
                                     "BTC-PERPETUAL,ETH;PERP", "BTC-PERPETUAL\nETH", "ÄTHER", "-BTC"])
def test_symbols_with_quotes_or_sql_are_refused(tardis, populated, capsys, monkeypatch, symbols):
    db, before = populated
    argv = ["status", "--exchange", "deribit", "--database", "sqlite:///%s" % db, "--data-types", "trade"]
    code, _, err = run(capsys, tardis.clock, *argv, "--symbols=%s" % symbols)
    assert_bad_input(code, err, "--symbols", "is not a symbol")
    with monkeypatch.context() as env:
        env.setenv("GAPLESS_SYMBOLS", symbols)
        code, _, err = run(capsys, tardis.clock, *argv)
    assert_bad_input(code, err, "GAPLESS_SYMBOLS", "is not a symbol")
    assert snapshot(db) == before
