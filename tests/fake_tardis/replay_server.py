"""HTTP/1.1 server: ``GET /replay-normalized`` and ``GET /health-check`` on raw sockets.

Like tardis-machine: a 200 ``application/x-json-stream`` chunked response with one JSON
line per message in chunks of 32 lines and no end marker; errors before streaming are
a non-200 JSON body; an error after streaming started is a last line without ``\\n``.
Keep-alive connections (idle timeout 5 s). Faults (``ReplayFault``) are taken FIFO by
the next matching request. Fault-free, fully available responses are cached on disk and
then served with ``sendfile`` (or chunk by chunk when ``line_rate`` paces responses).
A response whose range reaches past the availability limit is cut there (then an error
line, or nothing in "empty" mode) and is never cached. In "empty" mode the minutes it asked past
the limit are cached EMPTY for its filter set, for good (``slices.py``: the real server does that).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from .netutil import ConnectionSet, Listener, abort, http_date, read_head
from .options import OptionsError, parse_options
from .pacing import Pacer, cached_chunks
from .render import fmt_us
from .streams import merged_replay_lines

log = logging.getLogger(__name__)

__all__ = ["ReplayServer", "ReplayFault", "RequestRecord", "FAULT_KINDS"]

FAULT_KINDS = ("cut", "error_line", "status", "malformed", "slow", "hang")
_LINES_PER_CHUNK = 32
_SEND_BATCH = 256 * 1024
_KEEPALIVE_S = 5.0


@dataclass
class ReplayFault:
    """A one-shot fault for the next replay request that ``match`` accepts (None: any)."""

    kind: str
    params: dict = field(default_factory=dict)
    match: Callable[[list[dict]], bool] | None = None


@dataclass
class RequestRecord:
    """What one /replay-normalized request asked for and what it was sent."""

    options: list[dict]
    from_: datetime | None
    to: datetime | None
    received_at: datetime
    status: int | None = None
    lines_sent: int = 0
    bytes_sent: int = 0
    fault: str | None = None
    completed: bool = False
    error_line: bool = False  # the availability / upstream error line was appended
    cached: bool = False  # served from the response cache
    cut_by_availability: bool = False  # `to` was past the availability limit (either mode)
    available_until: datetime | None = None  # that limit, when the response was cut by it
    line_rate: float | None = None  # the pace applied (lines/s), None if unpaced


def _us_dt(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, timezone.utc).replace(microsecond=us % 1_000_000)


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class _Abort(Exception):
    """Stop answering on this connection (the fault closed it)."""


class ReplayServer:
    """The HTTP side of the double; ``machine`` provides state, records and switches."""

    def __init__(self, machine, port: int = 0):
        self.m = machine
        self.listener = Listener("http", port, self._accept)
        self.conns = ConnectionSet()
        self._started = time.monotonic()
        self.stopping = threading.Event()  # interrupts hang/slow waits on stop

    @property
    def port(self) -> int:
        """The bound port (stable across stop/start)."""
        return self.listener.port

    def start(self) -> None:
        """Listen (again, on the same port)."""
        self.stopping.clear()
        self.listener.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Refuse new connections and cut the open ones (like a restart of the server)."""
        self.stopping.set()
        self.listener.stop(timeout)
        self.conns.close_all(timeout)

    def _accept(self, sock: socket.socket) -> None:
        self.conns.spawn(sock, "http", self._serve)

    # -- connection loop ---------------------------------------------------------------
    def _serve(self, sock: socket.socket, cid: int) -> None:
        sock.settimeout(_KEEPALIVE_S)  # idle keep-alive connections are closed after 5 s
        buf = bytearray()
        while True:
            try:
                head = read_head(sock, buf)
            except (OSError, socket.timeout):
                return
            if head is None:
                return
            try:
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, rest = request_line.split(" ", 1)
                target, _version = rest.rsplit(" ", 1)  # tolerate spaces in an unencoded target
            except ValueError:
                sock.sendall(_head(400, [("Content-Length", "0"), ("Connection", "close")]))
                return
            headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)}
            url = urlsplit(target)
            try:
                sock.settimeout(None)
                if url.path == "/replay-normalized" and method == "GET":
                    self.m._request_started()
                    try:
                        self._replay(sock, parse_qs(url.query))
                    finally:
                        self.m._request_ended()
                elif url.path == "/health-check" and method == "GET":
                    self._health(sock)
                else:
                    body = b"Not Found"
                    sock.sendall(self._keepalive_head(404, "text/plain", len(body)) + body)
            except _Abort:
                return
            except OSError:
                return  # client went away, or stop() shut the socket
            if headers.get("connection", "").lower() == "close":
                return
            sock.settimeout(_KEEPALIVE_S)

    @staticmethod
    def _keepalive_head(status: int, ctype: str, length: int | None, extra=()) -> bytes:
        headers = [("Content-Type", ctype), ("Date", http_date()), ("Connection", "keep-alive"),
                   ("Keep-Alive", "timeout=5")]
        headers += list(extra)
        headers.append(("Content-Length", str(length)) if length is not None else ("Transfer-Encoding", "chunked"))
        return _head(status, headers)

    def _health(self, sock: socket.socket) -> None:
        rss = 0
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        body = _json({"status": "Healthy", "uptimeHours": round((time.monotonic() - self._started) / 3600, 4),
                      "memoryInfo": {"rss": rss, "heapTotal": rss, "heapUsed": rss, "external": 0, "arrayBuffers": 0}})
        sock.sendall(self._keepalive_head(200, "application/json", len(body)) + body)

    # -- /replay-normalized ------------------------------------------------------------
    def _replay(self, sock: socket.socket, query: dict) -> None:
        m = self.m
        raw = query.get("options", [None])[0]
        rec = RequestRecord(options=[], from_=None, to=None, received_at=m.clock.now())
        try:
            parsed = json.loads(raw) if raw else None
            rec.options = parsed if isinstance(parsed, list) else ([parsed] if isinstance(parsed, dict) else [])
        except ValueError:
            pass
        m._record_request(rec)
        try:
            specs = parse_options(raw, replay=True, default_symbols=m.default_symbols)
        except OptionsError as exc:
            body = _json({"message": str(exc)})
            rec.status, rec.completed = 500, True  # recorded before the client can see it
            sock.sendall(self._keepalive_head(500, "application/x-json-stream", len(body)) + body)
            m._notify()
            return
        rec.from_, rec.to = _us_dt(specs[0].from_us), _us_dt(specs[0].to_us)
        fault = m._take_replay_fault(rec.options)
        rec.fault = fault.kind if fault else None
        try:
            self._respond(sock, rec, specs, fault)
        finally:
            m._notify()

    def _respond(self, sock, rec: RequestRecord, specs, fault: ReplayFault | None) -> None:
        m = self.m
        p = fault.params if fault else {}
        kind = fault.kind if fault else None
        if kind == "status":
            status = int(p.get("status", 500))
            body = _json(p.get("body", {"message": f"Response code {status} ({HTTPStatus(status).phrase})"}))
            extra = list((p.get("headers") or {}).items())
            rec.status, rec.completed = status, True
            sock.sendall(self._keepalive_head(status, "application/x-json-stream", len(body), extra) + body)
            return
        if kind == "hang" and int(p.get("after_lines", 0)) == 0:
            self._hang(sock, float(p.get("seconds", 30)))
        # the switches are read once, here: a change while this response runs affects the next
        mode, rate = m.availability_mode, m.line_rate
        available = m.served_until(m.clock.now_us())
        rec.line_rate = rate
        cut = any(s.to_us > available for s in specs)
        error_line = None
        if cut:
            rec.cut_by_availability, rec.available_until = True, _us_dt(available)
            if mode == "error":
                error_line = _json({"message": f"Response code 400 (Bad Request) - historical data is available "
                                               f"up to {fmt_us(available)}; requested "
                                               f"{max(fmt_us(s.to_us) for s in specs)}"})
            else:
                # upstream answered the minutes not available yet empty: the slice cache keeps them so
                for s in specs:
                    m.slices.fetched_unavailable(s, available)
        blanks = [m.slices.blanks(s) for s in specs]
        pacer = Pacer(rate, self.stopping) if rate else None
        key = None
        if fault is None and not cut:  # only whole, fault-free bodies are cached or served from it
            key = m._cache_key(specs)
            body = m.cache.get(key)
            if body is not None and self._send_cached(sock, rec, body, pacer):
                return
        rec.status = 200
        sock.sendall(self._keepalive_head(200, "application/x-json-stream", None))
        lines = merged_replay_lines(m.market, specs, until_us=available, outages=m.replay_outages,
                                    perturb=m._perturbations("replay"), blanks=blanks)
        _BodyWriter(self, sock, rec, lines, fault, error_line, m.cache.writer(key) if key else None, pacer).run()

    def _send_cached(self, sock, rec: RequestRecord, body, pacer: Pacer | None) -> bool:
        """Send a cached body (sendfile, or paced chunk by chunk); False if it was evicted meanwhile."""
        try:
            f = open(body.path, "rb")
        except OSError:
            return False
        with f:
            rec.status, rec.cached = 200, True
            if pacer is not None:
                sock.sendall(self._keepalive_head(200, "application/x-json-stream", None))
                self._send_paced(sock, rec, f, pacer)
                return True
            rec.lines_sent, rec.bytes_sent, rec.completed = body.lines, body.nbytes, True
            try:
                sock.sendall(self._keepalive_head(200, "application/x-json-stream", None))
                sock.sendfile(f)
            except OSError:
                rec.lines_sent, rec.bytes_sent, rec.completed = 0, 0, False
                raise
        return True

    @staticmethod
    def _send_paced(sock, rec: RequestRecord, f, pacer: Pacer) -> None:
        """A cached body at the pacer's rate: each chunk leaves when its last line is due."""
        for data, lines in cached_chunks(f):
            pacer.wait(rec.lines_sent + lines)
            rec.lines_sent += lines  # counted before sending, as in _BodyWriter._flush
            rec.bytes_sent += len(data)
            rec.completed = data == b"0\r\n\r\n"
            try:
                sock.sendall(data)
            except OSError:
                rec.lines_sent -= lines
                rec.bytes_sent -= len(data)
                rec.completed = False
                raise

    def _hang(self, sock, seconds: float) -> None:
        self.stopping.wait(seconds)
        sock.close()
        raise _Abort


class _BodyWriter:
    """Write the lines of one response in 32-line chunks, applying a fault if any."""

    def __init__(self, server: ReplayServer, sock, rec: RequestRecord, lines, fault, error_line, cache,
                 pacer: Pacer | None = None):
        self.server, self.sock, self.rec, self.lines = server, sock, rec, lines
        self.fault, self.error_line, self.cache, self.pacer = fault, error_line, cache, pacer
        p = fault.params if fault else {}
        self.delay = float(p.get("delay_s", 0)) if fault and fault.kind == "slow" else 0.0
        self.out = bytearray()
        self.pending_lines = 0

    def run(self) -> None:
        """Send every line (or up to the fault), then the error line and the end."""
        f, rec = self.fault, self.rec
        kind, p = (f.kind, f.params) if f else (None, {})
        after = int(p.get("after_lines", 0))
        try:
            lines = self.lines
            if kind == "malformed":
                raw = p.get("line", b"not json")
                raw = raw.decode() if isinstance(raw, bytes) else str(raw)
                lines = itertools.chain(itertools.islice(lines, after), [raw.rstrip("\n")], lines)
            elif kind in ("cut", "error_line", "hang"):
                lines = itertools.islice(lines, after)
            self._send_lines(lines)
            self._flush()
            if kind == "cut":
                if p.get("reset"):
                    abort(self.sock)
                else:
                    self.sock.close()
                raise _Abort
            if kind == "hang":
                self.server._hang(self.sock, float(p.get("seconds", 30)))
            if kind == "error_line":
                self.error_line = self.error_line or _json({"message": "Response code 500 (Internal Server Error)"})
            if self.error_line is not None:
                rec.error_line = True
                self._chunk(self.error_line)  # the last line, without a newline
            self.out += b"0\r\n\r\n"
            self._flush(last=True)
        except BaseException:
            if self.cache is not None:
                self.cache.abort()
            raise
        if self.cache is not None:
            self.cache.commit(rec.lines_sent)

    def _send_lines(self, lines) -> None:
        batch: list[str] = []
        for line in lines:
            batch.append(line)
            if len(batch) == _LINES_PER_CHUNK:
                self._chunk(("\n".join(batch) + "\n").encode(), _LINES_PER_CHUNK)
                batch.clear()
        if batch:
            self._chunk(("\n".join(batch) + "\n").encode(), len(batch))

    def _chunk(self, data: bytes, lines: int = 0) -> None:
        self.out += b"%x\r\n" % len(data)
        self.out += data
        self.out += b"\r\n"
        self.pending_lines += lines
        if self.delay:
            self.server.stopping.wait(self.delay)
            self._cut_if_stopping()
            self._flush()
        if self.pacer is not None and lines:
            # hold the buffered lines until the last of them is due, then send them
            due = self.rec.lines_sent + self.pending_lines
            if self.pacer.delay(due) > 0:
                self.pacer.wait(due)
                self._cut_if_stopping()
                self._flush()
        if len(self.out) >= _SEND_BATCH:
            self._flush()

    def _cut_if_stopping(self) -> None:
        # a paced or slowed body woken by stop() is cut where it stands, like a killed server's; without
        # this it would race the closing of connections and send the rest of its lines at full speed
        if self.server.stopping.is_set():
            self.sock.close()
            raise _Abort

    def _flush(self, last: bool = False) -> None:
        if not self.out:
            return
        data = bytes(self.out)
        self.out.clear()
        rec, lines = self.rec, self.pending_lines
        self.pending_lines = 0
        # counted before sending: a client that got the bytes must find them recorded
        rec.lines_sent += lines
        rec.bytes_sent += len(data)
        rec.completed = last
        try:
            self.sock.sendall(data)
        except OSError:
            rec.lines_sent -= lines
            rec.bytes_sent -= len(data)
            rec.completed = False
            raise
        if self.cache is not None:
            self.cache.write(data)
