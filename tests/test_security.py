"""Issue 6, security: secrets never shown, no listening socket, no SQL built from user input.

* the tardis API key and the database password never appear in logs, errors, status output or exception
  text, whatever happens (success, refusals, cuts, unreachable servers, bad URLs), at any log level;
* the service opens no listening socket (TCP or UDP, IPv4 or IPv6), in its own process or its workers;
* user input never reaches SQL as text: hostile symbols, data types and exchanges are refused at the
  door, and when they reach the storage layer as values they are stored as data and break nothing.
"""
import os
import socket
import time
import traceback
from urllib.parse import quote

import psutil
import pytest

from gapless import get_data_without_gap
from gapless.config import load_settings
from gapless.download import Downloader
from gapless.exceptions import GaplessError, UsageError
from gapless.stitch import series
from gapless.service import Gapless
from gapless.status import status_report
from gapless.publish import rebuild
from gapless.published import read_published
from gapless.storage import Claim, Storage
from tests.conftest import pg_schema_url
from tests.service_process import run_cli, service_env, start_service, stop_service
from tests.support import us

API_KEY = "tdk-SECRET-9f8e7d6c5b4a"
PASSWORD = "pgpw-SECRET-31415"
SYMBOLS = ["BTC-PERPETUAL", "ETH-PERPETUAL"]


def secrets_in(text):
    """Every form of a secret that may show up in text (plain, URL-encoded)."""
    found = []
    for secret in (API_KEY, PASSWORD):
        for form in {secret, quote(secret, safe=""), quote(quote(secret, safe=""), safe="")}:
            if form in text:
                found.append(form)
    return found


def with_password(url):
    """The URL with a password for its user (the local server trusts everyone, so any password works)."""
    return url.replace("postgresql://postgres@", "postgresql://postgres:%s@" % PASSWORD, 1)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def pg_url(pg_database):
    from tests.conftest import _pg_connect
    schema, url = pg_schema_url(pg_database)
    try:
        yield with_password(url)
    finally:
        with _pg_connect(pg_database.rsplit("/", 1)[1]) as connection:
            connection.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % schema)


# -- secrets -------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_the_api_key_and_the_database_password_never_appear_in_any_output(tardis, pg_url, tmp_path, level):
    # downloads run in worker processes (GAPLESS_WORKERS=1, the default) and in the main process (0)
    env = service_env(tardis, pg_url, data_types=("trade", "quote_1m"), GAPLESS_TARDIS_API_KEY=API_KEY,
                      GAPLESS_LOG_LEVEL=level, GAPLESS_WORKERS="0", GAPLESS_LOOKBACK="15m")
    window = ["--from", "2026-11-25T00:05", "--to", "2026-11-25T00:10", "--history-delay", "10s", "--no-progress"]
    outputs = {}

    def cli(name, *args, **changes):
        run_env = dict(env, **changes)
        result = run_cli(tmp_path, *args, env=run_env, timeout=90)
        outputs[name] = (result.returncode, result.stdout + result.stderr)
        return result

    # successes, with the key from the environment and from the flag
    assert cli("download", "download", *window, GAPLESS_WORKERS="1").returncode == 0, outputs["download"]
    assert cli("download --api-key", "download", "--api-key", API_KEY, "--from", "2026-11-25T00:10", "--to",
               "2026-11-25T00:12", "--history-delay", "10s", GAPLESS_TARDIS_API_KEY="").returncode == 0
    # the server refuses, cuts, fails mid-stream, is unreachable, is not tardis-machine
    cli("unknown exchange", "download", *window, GAPLESS_EXCHANGE="deribitx")
    tardis.add_replay_fault("error_line", after_lines=50)
    tardis.add_replay_fault("cut", after_lines=80, reset=True)
    tardis.add_replay_fault("status", status=429, headers={"Retry-After": "1"})
    tardis.add_replay_fault("status", status=500, body={"message": "boom"})
    cli("faults", "download", "--from", "2026-11-25T00:12", "--to", "2026-11-25T00:14", "--history-delay", "10s")
    cli("unreachable", "download", *window, GAPLESS_TARDIS_URL="http://127.0.0.1:%d" % free_port())
    cli("websocket port", "download", *window, GAPLESS_TARDIS_URL=tardis.ws_url.replace("ws://", "http://"))
    # reading commands
    for command in ("status", "gaps"):
        assert cli(command, command, "--json").returncode == 0, outputs[command]
    assert cli("series", "series", *window[:4]).returncode == 0, outputs["series"]
    # bad database URLs that carry the password
    wrong_port = pg_url.replace(":5432/", ":%d/" % free_port())
    wrong_database = pg_url.split("?")[0].rsplit("/", 1)[0] + "/no_such_database"
    for name, url in (("wrong port", wrong_port), ("wrong database", wrong_database),
                      ("bad port", pg_url.replace(":5432/", ":notaport/")),
                      ("unparseable", pg_url.replace("@127.0.0.1", "@[127.0.0.1")),
                      ("bad scheme", pg_url.replace("postgresql://", "postgresql+psycopg://"))):
        cli(name, "status", "--json", GAPLESS_DATABASE_URL=url)
    # the service itself: starts, records, downloads, rebuilds, stops
    service = start_service(tardis, pg_url, tmp_path, data_types=("trade", "quote_1m"),
                            GAPLESS_TARDIS_API_KEY=API_KEY, GAPLESS_LOG_LEVEL=level, GAPLESS_WORKERS="1")
    try:
        requests = len(tardis.requests)
        assert tardis.wait_for(lambda: len(tardis.requests) > requests and tardis.connections, timeout=30)
    finally:
        code, _ = stop_service(service)
    outputs["serve"] = (code, open(service.log_path).read())
    assert code == 0, outputs["serve"][1][-3000:]
    # the key really was in use: the server received it in every replay request
    assert tardis.requests and all(r.options[0].get("apiKey") == API_KEY for r in tardis.requests if r.options)
    failures = [name for name, (code, _) in outputs.items() if code != 0]
    assert len(failures) >= 8, failures  # the failure paths really ran
    leaks = {name: secrets_in(text) for name, (_, text) in outputs.items() if secrets_in(text)}
    assert not leaks, "secrets in the output of %s: e.g. %s" % (
        sorted(leaks), next(line for name in sorted(leaks) for line in outputs[name][1].splitlines()
                            if secrets_in(line))[:300])


def test_secrets_never_appear_in_exception_text_or_reprs(tardis, pg_url, tmp_path):
    texts = []

    def record(exc):
        texts.extend([str(exc), repr(exc), "".join(traceback.format_exception(exc))])

    settings = load_settings(environ={"GAPLESS_TARDIS_API_KEY": API_KEY, "GAPLESS_DATABASE_URL": pg_url},
                             config_dir=None, dotenv_path=None)
    texts += [repr(settings), str(settings)]
    for url in (pg_url.replace(":5432/", ":%d/" % free_port()), pg_url.split("?")[0].rsplit("/", 1)[0] + "/nope",
                pg_url.replace("@127.0.0.1", "@[127.0.0.1"), pg_url.replace(":5432/", ":99999/")):
        with pytest.raises(GaplessError) as caught:
            Storage(url)
        record(caught.value)
    store = Storage(pg_url)
    try:
        downloader = Downloader(store, tardis.http_url, api_key=API_KEY, workers=0, progress=False, max_attempts=1)
        tardis.add_replay_fault("error_line", after_lines=10)
        report = downloader.download("deribit", SYMBOLS, ["trade"], us("2026-11-25T00:05"), us("2026-11-25T00:07"))
        assert report.failed
        texts += [str(report), repr(report.failed)]
        with pytest.raises(GaplessError) as caught:
            downloader.download("deribitx", SYMBOLS, ["trade"], us("2026-11-25T00:05"), us("2026-11-25T00:07"))
        record(caught.value)
        unreachable = Downloader(store, "http://127.0.0.1:%d" % free_port(), api_key=API_KEY, workers=0,
                                 progress=False, max_attempts=1, backoff_base=0.01)
        texts.append(repr(unreachable.download("deribit", SYMBOLS, ["trade"], us("2026-11-25T00:07"),
                                               us("2026-11-25T00:09")).failed))
        texts += [repr(store), store.redacted_url]
    finally:
        store.close()
    gapless = Gapless("deribitx", SYMBOLS, ["trade"], lookback="5m", database_url=pg_url, tardis_url=tardis.http_url,
                      tardis_ws_url=tardis.ws_url, api_key=API_KEY, history_delay="10s", now=tardis.clock.now_us)
    try:
        with pytest.raises(GaplessError) as caught:
            gapless.heal()
        record(caught.value)
        texts += [repr(gapless), repr(gapless.status())]
    finally:
        gapless.storage.close()
    assert any(r.options and r.options[0].get("apiKey") == API_KEY for r in tardis.requests)
    leaks = [t for t in texts if secrets_in(t)]
    assert not leaks, leaks[0][:500]


# -- no listening socket --------------------------------------------------------------------------------
def listening_sockets(pid):
    """Listening TCP sockets and bound UDP sockets of a process, from psutil and, independently, /proc."""
    found = set()
    try:
        for c in psutil.Process(pid).net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and c.laddr):
                found.add(("psutil", c.laddr))
    except psutil.NoSuchProcess:
        return found
    inodes = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for table in ("tcp", "tcp6", "udp", "udp6"):
            with open("/proc/%d/net/%s" % (pid, table)) as handle:
                for line in handle.readlines()[1:]:
                    fields = line.split()
                    state, inode = fields[3], fields[9]
                    if inode in inodes and (table.startswith("udp") or state == "0A"):  # 0A = LISTEN
                        found.add(("proc", table, fields[1]))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def test_the_listening_socket_check_finds_a_listener():
    # the check itself must be able to fail: this test process runs the double's two listeners
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        found = listening_sockets(os.getpid())
    assert {f[0] for f in found} == {"psutil", "proc"}, found


@pytest.mark.slow
def test_the_service_opens_no_listening_socket(tardis, tmp_path):
    service = start_service(tardis, "sqlite:///%s" % (tmp_path / "g.db"), tmp_path, GAPLESS_WORKERS="1",
                            GAPLESS_LOOKBACK="15m", GAPLESS_REBUILD_INTERVAL="1s")
    seen, samples = set(), 0
    try:
        assert tardis.wait_for(lambda: tardis.connections and tardis.requests, timeout=30)
        deadline = time.monotonic() + 4  # while it records, downloads (in a worker process) and rebuilds
        while time.monotonic() < deadline:
            try:
                processes = [psutil.Process(service.pid)] + psutil.Process(service.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for process in processes:
                seen |= listening_sockets(process.pid)
            samples += 1
        outgoing = psutil.Process(service.pid).net_connections(kind="inet")
        assert service.poll() is None
    finally:
        code, _ = stop_service(service)
    assert code == 0
    assert samples > 10
    assert any(c.raddr and c.raddr.port == int(tardis.ws_url.rsplit(":", 1)[1]) for c in outgoing), outgoing
    assert not seen, seen


# -- SQL -------------------------------------------------------------------------------------------------
HOSTILE_SYMBOLS = ["X'); DROP TABLE trade;--", 'X"); DROP TABLE coverage;--', "BTC' OR '1'='1",
                   "BTC-PERPETUAL; DELETE FROM coverage"]
HOSTILE_TYPES = ["trade; DROP TABLE trade", "trade') OR 1=1 --", 'quote_1m"; DROP TABLE coverage; --']
HOSTILE_EXCHANGES = ["deribit'; DROP TABLE coverage;--", 'deribit"; DELETE FROM trade; --', "deribit OR 1=1"]


def table_counts(store):
    return {t: store.db.execute_sql('SELECT count(*) FROM "%s"' % t).fetchone()[0] for t in store.db.get_tables()}


def test_hostile_names_are_refused_by_every_entry_point(tardis, database_url, tmp_path):
    store = Storage(database_url)
    Downloader(store, tardis.http_url, workers=0, progress=False).download(
        "deribit", SYMBOLS, ["trade"], us("2026-11-25T00:05"), us("2026-11-25T00:07"))
    before = table_counts(store)
    store.close()
    env = service_env(tardis, database_url, data_types=("trade",))
    attempts = []
    for symbol in HOSTILE_SYMBOLS:
        attempts.append(("--symbols=%s" % symbol,))
    for data_type in HOSTILE_TYPES:
        attempts.append(("--data-types=%s" % data_type,))
    for exchange in HOSTILE_EXCHANGES:
        attempts.append(("--exchange=%s" % exchange,))
    for extra in attempts:
        for command in (("status", "--json"), ("download", "--from", "2026-11-25T00:05", "--to", "2026-11-25T00:07")):
            result = run_cli(tmp_path, *command, *extra, env=env)
            assert result.returncode == 2, (extra, result.stderr)
            assert result.stderr.strip().splitlines()[-1].startswith("gapless: error:"), result.stderr
    # the library's front door validates too
    for symbols, types, exchange in ([HOSTILE_SYMBOLS[0]], ["trade"], "deribit"), (SYMBOLS, [HOSTILE_TYPES[0]],
                                                                                  "deribit"), (
            SYMBOLS, ["trade"], HOSTILE_EXCHANGES[0]):
        with pytest.raises(UsageError):
            get_data_without_gap(exchange, symbols, types, lookback="5m", recording_warmup_seconds=0,
                                 database_url=database_url, tardis_url=tardis.http_url, tardis_ws_url=tardis.ws_url)
    store = Storage(database_url, create=False)
    try:
        assert table_counts(store) == before
    finally:
        store.close()


@pytest.mark.parametrize("what", ["symbol", "exchange"])
def test_the_gapless_class_refuses_hostile_names_like_the_command_line(tardis, database_url, what):
    symbols, exchange = SYMBOLS, "deribit"
    if what == "symbol":
        symbols = [HOSTILE_SYMBOLS[0]]
    else:
        exchange = HOSTILE_EXCHANGES[0]
    with pytest.raises(UsageError):
        Gapless(exchange, symbols, ["trade"], lookback="5m", database_url=database_url, tardis_url=tardis.http_url,
                tardis_ws_url=tardis.ws_url, history_delay="10s", now=tardis.clock.now_us)


def test_hostile_strings_reaching_storage_are_data_never_sql(store):
    """Below the validation, every query is parameterised: hostile values are stored and read back verbatim."""
    start = us("2026-11-25T00:05")
    rows = []
    for i, symbol in enumerate(HOSTILE_SYMBOLS):
        for k in range(3):
            ts = start + (i * 60 + k * 10) * 10 ** 6
            rows.append((HOSTILE_EXCHANGES[0], symbol, "trade", "trade", "replay", ts, ts + 1000,
                         "id'); DROP TABLE trade;--%d" % k, 100.0 + k, 1.0, "buy", None))
    claims = [Claim(HOSTILE_EXCHANGES[0], symbol, "trade", "replay", "seg'; DROP TABLE coverage;--", start,
                    start + 10 * 60 * 10 ** 6, end_reason="complete'--") for symbol in HOSTILE_SYMBOLS]
    assert store.write({"trade": rows}, claims) == len(rows)
    for table in ('trade"; DROP TABLE coverage; --', "coverage; DROP TABLE trade"):
        with pytest.raises((KeyError, ValueError, GaplessError)):
            store.ensure_tables({table})
    tables = set(store.db.get_tables())
    assert {"trade", "coverage", "gapless_meta"} <= tables
    for symbol in HOSTILE_SYMBOLS:
        assert store.covered(HOSTILE_EXCHANGES[0], symbol, "trade", "replay") == [(start, start + 600 * 10 ** 6)]
        _, read = store.read_rows("trade", HOSTILE_EXCHANGES[0], symbol, "trade", "replay", start, start + 3600 * 10 ** 6)
        assert [r[1] for r in read] == [symbol] * 3
        assert store.count_rows("trade", symbol=symbol) == 3
    assert store.covered("deribit' OR '1'='1", "X' OR '1'='1", "trade", "replay") == []
    assert store.count_rows("trade", symbol="X' OR '1'='1") == 0
    end = start + 10 * 60 * 10 ** 6
    frames = series(store, HOSTILE_EXCHANGES[0], HOSTILE_SYMBOLS, ["trade"], start, end)
    assert all(not f["missing"].any() for f in frames.values())
    report = status_report(store, [(HOSTILE_EXCHANGES[0], HOSTILE_SYMBOLS, ["trade"])], 10 * 60 * 10 ** 6,
                           {HOSTILE_EXCHANGES[0]: {"delay": 0}}, end + 10 ** 7)
    assert [s["symbol"] for s in report["streams"]] == HOSTILE_SYMBOLS and all(s["gapless"] for s in report["streams"])
    rebuild(store, [(HOSTILE_EXCHANGES[0], s, "trade") for s in HOSTILE_SYMBOLS], start, end)
    for symbol in HOSTILE_SYMBOLS:
        assert len(read_published(store, HOSTILE_EXCHANGES[0], symbol, "trade")) == 10
    assert store.count_rows("trade") == len(rows)
    assert len(store.coverage_rows()) == len(claims)  # nothing dropped, nothing deleted
