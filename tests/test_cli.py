"""The command line: downloads and series exports, and one-line errors with exit 2 for bad input."""
import socket

import pandas as pd
import pytest

from gapless.cli import main


pytestmark = pytest.mark.usefixtures("isolated_cli")


def run(capsys, clock, *argv):
    code = main(list(argv), now=clock.now)
    out, err = capsys.readouterr()
    return code, out, err


def base(tardis, db):
    return ["--exchange", "deribit", "--symbols", "BTC-PERPETUAL,ETH-PERPETUAL", "--tardis-url", tardis.http_url,
            "--database", "sqlite:///%s" % db]


def test_download_then_series_to_csv_and_parquet(tardis, tmp_path, capsys):
    db = tmp_path / "g.db"
    code, out, err = run(capsys, tardis.clock, "download", *base(tardis, db), "--data-types",
                         "quote_1m,trade_bar_1m,trade", "--from", "2026-11-25T00:05", "--to", "2026-11-25T00:15",
                         "--history-delay", "10s", "--no-progress")
    assert code == 0, err
    assert "downloaded 2 request(s)" in out
    for suffix in ("csv", "parquet"):
        target = tmp_path / ("series." + suffix)
        code, out, err = run(capsys, tardis.clock, "series", *base(tardis, db), "--data-types", "quote_1m,trade",
                             "--from", "2026-11-25T00:05", "--to", "2026-11-25T00:15", "--out", str(target))
        assert code == 0, err
        frame = pd.read_csv(target) if suffix == "csv" else pd.read_parquet(target)
        assert len(frame) == 2 * 2 * 10  # symbols x data types x minutes: one row each
        assert list(frame.columns[:6]) == ["minute", "exchange", "symbol", "data_type", "source", "missing"]
        assert not frame["missing"].any() and set(frame["source"]) == {"replay"}
        if suffix == "csv":
            assert frame["minute"].iloc[0] == "2026-11-25T00:05:00Z"
    code, out, err = run(capsys, tardis.clock, "series", *base(tardis, db), "--data-types", "trade",
                         "--from", "2026-11-25T00:05", "--to", "2026-11-25T00:07")
    assert code == 0 and "2026-11-25T00:06:00Z" in out


@pytest.mark.parametrize("argv, message", [
    (["--data-types", "quote_1x"], "unknown data type 'quote_1x'"),
    (["--from", "2026-11-25T00:10", "--to", "2026-11-25T00:05"], "is not before --to"),
    (["--from", "2026-13-45"], "--from: '2026-13-45' is not an ISO-8601"),
    (["--tardis-url", "htp:/nowhere"], "--tardis-url: 'htp:/nowhere' is not an http"),
    (["--symbols", "BTC'; DROP TABLE trade;--"], "is not a symbol"),
    (["--exchange", "Deribit X"], "is not an exchange name"),
    (["--database", "mysql://x/y"], "--database: 'mysql://x/y' is not sqlite:///"),
])
def test_bad_input_gets_one_line_exit_2_and_touches_nothing(tardis, tmp_path, capsys, argv, message):
    db = tmp_path / "g.db"
    args = ["download", *base(tardis, db), "--data-types", "trade", "--from", "2026-11-25T00:05",
            "--to", "2026-11-25T00:10", "--history-delay", "10s", "--no-progress"]
    for flag_index in range(0, len(argv), 2):  # later flags override earlier ones in argparse
        args += argv[flag_index:flag_index + 2]
    code, out, err = run(capsys, tardis.clock, *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("gapless: error")]
    assert len(lines) == 1 and message in lines[0], err
    assert not db.exists()
    assert tardis.requests == []


def test_unreachable_server_and_unknown_exchange_exit_2_without_touching_stored_data(tardis, tmp_path, capsys):
    db = tmp_path / "g.db"
    code, _, err = run(capsys, tardis.clock, "download", *base(tardis, db), "--data-types", "trade", "--from",
                       "2026-11-25T00:05", "--to", "2026-11-25T00:10", "--history-delay", "10s", "--no-progress")
    assert code == 0, err
    before = db.read_bytes()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    code, _, err = run(capsys, tardis.clock, "download", *base(tardis, db), "--tardis-url",
                       "http://127.0.0.1:%d" % free_port, "--data-types", "trade", "--from", "2026-11-25T00:10",
                       "--to", "2026-11-25T00:12", "--history-delay", "10s")
    assert code == 2 and "cannot reach tardis-machine at http://127.0.0.1:%d" % free_port in err
    code, _, err = run(capsys, tardis.clock, "download", *base(tardis, db), "--exchange", "deribitx",
                       "--data-types", "trade", "--from", "2026-11-25T00:10", "--to", "2026-11-25T00:12",
                       "--history-delay", "10s", "--no-progress")
    assert code == 2 and "deribitx not supported" in err
    assert [line for line in err.splitlines() if line.startswith("gapless: error")] == [err.strip().splitlines()[-1]]
    # a URL that answers but is not tardis-machine
    code, _, err = run(capsys, tardis.clock, "download", *base(tardis, db), "--tardis-url",
                       tardis.ws_url.replace("ws://", "http://"), "--data-types", "trade", "--from",
                       "2026-11-25T00:10", "--to", "2026-11-25T00:12", "--history-delay", "10s")
    assert code == 2
    assert db.read_bytes() == before or _same_rows(db, before)


def _same_rows(db, before_bytes):
    # WAL mode may rewrite pages on open without changing content: compare row counts instead
    import sqlite3
    connection = sqlite3.connect(db)
    try:
        return connection.execute("select count(*) from trade").fetchone()[0] > 0
    finally:
        connection.close()


def test_series_of_a_database_that_does_not_exist_is_an_error_not_a_new_file(tardis, tmp_path, capsys):
    db = tmp_path / "nothing.db"
    code, _, err = run(capsys, tardis.clock, "series", *base(tardis, db), "--data-types", "trade",
                       "--from", "2026-11-25T00:05", "--to", "2026-11-25T00:10")
    assert code == 2 and "does not exist" in err and not db.exists()


def test_help_for_each_command(capsys):
    for command in ("download", "series", "serve", "status", "gaps"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "--tardis-url" in capsys.readouterr().out


def test_unknown_settings_keys_are_warned_about(tmp_path, capsys, monkeypatch, tardis):
    (tmp_path / ".env").write_text("GAPLESS_SYMBOL=ETH-PERPETUAL\nGAPLESS_HISTORY_DELAY=10s\n")
    db = tmp_path / "g.db"
    code, out, err = run(capsys, tardis.clock, "download", "--tardis-url", tardis.http_url, "--database",
                         "sqlite:///%s" % db, "--data-types", "trade", "--from", "2026-11-25T00:05", "--to",
                         "2026-11-25T00:07", "--no-progress")
    assert code == 0, err
    assert "unknown setting GAPLESS_SYMBOL in .env; did you mean GAPLESS_SYMBOLS?" in err
