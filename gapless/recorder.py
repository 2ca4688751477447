"""Live recorder: a background thread that records tardis-machine's websocket stream into storage.

One :class:`Recorder` holds one blocking ``websocket-client`` connection for one exchange (its symbols
and data types), in one named thread. Several exchanges mean several recorders (the service makes one
per configured exchange). Frames are parsed with the same code as replay lines
(:class:`~gapless.ingest.RunParser`), stored with ``source = live``, and committed at least every
``flush_interval`` seconds (sooner when ``batch_rows`` frames are waiting), together with the coverage
of the open segment, so coverage never claims more than is stored.

A segment opens at the first message after a (re)connect and closes at the last stored message before
a drop, a ``disconnect`` message, a stop, or a crash (the next start closes what a killed process
left open). Reconnects use capped exponential backoff with jitter, reset after a healthy period. A
watchdog pings the server and reconnects a connection that has gone silent.
"""
import logging
import random
import threading
import time
import uuid
import websocket

from .datatypes import parse_data_types
from .exceptions import StorageError
from .ingest import ReplayRequest, RunParser
from .live_claims import ClaimWrites
from .owners import OWNER, owner_is_gone
from .streams import filters_of
from .subscription import data_silence_tolerance, default_flush_interval, read_ahead, refused_for_size, stream_url
from .timeutil import US, iso

log = logging.getLogger(__name__)

FOREVER_US = 2 ** 62
# an open live segment is refreshed at least every HEARTBEAT seconds by its recorder; one untouched for
# STALE_SEGMENT seconds belongs to a process that is gone (killed, crashed, machine lost)
HEARTBEAT = 5.0
STALE_SEGMENT = 30.0
FIRST_FRAME_GRACE = 15.0


class Recorder:
    """Records one exchange's live stream in a background thread (``gapless-recorder-<exchange>``).

    ``start()``, ``stop(timeout)``, context manager. ``health()`` returns the counters; they are also
    logged every ``health_interval`` seconds at INFO. A thread that dies sets :attr:`error`, makes
    :meth:`is_alive` false and logs the exception.
    """

    def __init__(self, storage, ws_url, exchange, symbols, data_types, batch_rows=5000, flush_interval=None,
                 connect_timeout=10.0, recv_timeout=0.5, backoff_base=0.5, backoff_cap=30.0, healthy_after=60.0,
                 ping_interval=20.0, dead_after=45.0, data_silence=None, health_interval=60.0,
                 max_write_failures=40, stale_segment=STALE_SEGMENT, clock=time.time, pairs=None):
        self.storage = storage
        self.ws_url = ws_url
        self.exchange = exchange
        self.symbols = tuple(symbols)
        self.data_types = tuple(dt if isinstance(dt, str) else dt.name for dt in data_types)
        # exactly these (symbol, data type) pairs, when not every symbol x data type (see gapless.streams)
        self.pairs = tuple(pairs or ())
        self.batch_rows = batch_rows
        streams = len(self.pairs) or len(self.symbols) * len(self.data_types)
        self.flush_interval = flush_interval if flush_interval is not None else default_flush_interval(streams)
        self.connect_timeout = connect_timeout
        self.recv_timeout = recv_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.healthy_after = healthy_after
        self.ping_interval = ping_interval
        self.dead_after = dead_after
        self.data_silence = data_silence if data_silence is not None else data_silence_tolerance(self.data_types)
        self.health_interval = health_interval
        self.max_write_failures = max_write_failures
        self.stale_segment = stale_segment
        self.clock = clock
        self.url = stream_url(ws_url, exchange, self.symbols, self.data_types,
                              filters_of(self.pairs) if self.pairs else None)
        self.error = None
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self._ws = None
        self._counters = {"frames_received": 0, "rows_stored": 0, "duplicates": 0, "malformed": 0,
                          "server_errors": 0, "disconnects": 0, "reconnects": 0, "connections": 0,
                          "write_failures": 0}
        self._connected = False
        self._uncommitted = 0
        self._segment_start = None
        self._last_message_us = None
        self._commit_delays = []
        self._run_ids = set()
        self._claim_writes = ClaimWrites()
        # called with the claims of every batch written (the service publishes the minutes they make final)
        self.on_claimed = None
        storage.ensure_tables({t.table for t in parse_data_types(list(self.data_types))})

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self):
        """Repair segments a killed recorder left open, then start the recording thread."""
        if self._thread is not None:
            raise RuntimeError("recorder already started")
        self.repair_open_segments()
        self._thread = threading.Thread(target=self._run, name="gapless-recorder-%s" % self.exchange, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=5.0):
        """Stop: flush what was received, close the segment, close the connection, join the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("recorder thread did not stop within %.1fs", timeout)
                return False
        return True

    def is_alive(self):
        """True while the recording thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- health --------------------------------------------------------------------------------
    def health(self):
        """Counters and state: frames received, rows stored, malformed, errors, reconnects, lag..."""
        with self._lock:
            result = dict(self._counters)
            result["connected"] = self._connected
            result["uncommitted"] = self._uncommitted  # frames received and not stored yet
            result["alive"] = self.is_alive()
            result["segment_start"] = self._segment_start
            result["last_message_us"] = self._last_message_us
            now = int(self.clock() * US)
            result["lag_seconds"] = (now - self._last_message_us) / US if self._last_message_us else None
            delays = sorted(self._commit_delays)
            result["commit_delay_p99"] = delays[int(len(delays) * 0.99) - 1] if delays else None
            result["error"] = repr(self.error) if self.error else None
        return result

    def commit_delays(self):
        """Receipt-to-commit delays (seconds) of recent frames, for benchmarks."""
        with self._lock:
            return list(self._commit_delays)

    def _log_health(self):
        h = self.health()
        log.info("recorder %s: %s, frames %d, stored %d, malformed %d, server errors %d, reconnects %d, "
                 "segment since %s, last message %s, lag %s", self.exchange,
                 "connected" if h["connected"] else "DISCONNECTED", h["frames_received"], h["rows_stored"],
                 h["malformed"], h["server_errors"], h["reconnects"],
                 iso(h["segment_start"]) if h["segment_start"] else "-",
                 iso(h["last_message_us"]) if h["last_message_us"] else "-",
                 "%.1fs" % h["lag_seconds"] if h["lag_seconds"] is not None else "-")

    def _count(self, **deltas):
        with self._lock:
            for key, value in deltas.items():
                self._counters[key] += value

    # -- crash repair --------------------------------------------------------------------------
    def repair_open_segments(self):
        """Close live segments of our streams that a killed process left open, at their last commit.

        A segment still being refreshed by another running recorder (same streams, another process)
        is left alone. Freshness is judged on the wall clock, the one ``updated_at`` is written with.
        """
        now = int(time.time() * US)
        ours = set(self.pairs) if self.pairs else {(s, d) for s in self.symbols for d in self.data_types}
        repaired = []
        for row in self.storage.open_segments("live"):
            if row["exchange"] != self.exchange or (row["symbol"], row["data_type"]) not in ours:
                continue
            if row["segment"].rsplit(":", 1)[0] in self._run_ids:
                continue  # our own open segment
            if now - row["updated_at"] < self.stale_segment * US and not owner_is_gone(row.get("owner")):
                log.warning("live segment %s for %s %s is open and fresh: another recorder is running for the "
                            "same stream; both will record (rows deduplicate where tardis gives identical data)",
                            row["segment"], row["symbol"], row["data_type"])
                continue
            repaired.append(row)
        if repaired:
            from .storage import Claim
            claims = [Claim(r["exchange"], r["symbol"], r["data_type"], "live", r["segment"], r["start"], r["end"],
                            end_reason="crash", is_open=False) for r in repaired]
            self.storage.write({}, claims)
            log.warning("closed %d live segment(s) left open by a recorder that stopped without closing them "
                        "(crash or kill); they end at their last committed message", len(claims))
        return len(repaired)

    # -- thread body ---------------------------------------------------------------------------
    def _run(self):
        next_health = time.monotonic() + self.health_interval
        self._next_repair = time.monotonic() + self.stale_segment
        attempt = 0
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                connected = self._session()
                if self._stop.is_set():
                    break
                healthy = connected and time.monotonic() - began >= self.healthy_after
                attempt = 1 if healthy else attempt + 1
                delay = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                self._count(reconnects=1)
                log.warning("recorder %s: reconnecting in %.1fs (attempt %d)", self.exchange, delay, attempt)
                if time.monotonic() > next_health:
                    self._log_health()
                    next_health = time.monotonic() + self.health_interval
                self._stop.wait(delay)
        except BaseException as exc:  # recorded, logged with its traceback, and seen by is_alive() == False
            self.error = exc
            log.exception("recorder %s died", self.exchange)
        finally:
            self._connected = False
            h = self.health()
            log.info("recorder %s stopped: frames received %d, rows stored %d, duplicates %d, malformed %d, "
                     "reconnects %d", self.exchange, h["frames_received"], h["rows_stored"], h["duplicates"],
                     h["malformed"], h["reconnects"])

    def _session(self):
        """One connection: connect, receive and commit until it drops or we stop. True if it connected."""
        try:
            ws = read_ahead(websocket.create_connection(self.url, timeout=self.connect_timeout,
                                                        skip_utf8_validation=True, enable_multithread=False))
        except (OSError, websocket.WebSocketException) as exc:
            log.warning("recorder %s: cannot connect to tardis-machine at %s (%s)%s", self.exchange, self.ws_url,
                        _reason(exc), refused_for_size(exc, self.url))
            return False
        self._count(connections=1)
        with self._lock:
            self._connected = True
        log.info("recorder %s: connected to %s for %s / %s", self.exchange, self.ws_url, ",".join(self.symbols),
                 ",".join(self.data_types))
        request = ReplayRequest(self.exchange, self.symbols, self.data_types, 0, FOREVER_US, pairs=self.pairs)
        parser = RunParser(request, batch_rows=self.batch_rows, source="live", live=True)
        parser.run_id = "live-%s" % uuid.uuid4().hex[:16]
        parser.owner = OWNER
        self._run_ids.add(parser.run_id)
        pending = []
        pending_times = []
        reason = "drop"
        ws.settimeout(self.recv_timeout)
        last_flush = last_data = last_frame = time.monotonic()
        got_data = False
        last_ping = last_frame
        next_health = time.monotonic() + self.health_interval
        try:
            while True:
                if self._stop.is_set():
                    reason = "stop"
                    break
                try:
                    opcode, data = ws.recv_data(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    opcode = None
                except (websocket.WebSocketConnectionClosedException, OSError,
                        websocket.WebSocketException) as exc:
                    log.warning("recorder %s: connection lost (%s)", self.exchange, _reason(exc))
                    break
                now = time.monotonic()
                if opcode is not None:
                    last_frame = now
                    if opcode == websocket.ABNF.OPCODE_TEXT:
                        pending.append(data)
                        pending_times.append(now)
                        self._uncommitted = len(pending)
                        last_data = now
                        got_data = True
                    elif opcode == websocket.ABNF.OPCODE_CLOSE:
                        log.warning("recorder %s: tardis-machine closed the connection", self.exchange)
                        break
                if pending and (len(pending) >= self.batch_rows or now - last_flush >= self.flush_interval):
                    self._commit(parser, pending, pending_times, final=None)
                    pending, pending_times = [], []
                    self._uncommitted = 0
                    last_flush = time.monotonic()
                elif not pending and now - last_flush >= HEARTBEAT:
                    # heartbeat: keeps the open segment's updated_at fresh so a restart can tell us from a crash
                    self._commit(parser, [], [], final=None)
                    last_flush = now
                if now - last_frame > (self.dead_after if got_data else max(self.dead_after, FIRST_FRAME_GRACE)):
                    log.warning("recorder %s: nothing received for %.0fs; reconnecting", self.exchange,
                                now - last_frame)
                    reason = "stale"
                    break
                # the first frame may take longer (the server subscribes upstream first)
                silence_limit = self.data_silence if got_data else max(self.data_silence, FIRST_FRAME_GRACE)
                if now - last_data > silence_limit:
                    log.warning("recorder %s: no data for %.0fs; reconnecting", self.exchange, now - last_data)
                    reason = "stale"
                    break
                if now - last_ping > self.ping_interval:
                    try:
                        ws.ping()
                    except (OSError, websocket.WebSocketException):
                        break
                    last_ping = now
                if now > next_health:
                    self._log_health()
                    next_health = now + self.health_interval
                if now > self._next_repair:
                    # a recorder of the same streams that died while we run leaves segments to close
                    self.repair_open_segments()
                    self._next_repair = now + self.stale_segment
        finally:
            with self._lock:
                self._connected = False
            try:
                self._commit(parser, pending, pending_times, final=reason)
            finally:
                try:
                    ws.close(timeout=1.0)
                except (OSError, websocket.WebSocketException):
                    pass
        return True

    def _commit(self, parser, frames, times, final):
        """Parse and store frames with the open segment's coverage; on ``final`` close the segment."""
        batches = parser.feed(frames)
        batches.append(parser.close(final) if final else parser.flush())
        received = len(frames)
        for batch in batches:
            self._write_with_retry(batch)
        committed = time.monotonic()
        errors = sum(b.errors for b in batches)
        disconnects = sum(b.disconnects for b in batches)
        malformed = sum(b.malformed for b in batches)
        for batch in batches:
            for sample in batch.samples:
                log.warning("recorder %s: malformed frame: %s", self.exchange, sample)
        with self._lock:
            self._counters["frames_received"] += received
            self._counters["malformed"] += malformed
            self._counters["server_errors"] += errors
            self._counters["disconnects"] += disconnects
            self._segment_start = parser.segment_start
            if parser.last_arrival:
                self._last_message_us = parser.last_arrival
            if times:
                self._commit_delays.extend(committed - t for t in times[::max(1, len(times) // 200)])
                del self._commit_delays[:-20000]
        if errors:
            log.warning("recorder %s: tardis-machine sent %d error message(s)", self.exchange, errors)

    def _write_with_retry(self, batch):
        """Write one batch; retry while the database is locked or full, then give up (the thread dies).

        Of the batch's claims, only those due are written (:mod:`gapless.live_claims`)."""
        failures = 0
        now = time.monotonic()
        batch.claims = self._claim_writes.due(batch.claims, now)
        while True:
            try:
                inserted = self.storage.write(batch.rows, batch.claims)
                self._claim_writes.written(batch.claims, now)
                rows = sum(len(r) for r in batch.rows.values())
                self._count(rows_stored=inserted, duplicates=rows - inserted)
                if self.on_claimed is not None and batch.claims:
                    self.on_claimed(batch.claims)
                return
            except StorageError as exc:
                failures += 1
                self._count(write_failures=1)
                if failures >= self.max_write_failures:
                    raise
                log.warning("recorder %s: write failed (%s); retrying", self.exchange, exc)
                time.sleep(min(2.0, 0.1 * failures))


def _reason(exc):
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0][:200]
