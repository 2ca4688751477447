"""Websocket server: ``/ws-stream-normalized`` on raw sockets (one thread per connection).

Each connection opens its own "exchange connection" at the subscription time t_c: a
book snapshot per symbol stamped t_c (minus the market's skew), then the market's events from t_c on, each sent
when the double clock reaches its (live, millisecond) localTimestamp. Every payload
written to the socket is recorded in the connection's :class:`ConnectionRecord`.
Faults arrive as commands through a per-connection queue plus a wake-up socket, so they
act at once even while the connection waits for the next event.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

from .market import MARKET_KINDS, symbol_params
from .netutil import ConnectionSet, Listener, abort, read_head
from .normalize import Normalizer
from .options import OptionsError, parse_options
from .render import fmt_ms
from .streams import KIND_DISCONNECT, RawFeed, run_event
from .firehose import run_firehose
from .wsproto import OP_CLOSE, OP_PING, OP_PONG, accept_key, close_frame, frame, parse_frames

log = logging.getLogger(__name__)

__all__ = ["StreamServer", "ConnectionRecord"]

_BACKLOG_LIMIT = 5 * 1024 * 1024  # like tardis-machine: a client this far behind is closed (1008)
HEAD_LIMIT = 16 * 1024  # Node's default --max-http-header-size: the request line and the headers together


@dataclass
class ConnectionRecord:
    """One websocket connection: its options and every text payload written to it."""

    id: int
    options: list
    opened_at: datetime
    closed_at: datetime | None = None
    sent: list = field(default_factory=list)
    sent_count: int = 0
    close_kind: str | None = None  # client_close, client_gone, server_close, reset, ping_timeout,
    # backpressure, options_error, stopped
    firehose: bool = False


def _us_dt(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, timezone.utc).replace(microsecond=us % 1_000_000)


class _Closed(Exception):
    """End of the session; ``args[0]`` is the close kind."""


class StreamServer:
    """The websocket side of the double."""

    def __init__(self, machine, port: int = 0):
        self.m = machine
        self.listener = Listener("ws", port, self._accept)
        self.conns = ConnectionSet()
        self._lock = threading.Lock()
        self.sessions: dict[int, _Session] = {}

    @property
    def port(self) -> int:
        """The bound port (stable across stop/start)."""
        return self.listener.port

    def start(self) -> None:
        """Listen (again, on the same port)."""
        self.listener.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Refuse new connections and reset the open ones (a server restart)."""
        deadline = time.monotonic() + timeout
        self.listener.stop(timeout)
        sessions = self.live_sessions()
        for s in sessions:
            s.push(("drop", "reset", "stopped"))
        for s in sessions:  # let each session record why it ended before forcing sockets shut
            s.done.wait(max(0.0, deadline - time.monotonic()) / 2)
        self.conns.close_all(max(0.05, deadline - time.monotonic()))

    def live_sessions(self) -> list["_Session"]:
        """Sessions currently open."""
        with self._lock:
            return list(self.sessions.values())

    def _accept(self, sock: socket.socket) -> None:
        if self.m._take_refusal():
            abort(sock)  # accepted, then reset before the handshake
            return
        self.conns.spawn(sock, "ws", self._serve)

    def _serve(self, sock: socket.socket, cid: int) -> None:
        s = _Session(self, sock, cid)
        with self._lock:
            self.sessions[cid] = s
        try:
            s.run()
        finally:
            with self._lock:
                self.sessions.pop(cid, None)


class _Session:
    """One websocket connection: handshake, then the live stream or the firehose."""

    def __init__(self, server: StreamServer, sock: socket.socket, cid: int):
        self.srv, self.m, self.sock, self.cid = server, server.m, sock, cid
        self.rbuf, self.wbuf = bytearray(), bytearray()
        self.inflight: deque = deque()  # (stream offset at frame end, payload or None, frames)
        self.queued = self.written = 0
        self.cmds: deque = deque()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.rec: ConnectionRecord | None = None
        self.done = threading.Event()
        self.closing = threading.Event()  # our close frame is out (or the session ended)
        self.last_heard = time.monotonic()
        self.close_sent = False
        self.drop_request: float | None = None
        self.caught_up_us = -1  # the clock time up to which every due event is written (live sessions)

    def push(self, cmd: tuple) -> None:
        """Queue a command for the session thread and wake it."""
        self.cmds.append(cmd)
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass

    # -- lifecycle -------------------------------------------------------------------
    def run(self) -> None:
        """Handshake, serve, and record how the connection ended."""
        kind = "client_gone"
        try:
            specs = self._handshake()
            if specs is not None:
                self.sock.setblocking(False)
                seconds = self.m._firehose_seconds
                if seconds:
                    self.rec.firehose = True
                    run_firehose(self, specs, seconds)
                else:
                    self._live(specs)
        except _Closed as c:
            kind = c.args[0]
        except OSError:
            kind = "client_gone"
        finally:
            if self.rec is not None:
                if self.rec.close_kind is None:
                    self.rec.close_kind = kind
                self.rec.closed_at = self.m.clock.now()
            self.wake_r.close()
            self.wake_w.close()
            self.closing.set()
            self.done.set()
            self.m._notify()

    def _handshake(self):
        self.sock.settimeout(5.0)
        head = read_head(self.sock, self.rbuf)
        if head is None:
            raise _Closed("client_gone")
        if len(head) > HEAD_LIMIT:  # Node's http parser (tardis-machine is a Node server): 431, nothing else
            self.sock.sendall(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n")
            raise _Closed("client_gone")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines if ":" in h)}
        # split from the right: a client may send an unencoded JSON (with spaces) in the target
        target = request_line.split(" ", 1)[-1].rsplit(" ", 1)[0]
        url = urlsplit(target)
        key = headers.get("sec-websocket-key")
        if url.path != "/ws-stream-normalized" or not key or headers.get("upgrade", "").lower() != "websocket":
            self.sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            raise _Closed("client_gone")
        raw = parse_qs(url.query).get("options", [None])[0]
        try:
            parsed = json.loads(raw) if raw else []
        except ValueError:
            parsed = []
        self.opened_us = self.m.clock.now_us()  # the subscription time t_c
        self.rec = ConnectionRecord(self.cid, parsed if isinstance(parsed, list) else [parsed],
                                    _us_dt(self.opened_us))
        self.m._record_connection(self.rec)  # before the 101: a client that is in finds its record
        self.sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n").encode())
        try:
            return parse_options(raw, replay=False, default_symbols=self.m.default_symbols)
        except OptionsError as exc:
            first = parsed[0] if isinstance(parsed, list) and parsed else parsed
            if isinstance(first, dict) and first.get("withErrorMessages"):
                now = self.m.clock.now_us()
                err = {"type": "error", "exchange": first.get("exchange"),
                       "localTimestamp": fmt_ms((now + self.m.local_offset_us(now)) // 1000), "details": str(exc),
                       "subSequentErrorsCount": 1}
                self._queue_text(json.dumps(err, separators=(",", ":")))
            self.sock.setblocking(False)
            self._close_with(1011, str(exc), "options_error")

    # -- socket I/O --------------------------------------------------------------------
    def _queue(self, data: bytes, payload: str | None = None, frames: int = 0) -> None:
        self.wbuf += data
        self.queued += len(data)
        if frames:
            self.inflight.append((self.queued, payload, frames))

    def _queue_text(self, text: str) -> None:
        self._queue(frame(text.encode()), text, 1)

    def _write(self) -> None:
        try:
            n = self.sock.send(self.wbuf)
        except (BlockingIOError, InterruptedError):
            return
        del self.wbuf[:n]
        self.written += n
        rec, inflight = self.rec, self.inflight
        while inflight and inflight[0][0] <= self.written:
            _, payload, frames = inflight.popleft()
            if payload is not None:
                rec.sent.append(payload)
            rec.sent_count += frames

    def _read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise _Closed("client_gone")
        self.last_heard = time.monotonic()
        self.rbuf += data
        for op, payload in parse_frames(self.rbuf):
            if op == OP_PING:
                self._queue(frame(payload, OP_PONG))
            elif op == OP_CLOSE:
                if not self.close_sent:
                    self._queue(frame(payload[:2], OP_CLOSE))
                    self.close_sent = True
                    self._flush(0.5)
                raise _Closed("client_close")

    def _pump(self, timeout: float, stalled: bool = False) -> None:
        """One select round: commands wake-up, client frames, pending writes."""
        want_w = bool(self.wbuf) and not stalled
        r, w, _ = select.select([self.sock, self.wake_r], [self.sock] if want_w else [], [], max(0.0, timeout))
        if self.wake_r in r:
            try:
                self.wake_r.recv(4096)
            except OSError:
                pass
        if self.sock in r:
            self._read()
        if w:
            self._write()

    def _flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.wbuf and time.monotonic() < deadline:
            _, w, _ = select.select([], [self.sock], [], max(0.0, deadline - time.monotonic()))
            if w:
                self._write()

    def _close_with(self, code: int, reason: str, kind: str) -> None:
        if not self.close_sent:
            self._queue(close_frame(code, reason))
            self.close_sent = True
        self._flush(1.0)
        if self.rec is not None:
            self.rec.close_kind = kind
        self.closing.set()
        # wait for the client's close frame before closing TCP, as a polite server does: a
        # client that answers a closed socket would get a reset instead of a clean end
        deadline = time.monotonic() + 2.0
        try:
            while time.monotonic() < deadline:
                r, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
                data = self.sock.recv(65536) if r else b""
                if not data:
                    break
                self.rbuf += data
                if any(op == OP_CLOSE for op, _ in parse_frames(self.rbuf)):
                    break
        except OSError:
            pass
        raise _Closed(kind)

    # -- commands, pings, stalls ----------------------------------------------------------
    def _commands(self) -> None:
        while self.cmds:
            cmd = self.cmds.popleft()
            if cmd[0] == "drop":
                if cmd[1] == "reset":
                    self.rec.close_kind = cmd[2]
                    abort(self.sock)
                    raise _Closed(cmd[2])
                self._close_with(1001, "going away", cmd[2])
            elif cmd[0] == "inject":
                self._queue_text(cmd[1])
            elif cmd[0] == "error":
                self._send_error(cmd[1])
            elif cmd[0] == "exchange_drop":
                self.drop_request = cmd[1]

    def _send_error(self, force: bool) -> None:
        now = self.m.clock.now_us()
        for spec in self._specs:
            if spec.with_errors or force:
                err = {"type": "error", "exchange": spec.exchange,
                       "localTimestamp": fmt_ms((now + self.m.local_offset_us(now)) // 1000),
                       "details": "Error: Unexpected server response: 503", "subSequentErrorsCount": 1}
                self._queue_text(json.dumps(err, separators=(",", ":")))

    def _heartbeat(self, state: dict) -> None:
        """Ping every interval; drop a client silent for a whole interval."""
        now = time.monotonic()
        if now < state["next_ping"] or self.m._stall_until > now:
            return
        if state["window"] is not None and self.last_heard < state["window"]:
            self.rec.close_kind = "ping_timeout"
            self.sock.close()
            raise _Closed("ping_timeout")
        self._queue(frame(b"", OP_PING))
        state["window"] = now
        state["next_ping"] = now + self.m.ping_interval_s

    # -- live stream -------------------------------------------------------------------
    def _live(self, specs) -> None:
        m = self.m
        self._specs = specs
        t_c_ms = self.opened_us // 1000
        perturb = m._perturbations("live")
        outages = list(m.live_outages)
        # the exchange's clock reads t_c - skew when we subscribe: its snapshot is stamped so
        sub_ms = t_c_ms - m.market.config.skew_ms
        feeds = [RawFeed(m.market, s, live=True, start_us=t_c_ms * 1000, subscribe_ms=sub_ms, outages=outages)
                 for s in specs]
        config = m.market.config
        shift_ms = self.rec.id % (config.live_arrival_spread_ms + 1)  # this connection's own arrival stamps
        norms = [Normalizer(s, symbol_params, live=True, perturb=perturb,
                            trade_ids=s.exchange not in config.no_trade_ids, arrival_shift_us=shift_ms * 1000)
                 for s in specs]
        iters = [iter(f) for f in feeds]
        pending = [next(it) for it in iters]
        last_loc = t_c_ms * 1000 + m.local_offset_us(t_c_ms * 1000)  # as the host's wall clock reads it
        beat = {"next_ping": time.monotonic() + m.ping_interval_s, "window": None}  # window: last ping sent
        processed = 0
        while True:
            self._commands()
            self._heartbeat(beat)
            stalled = m._stall_until > time.monotonic()
            if len(self.wbuf) > _BACKLOG_LIMIT:
                self._close_with(1008, "too much backpressure", "backpressure")
            j = min(range(len(pending)), key=lambda i: pending[i][4])
            ev = pending[j]
            now = m.clock.now_us()
            if not stalled and ev[4] <= now:
                if self.drop_request is not None:
                    last_loc = self._exchange_drop(feeds, norms, iters, pending, last_loc, now)
                    continue
                norm = norms[j]
                shift = m.local_offset_us(ev[4]) if m._local_steps else 0
                if shift:
                    # the host's wall clock stamps the frame; the event is still sent at its (monotonic) time
                    ev = ev[:4] + (ev[4] + shift,)
                if ev[0] == KIND_DISCONNECT:
                    norm.disconnect(last_loc)  # live: stamped with the last message sent
                else:
                    run_event(norm, feeds[j], ev, last_loc)
                pending[j] = next(iters[j])
                for loc, line in norm.out:
                    self._queue_text(line)
                    last_loc = loc
                norm.out.clear()
                processed += 1
                if processed % 64 == 0:
                    self._pump(0)
                continue
            if not stalled and not self.wbuf:
                self.caught_up_us = now  # everything due by ``now`` is written to the socket
            wait = m.clock.wall_seconds_until(ev[4])
            if stalled:
                wait = m._stall_until - time.monotonic()
            wait = min(wait, beat["next_ping"] - time.monotonic(), 1.0)
            self._pump(wait, stalled)

    def _exchange_drop(self, feeds, norms, iters, pending, last_loc: int, now: int) -> int:
        """tm.exchange_drop(): disconnect now, skip events for the pause, then snapshots."""
        resume = now + int(self.drop_request * 1_000_000)
        self.drop_request = None
        for i, (feed, norm) in enumerate(zip(feeds, norms)):
            norm.disconnect(last_loc)
            feed.drop_now(now, resume)
            while pending[i][0] in MARKET_KINDS and feed.skips(pending[i][3]):
                pending[i] = next(iters[i])
            for _, line in norm.out:
                self._queue_text(line)
            norm.out.clear()
        return last_loc
