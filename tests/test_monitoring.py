"""Watching a running service: /metrics and /health over real HTTP, and systemd notifications on a real socket.

The service runs against the fake tardis-machine with real SQLite files; metrics are scraped with
``requests`` and parsed with prometheus_client's own parser; notifications arrive on a unix datagram
socket bound in the test, exactly as systemd's ``NOTIFY_SOCKET``.
"""
import logging
import re
import socket
import threading
import time
import uuid

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gapless.cli import main
from gapless.metrics import MetricsServer, Metrics
from gapless.notify import Notifier
from tests.service_process import service_log, start_service, stop_service
from tests.support import make_gapless, wait_until

TYPES = ["quote_1m", "trade"]
STREAMS = {(s, t) for s in ("BTC-PERPETUAL", "ETH-PERPETUAL") for t in TYPES}


def scrape(base):
    """``{(name, labels as a sorted tuple): value}`` of one real scrape of ``/metrics``."""
    answer = requests.get(base + "/metrics", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def values(samples, name, **labels):
    """``{labels: value}`` of the samples of one metric whose labels include ``labels``."""
    return {key[1]: value for key, value in samples.items()
            if key[0] == name and set(labels.items()) <= set(key[1])}


def one(samples, name, **labels):
    found = values(samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return next(iter(found.values()))


def listening_ports():
    return {c.laddr.port for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


# -- /metrics and /health ------------------------------------------------------------------------
def test_metrics_and_health_during_a_run(tardis, tmp_path):
    began = time.time()
    picture = tmp_path / "coverage.png"
    gapless = make_gapless("sqlite:///%s" % (tmp_path / "gapless.db"), tardis, TYPES, metrics_addr="127.0.0.1:0",
                           plot=str(picture))
    with gapless:
        base = "http://127.0.0.1:%d" % gapless.monitor.port
        store = gapless.storage
        wait_until(lambda: gapless.last_rebuild is not None and store.count_rows("trade", source="live") > 0,
                   timeout=30, message="a rebuild and recorded trades")
        health = requests.get(base + "/health", timeout=5)
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "components": {"recorder": True, "scheduler": True}}

        replay_before = store.count_rows("trade", source="replay")
        samples = scrape(base)
        replay_after = store.count_rows("trade", source="replay")
        # minutes of the 10-minute window by source, for every stream, 'missing' included
        minutes = values(samples, "gapless_minutes", exchange="deribit")
        assert {(dict(k)["symbol"], dict(k)["data_type"]) for k in minutes} == STREAMS
        assert {dict(k)["source"] for k in minutes} == {"replay", "live", "missing"}
        for symbol, data_type in STREAMS:
            assert sum(values(samples, "gapless_minutes", symbol=symbol, data_type=data_type).values()) == 10
        assert one(samples, "gapless_minutes", symbol="BTC-PERPETUAL", data_type="trade", source="replay") > 0
        # this process stored every row of the fresh database: the counter matches the table
        assert replay_before <= one(samples, "gapless_rows_stored_total", exchange="deribit", source="replay",
                                    table="trade") <= replay_after
        assert one(samples, "gapless_rows_stored_total", source="live", table="trade") > 0
        assert one(samples, "gapless_rows_stored_total", source="live", table="book_snapshot_1") >= 0
        assert 0 <= one(samples, "gapless_live_lag_seconds", exchange="deribit") < 30
        # the delay in use is measured: never less than the double's real availability delay
        delay = one(samples, "gapless_history_delay_seconds", exchange="deribit")
        assert delay >= tardis.availability_delay_us / 1e6
        assert delay == gapless.horizon.state()["delay"] / 1e6
        assert began <= one(samples, "gapless_last_rebuild_timestamp_seconds") <= time.time()
        assert one(samples, "gapless_rebuild_duration_seconds_count") >= 1
        assert one(samples, "gapless_rebuild_duration_seconds_bucket", le="+Inf") >= 1
        assert set(values(samples, "gapless_disagreements").values()) == {0}
        assert len(values(samples, "gapless_disagreements")) == 4
        assert one(samples, "gapless_recorder_reconnects_total", exchange="deribit") == 0
        assert one(samples, "gapless_malformed_lines_total", exchange="deribit", source="live") == 0
        assert one(samples, "gapless_malformed_lines_total", exchange="deribit", source="replay") == 0

        # counters follow what happens: a malformed frame, a dropped connection
        tardis.inject_frame("{not json")
        wait_until(lambda: one(scrape(base), "gapless_malformed_lines_total", source="live") == 1,
                   message="the malformed frame counted")
        tardis.drop_clients()
        wait_until(lambda: one(scrape(base), "gapless_recorder_reconnects_total", exchange="deribit") >= 1,
                   message="the reconnect counted")
        # the picture is rewritten after each rebuild
        wait_until(picture.exists, message="GAPLESS_PLOT written")

        # the recorder thread ends for real: health turns 503 and names it; metrics still answer
        gapless.recorder.stop()
        assert not gapless.recorder.is_alive()
        health = requests.get(base + "/health", timeout=5)
        assert health.status_code == 503
        assert health.json() == {"status": "failing", "components": {"recorder": False, "scheduler": True}}
        assert scrape(base)
        assert requests.get(base + "/other", timeout=5).status_code == 404
    with pytest.raises(requests.ConnectionError):  # stop() closed the listener
        requests.get(base + "/health", timeout=5)


def test_without_the_setting_no_socket_listens(tardis, tmp_path):
    before = listening_ports()
    gapless = make_gapless("sqlite:///%s" % (tmp_path / "gapless.db"), tardis, TYPES)
    with gapless:
        wait_until(lambda: gapless.last_rebuild is not None, timeout=30, message="a rebuild")
        assert gapless.monitor.port is None
        assert listening_ports() == before


def test_two_services_in_one_process_have_their_own_metrics(tardis, tmp_path):
    first = make_gapless("sqlite:///%s" % (tmp_path / "a.db"), tardis, ["trade"], metrics_addr="127.0.0.1:0")
    second = make_gapless("sqlite:///%s" % (tmp_path / "b.db"), tardis, ["quote_1m"], symbols=["ETH-PERPETUAL"],
                          metrics_addr="127.0.0.1:0")
    with first, second:
        wait_until(lambda: first.last_rebuild is not None and second.last_rebuild is not None, timeout=30,
                   message="both rebuilt")
        a = scrape("http://127.0.0.1:%d" % first.monitor.port)
        b = scrape("http://127.0.0.1:%d" % second.monitor.port)
    assert {dict(k)["data_type"] for k in values(a, "gapless_minutes")} == {"trade"}
    assert {(dict(k)["symbol"], dict(k)["data_type"]) for k in values(b, "gapless_minutes")} == {
        ("ETH-PERPETUAL", "quote_1m")}


def test_a_non_loopback_address_is_allowed_with_a_warning(caplog):
    server = MetricsServer(Metrics(), "0.0.0.0", 0, components=lambda: {"recorder": True})
    with caplog.at_level(logging.WARNING, logger="gapless.metrics"):
        server.start()
    try:
        assert "reachable from other hosts" in caplog.text
        assert requests.get("http://127.0.0.1:%d/health" % server.port, timeout=5).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("setting, value, text", [
    ("GAPLESS_METRICS_ADDR", "9108", "GAPLESS_METRICS_ADDR: '9108' is not host:port"),
    ("GAPLESS_METRICS_ADDR", "127.0.0.1:99999", "is not host:port"),
    ("GAPLESS_METRICS_ADDR", "::1:9108", "is not host:port"),
    ("GAPLESS_PLOT", "coverage.jpg", "GAPLESS_PLOT: 'coverage.jpg' must end in .png"),
])
def test_bad_monitoring_settings_exit_2_naming_them(isolated_cli, monkeypatch, capsys, setting, value, text):
    monkeypatch.setenv(setting, value)
    assert main(["status"]) == 2
    assert text in capsys.readouterr().err


def test_a_metrics_port_in_use_exits_2(tardis, tmp_path, isolated_cli, monkeypatch, capsys):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        monkeypatch.setenv("GAPLESS_TARDIS_URL", tardis.http_url)
        monkeypatch.setenv("GAPLESS_TARDIS_WS_URL", tardis.ws_url)
        monkeypatch.setenv("GAPLESS_DATABASE_URL", "sqlite:///%s" % (tmp_path / "gapless.db"))
        monkeypatch.setenv("GAPLESS_METRICS_ADDR", "127.0.0.1:%d" % port)
        assert main(["serve"]) == 2
    finally:
        busy.close()
    assert "GAPLESS_METRICS_ADDR): cannot listen on 127.0.0.1:%d" % port in capsys.readouterr().err


# -- systemd notifications ---------------------------------------------------------------------
class NotifySocket:
    """A unix datagram socket bound like systemd's NOTIFY_SOCKET; collects (time, message) pairs."""

    def __init__(self, address):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address)
        self.socket.settimeout(0.2)
        self.messages = []

    def receive(self):
        """Take every datagram waiting (up to 0.2 s for the first)."""
        while True:
            try:
                data = self.socket.recv(4096)
            except (socket.timeout, BlockingIOError):
                return self.messages
            self.messages.append((time.monotonic(), data.decode()))
            self.socket.settimeout(0.0)
            continue

    def wait_for(self, predicate, timeout=30.0, message="notification"):
        def check():
            self.socket.settimeout(0.2)
            self.receive()
            return predicate(self.lines())
        return wait_until(check, timeout=timeout, interval=0.0, message=message)

    def lines(self):
        return [line for _, text in self.messages for line in text.split("\n")]

    def close(self):
        self.socket.close()


@pytest.mark.slow
def test_the_service_process_notifies_systemd_and_serves_metrics(tardis, tmp_path):
    path = str(tmp_path / "notify.sock")
    assert len(path) < 100  # sockaddr_un's limit
    notify = NotifySocket(path)
    picture = tmp_path / "service.png"
    process = start_service(tardis, "sqlite:///%s" % (tmp_path / "gapless.db"), tmp_path,
                            NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000", GAPLESS_METRICS_ADDR="127.0.0.1:0",
                            GAPLESS_PLOT=str(picture))
    try:
        notify.wait_for(lambda lines: "READY=1" in lines, message="READY=1")
        notify.wait_for(lambda lines: lines.count("WATCHDOG=1") >= 3, message="three WATCHDOG=1")
        notify.wait_for(lambda lines: any(re.match(r"STATUS=deribit: 6 stream\(s\), (gapless|\d+ missing minute)", line)
                                          for line in lines), message="STATUS= after a pass")
        # the real process's listener (port 0: the bound port is in its log)
        port = wait_until(lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", service_log(process)),
                          message="the metrics port in the log").group(1)
        base = "http://127.0.0.1:%s" % port
        assert requests.get(base + "/health", timeout=5).status_code == 200
        samples = wait_until(lambda: (lambda s: s if values(s, "gapless_minutes") else None)(scrape(base)),
                             message="minutes published")
        assert len(values(samples, "gapless_minutes")) == 6 * 3
        wait_until(picture.exists, message="GAPLESS_PLOT written")
        code, _ = stop_service(process)
        assert code == 0, service_log(process)
        notify.wait_for(lambda lines: "STOPPING=1" in lines, message="STOPPING=1")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        notify.close()
    lines = notify.lines()
    assert lines.index("READY=1") < lines.index("WATCHDOG=1") < lines.index("STOPPING=1")
    assert "WATCHDOG=1" not in lines[lines.index("STOPPING=1"):]
    # the watchdog comes every ~half of WATCHDOG_USEC, bounded by the main loop's 1 s turn
    times = [t for t, text in notify.messages if text == "WATCHDOG=1"]
    assert all(0.4 < b - a < 3.0 for a, b in zip(times, times[1:])), times


@pytest.mark.slow
def test_watchdog_stops_when_the_recorder_thread_dies(tardis, tmp_path, monkeypatch):
    address = "@gapless-test-%s" % uuid.uuid4().hex  # an abstract socket name, as systemd may pass
    notify = NotifySocket("\0" + address[1:])
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    gapless = make_gapless("sqlite:///%s" % (tmp_path / "gapless.db"), tardis, TYPES)
    result = {}
    runner = threading.Thread(target=lambda: result.update(status=gapless.run(install_signals=False)),
                              name="test-service", daemon=True)
    runner.start()
    try:
        notify.wait_for(lambda lines: "READY=1" in lines, message="READY=1")
        notify.wait_for(lambda lines: lines.count("WATCHDOG=1") >= 3, message="three WATCHDOG=1")
        gapless.recorder.stop()  # the thread ends for real
        assert not gapless.recorder.is_alive()
        notify.receive()
        seen = len(notify.lines())
        notify.wait_for(lambda lines: "STOPPING=1" in lines, message="STOPPING=1")
        runner.join(15)
    finally:
        gapless.stop_event.set()
        runner.join(15)
        notify.close()
    assert result["status"] == 3  # a component died: exit non-zero so systemd restarts us
    after = notify.lines()[seen:]
    assert "WATCHDOG=1" not in after and "STOPPING=1" in after


def test_a_library_user_gets_no_notifications(tardis, tmp_path, monkeypatch):
    # start()/stop() inside someone else's Type=notify service: only run() (the service) notifies
    path = str(tmp_path / "notify.sock")
    notify = NotifySocket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    gapless = make_gapless("sqlite:///%s" % (tmp_path / "gapless.db"), tardis, TYPES)
    try:
        with gapless:
            wait_until(lambda: gapless.last_rebuild is not None, timeout=30, message="a rebuild")
        notify.receive()
        assert notify.messages == []
    finally:
        notify.close()


def test_the_notifier_is_silent_without_notify_socket_and_rate_limits_the_watchdog(tmp_path):
    assert not Notifier({}).enabled
    assert Notifier({}).ready() is False and Notifier({}).watchdog() is False
    path = str(tmp_path / "n.sock")
    notify = NotifySocket(path)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"})
        assert notifier.watchdog_interval == 30.0
        assert notifier.watchdog() is True and notifier.watchdog() is False  # once per half period
        assert notifier.status("a\nb") is True
        assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}).watchdog() is False
        notify.receive()
        assert [text for _, text in notify.messages] == ["WATCHDOG=1", "STATUS=a b"]
    finally:
        notify.close()
    gone = Notifier({"NOTIFY_SOCKET": path})  # the manager went away: logged, never raised
    assert gone.ready() is False
