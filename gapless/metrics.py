"""Prometheus metrics and a health check over HTTP (``GAPLESS_METRICS_ADDR``; off by default).

:class:`Metrics` keeps its OWN registry (several services in one process never clash) and exports:

========================================================  ======  ==========================================
``gapless_minutes{exchange,symbol,data_type,source}``     gauge   minutes of the window by source (replay,
                                                                  live, missing) in the last rebuild
``gapless_live_lag_seconds{exchange}``                    gauge   now minus the newest live message (since
                                                                  the listener started while none arrived)
``gapless_history_delay_seconds{exchange}``               gauge   how far history (replay) lags now
``gapless_last_rebuild_timestamp_seconds``                gauge   Unix time of the last rebuild
``gapless_rebuild_duration_seconds``                      histo   seconds per rebuild (stitch + publish)
``gapless_rows_stored_total{exchange,source,table}``      counter rows inserted by this process
``gapless_recorder_reconnects_total{exchange}``           counter live reconnects of this process
``gapless_malformed_lines_total{exchange,source}``        counter malformed lines (replay) / frames (live)
``gapless_disagreements{exchange,symbol,data_type}``      gauge   replay/live disagreeing minutes (last rebuild)
========================================================  ======  ==========================================

Counters that grow elsewhere are read at scrape time from a ``telemetry()`` callback returning plain
data (see :meth:`Metrics.collect`); rebuild results are pushed with :meth:`Metrics.rebuilt`.
:class:`MetricsServer` serves ``/metrics`` and ``/health`` (200 while every component of the
``components()`` callback is alive, else 503) from a small threaded HTTP server.
"""
import ipaddress
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

REBUILD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SOURCES = ("replay", "live", "missing")


class Metrics:
    """The metric values of one service, in a registry of its own.

    ``telemetry`` is a callable returning ``{"live_lag_seconds": {exchange: s or None},
    "history_delay_seconds": {exchange: s}, "reconnects": {exchange: n}, "malformed": {(exchange,
    source): n}, "rows_stored": {(exchange, source, table): n}}`` (any key may be missing). It is
    called at every scrape, so these figures are never older than the scrape.
    """

    def __init__(self, telemetry=None):
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry()
        self.telemetry = telemetry or dict
        self.rebuild_duration = Histogram("gapless_rebuild_duration_seconds",
                                          "Seconds one rebuild of the minute series took (stitch, compare, publish)",
                                          buckets=REBUILD_BUCKETS, registry=self.registry)
        self._lock = threading.Lock()
        self._minutes = {}        # (exchange, symbol, data_type, source) -> minutes
        self._disagreements = {}  # (exchange, symbol, data_type) -> minutes
        self._last_rebuild = None
        self._started = time.monotonic()
        self.registry.register(_Collector(self))

    def rebuilt(self, minutes, disagreements, seconds, timestamp=None):
        """Record one rebuild: ``minutes`` ``{(exchange, symbol, data_type): {source: n}}``, ``disagreements``
        ``{(exchange, symbol, data_type): n}``, its duration and its Unix time (default now)."""
        self.rebuild_duration.observe(seconds)
        with self._lock:
            self._minutes = {key + (source,): int(counts.get(source, 0))
                             for key, counts in minutes.items() for source in SOURCES}
            self._disagreements = {key: int(n) for key, n in disagreements.items()}
            self._last_rebuild = time.time() if timestamp is None else timestamp

    def render(self):
        """The text exposition of every metric (what ``/metrics`` serves)."""
        from prometheus_client import generate_latest
        return generate_latest(self.registry)

    def collect(self):
        """Metric families of the last rebuild and of the telemetry callback (called by the registry)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            minutes, disagreements, last = dict(self._minutes), dict(self._disagreements), self._last_rebuild
        try:
            telemetry = self.telemetry() or {}
        except Exception:  # a scrape must still answer with what is known
            log.exception("metrics: reading the service's counters failed")
            telemetry = {}
        family = GaugeMetricFamily("gapless_minutes", "Minutes of the window by source in the last rebuild",
                                   labels=("exchange", "symbol", "data_type", "source"))
        for labels, value in sorted(minutes.items()):
            family.add_metric(labels, value)
        yield family
        family = GaugeMetricFamily("gapless_disagreements", "Minutes where replay and live disagree (last rebuild)",
                                   labels=("exchange", "symbol", "data_type"))
        for labels, value in sorted(disagreements.items()):
            family.add_metric(labels, value)
        yield family
        family = GaugeMetricFamily("gapless_last_rebuild_timestamp_seconds", "Unix time of the last rebuild")
        if last is not None:
            family.add_metric((), last)
        yield family
        family = GaugeMetricFamily("gapless_live_lag_seconds", "Seconds since the newest live message (since the "
                                   "metrics started while none has arrived)", labels=("exchange",))
        for exchange, lag in sorted(telemetry.get("live_lag_seconds", {}).items()):
            family.add_metric((exchange,), lag if lag is not None else time.monotonic() - self._started)
        yield family
        family = GaugeMetricFamily("gapless_history_delay_seconds", "How far history (replay) lags now",
                                   labels=("exchange",))
        for exchange, delay in sorted(telemetry.get("history_delay_seconds", {}).items()):
            family.add_metric((exchange,), delay)
        yield family
        family = CounterMetricFamily("gapless_rows_stored", "Rows inserted by this process (duplicates not counted)",
                                     labels=("exchange", "source", "table"))
        for labels, value in sorted(telemetry.get("rows_stored", {}).items()):
            family.add_metric(labels, value)
        yield family
        family = CounterMetricFamily("gapless_recorder_reconnects", "Reconnects of the live recorder",
                                     labels=("exchange",))
        for exchange, value in sorted(telemetry.get("reconnects", {}).items()):
            family.add_metric((exchange,), value)
        yield family
        family = CounterMetricFamily("gapless_malformed_lines", "Malformed replay lines or live frames (never stored)",
                                     labels=("exchange", "source"))
        for labels, value in sorted(telemetry.get("malformed", {}).items()):
            family.add_metric(labels, value)
        yield family


class _Collector:
    """Adapter: the registry calls ``collect()``; without ``describe`` it registers no fixed names."""

    def __init__(self, metrics):
        self._metrics = metrics

    def collect(self):
        return self._metrics.collect()


class MetricsServer:
    """``/metrics`` and ``/health`` on ``(host, port)`` in thread ``gapless-metrics`` (port 0: any free port).

    ``components`` is a callable returning ``{name: alive}``; ``/health`` answers 200 when all are alive,
    503 otherwise, with the dict as JSON. :attr:`port` is the bound port once started.
    """

    def __init__(self, metrics, host, port, components=None):
        self.metrics = metrics
        self.host = host
        self.port = port
        self.components = components or dict
        self._server = None
        self._thread = None

    def start(self):
        """Bind and serve in the background. Raises ``OSError`` when the address cannot be bound."""
        if not is_loopback(self.host):
            log.warning("metrics listener on %s:%d is reachable from other hosts (no authentication); "
                        "prefer 127.0.0.1 behind a firewall or a scraping proxy", self.host, self.port)
        server_class = _Server6 if ":" in self.host else _Server4
        self._server = server_class((self.host, self.port), _handler(self))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="gapless-metrics", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics (health: /health)", _bracketed(self.host), self.port)
        return self

    def stop(self, timeout=2.0):
        """Stop serving, close the socket, join the thread."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)
        self._server = self._thread = None

    def health(self):
        """``(ok, {component: alive})``."""
        components = {name: bool(alive) for name, alive in self.components().items()}
        return bool(components) and all(components.values()), components


class _Server4(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server4):
    address_family = socket.AF_INET6


def _handler(owner):
    class Handler(BaseHTTPRequestHandler):
        server_version = "gapless"
        timeout = 10  # a client that stalls mid-request does not hold its thread forever

        def do_GET(self):  # noqa: N802 (the http.server API)
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST
                    self._answer(200, owner.metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/health":
                    ok, components = owner.health()
                    body = json.dumps({"status": "ok" if ok else "failing", "components": components})
                    self._answer(200 if ok else 503, body.encode() + b"\n", "application/json")
                else:
                    self._answer(404, b"not found: try /metrics or /health\n", "text/plain")
            except Exception:  # one bad scrape must not take the listener down
                log.exception("metrics: answering %s failed", path)
                self._answer(500, b"internal error\n", "text/plain")

        def _answer(self, status, body, content_type):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # scrapes every few seconds: DEBUG, not stderr
            log.debug("metrics: %s " + fmt, self.client_address[0], *args)

    return Handler


def is_loopback(host):
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bracketed(host):
    return "[%s]" % host if ":" in host else host
