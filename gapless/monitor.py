"""What an operator sees of a running service: metrics and health over HTTP, systemd notifications, the picture.

A :class:`Monitor` is fed by the service through a few calls, all with plain data:

- :meth:`Monitor.start` / :meth:`Monitor.stop`: the metrics listener (only when an address is set:
  without one no socket is opened);
- :meth:`Monitor.ready`, :meth:`Monitor.tick` (each turn of the service's main loop), :meth:`Monitor.progress`
  (long work in the main thread, e.g. the initial download) and :meth:`Monitor.stopping`: ``READY=1``,
  ``WATCHDOG=1`` while every component is alive, ``STOPPING=1``;
- :meth:`Monitor.downloaded` after each download and :meth:`Monitor.rebuilt` after each rebuild:
  metrics, a one-line ``STATUS=``, and the coverage picture (rewritten atomically; a failure to draw
  is logged and never stops the service).

The service passes two callables: ``telemetry()`` (counters, see :class:`~gapless.metrics.Metrics`) and
``components()`` (``{name: alive}``, e.g. the recorder thread and the scheduler).
"""
import logging
import threading

from .exceptions import ConfigurationError, UsageError
from .notify import Notifier
from .urls import parse_host_port

log = logging.getLogger(__name__)

SOURCES = ("replay", "live", "missing")


class Monitor:
    """Metrics listener, systemd notifier and coverage picture of one service (each optional)."""

    def __init__(self, exchange, metrics_addr=None, plot_path=None, telemetry=None, components=None, notifier=None):
        self.exchange = exchange
        self.metrics_address = _address(metrics_addr, "metrics_addr") if metrics_addr else None
        self.plot_path = plot_path or None
        self.telemetry = telemetry or dict
        self.components = components or dict
        self.notifier = notifier if notifier is not None else Notifier()
        self.metrics = None
        self.server = None
        self.picture = None
        self._replay_malformed = {}  # exchange -> malformed replay lines
        self._main_thread = None
        self._lock = threading.Lock()

    # -- metrics listener ------------------------------------------------------------------------
    def start(self):
        """Start the metrics listener if an address is configured (idempotent)."""
        if self.metrics_address is None or self.server is not None:
            return self
        from .metrics import Metrics, MetricsServer
        host, port = self.metrics_address
        self.metrics = Metrics(telemetry=self._telemetry)
        server = MetricsServer(self.metrics, host, port, components=self.components)
        try:
            server.start()
        except OSError as exc:
            raise ConfigurationError("metrics listener (GAPLESS_METRICS_ADDR): cannot listen on %s:%d (%s)"
                                     % (host, port, exc.strerror or exc)) from None
        self.server = server
        return self

    @property
    def port(self):
        """The metrics listener's bound port (None when it is off)."""
        return self.server.port if self.server is not None else None

    def stop(self):
        """Stop the metrics listener and close the notification socket."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.notifier.close()

    def alive(self):
        """True when every component reports alive."""
        components = self.components()
        return bool(components) and all(components.values())

    # -- systemd ---------------------------------------------------------------------------------
    def ready(self, status=None):
        """``READY=1``: from now on this is a service that notifies (``STATUS=`` after each rebuild), and the
        calling thread is the one whose progress feeds the watchdog."""
        self._main_thread = threading.current_thread()
        self.notifier.ready(status)

    def tick(self):
        """One turn of the main loop: ``WATCHDOG=1`` (rate-limited) only while every component is alive."""
        if self.alive():
            self.notifier.watchdog()

    def progress(self, *_):
        """Long work in the main thread made progress: same as :meth:`tick`; ignored from other threads."""
        if threading.current_thread() is self._main_thread:
            self.tick()

    def stopping(self, status=None):
        """``STOPPING=1``."""
        self.notifier.stopping(status)

    # -- after each pass -------------------------------------------------------------------------
    def downloaded(self, report, exchange=None):
        """Count what one exchange's download report says (malformed replay lines)."""
        if report is not None:
            exchange = exchange or self.exchange
            with self._lock:
                self._replay_malformed[exchange] = self._replay_malformed.get(exchange, 0) + report.malformed

    def rebuilt(self, report, gaps=None, frames=None, draw=True):
        """Publish one pass: metrics, ``STATUS=``, and the picture (unless ``draw`` is false: the early passes
        of final minutes leave it to the tick). ``gaps`` and ``frames`` are callables returning the gaps with
        reasons and the series (called only when a picture is drawn)."""
        try:
            minutes, disagreements = {}, {}
            for key, result in report.streams.items():
                minutes[key] = {s: int(result.minutes.get(s, 0)) for s in SOURCES}
                disagreements[key] = result.comparison.disagreements
            if self.metrics is not None:
                self.metrics.rebuilt(minutes, disagreements, report.seconds)
            if self._main_thread is not None:  # only a service notifies, never a library user's process
                missing = sum(counts["missing"] for counts in minutes.values())
                failed = sum(1 for result in report.streams.values() if result.error)
                self.notifier.status(summary(self.exchange, len(report.streams), missing, failed))
        except Exception:  # monitoring must never fail a healing pass
            log.exception("publishing the rebuild to metrics and the service manager failed")
        if self.plot_path and draw:
            try:
                gaps = gaps() if gaps else []
                frames = frames() if frames else {}
            except Exception:
                log.exception("reading the series and gaps for the coverage picture failed")
                return
            self.draw(frames, gaps)

    def draw(self, frames, gaps):
        """Rewrite the picture at ``plot_path``; errors are logged, never raised."""
        from .plot import draw_coverage
        try:
            self.picture = draw_coverage(frames, gaps, self.plot_path, title="gapless %s" % self.exchange)
        except Exception:  # a picture is a convenience: it must never stop healing
            log.exception("drawing the coverage picture %s failed", self.plot_path)

    def _telemetry(self):
        values = dict(self.telemetry() or {})
        malformed = dict(values.get("malformed", {}))
        with self._lock:
            for exchange, count in self._replay_malformed.items():
                malformed[(exchange, "replay")] = malformed.get((exchange, "replay"), 0) + count
        values["malformed"] = malformed
        return values


def summary(exchange, streams, missing, failed=0):
    """The one-line ``STATUS=`` text."""
    text = "%s: %d stream(s), %s" % (exchange, streams, "gapless" if not missing else
                                     "%d missing minute(s)" % missing)
    return text + (", %d could not be published" % failed if failed else "")


def _address(value, label):
    if isinstance(value, tuple):
        return value
    try:
        return parse_host_port(value, label)
    except UsageError as exc:
        raise ConfigurationError(str(exc)) from None
