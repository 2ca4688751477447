"""``FakeTardisMachine``: both servers, the shared state, records and fault switches."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Callable

import orjson

from .cache import ResponseCache
from .clock import FakeClock, ManualClock
from .market import Market, MarketConfig
from .options import parse_options, parse_time_us
from .slices import MINUTE_US, SliceCache
from .replay_server import FAULT_KINDS, ReplayFault, ReplayServer, RequestRecord
from .stream_server import ConnectionRecord, StreamServer
from .streams import Outage, merged_replay_lines

__all__ = ["FakeTardisMachine"]

DEFAULT_SYMBOLS = ("BTC-PERPETUAL", "ETH-PERPETUAL")
AVAILABILITY_MODES = ("error", "empty")


def _to_us(value) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("datetimes must be timezone-aware (UTC)")
        return int(value.timestamp()) * 1_000_000 + value.microsecond
    return parse_time_us(value)


class FakeTardisMachine:
    """A local tardis-machine double: HTTP replay + websocket live stream on 127.0.0.1.

    Use as a context manager (``__enter__`` starts both servers and returns self).
    ``firehose=True`` makes every websocket connection a firehose of ``firehose_seconds``.

    History near now: a replay request whose ``to`` is past ``clock.now - availability_delay``
    (the clock read when the request arrives) gets the lines up to that limit, then, with
    ``availability_mode="error"`` (default), the error JSON as a last line without a newline,
    or with ``"empty"`` nothing more (the stream ends normally: the missing tail looks
    like a quiet market, as some upstreams answer). ``availability_delay`` and
    ``availability_mode`` may be changed at any time; a body cut by availability is never
    cached nor served from the cache.

    Slow answers: ``line_rate`` (lines per second per request; None = unlimited) paces
    every replay response, cached ones included, each request on its own (N concurrent
    requests get about N x the rate in total, like tardis-machine's one core per request).
    It is read when a response starts. ``max_concurrent_requests`` is the highest number
    of replay requests in flight at once (assign 0 to start counting afresh).
    """

    def __init__(self, clock: FakeClock | ManualClock | None = None, market: MarketConfig | None = None, *,
                 availability_delay: timedelta = timedelta(0), availability_mode: str = "error",
                 line_rate: float | None = None, replay_outages=(), live_outages=(),
                 default_symbols=DEFAULT_SYMBOLS, http_port: int = 0, ws_port: int = 0,
                 firehose: bool = False, firehose_seconds: float = 30.0, ping_interval_s: float = 30.0,
                 cache_max_bytes: int = 4 << 30):
        self.clock = clock or FakeClock()
        self.market = Market(market or MarketConfig())
        self.availability_delay = availability_delay
        self.availability_mode = availability_mode
        self.line_rate = line_rate
        self.requests_in_flight = 0
        self.max_concurrent_requests = 0
        self.replay_outages: list[Outage] = list(replay_outages)
        self.live_outages: list[Outage] = list(live_outages)
        self.default_symbols = list(default_symbols)
        self.ping_interval_s = ping_interval_s
        self.requests: list[RequestRecord] = []
        self.connections: list[ConnectionRecord] = []
        self.replay_faults: list[ReplayFault] = []
        self.cache = ResponseCache(cache_max_bytes)
        self._available_high = -1  # the newest history ever available (see served_until)
        self.slices = SliceCache()  # minutes cached empty per filter set (empty mode; see slices.py)
        self._firehose_seconds = firehose_seconds if firehose else 0.0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._refuse = 0
        self._stall_until = 0.0
        self._perturb: dict[str, dict] = {"replay": {}, "live": {}}
        self._local_steps: tuple = ()  # ((from double time µs, offset µs), ...) of the host's wall clock
        self._http = ReplayServer(self, http_port)
        self._ws = StreamServer(self, ws_port)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "FakeTardisMachine":
        """Start both listeners (and follow a manual clock's moves)."""
        self._http.start()
        self._ws.start()
        if hasattr(self.clock, "add_listener"):
            self.clock.add_listener(self._clock_moved)
        return self

    def stop(self, timeout: float = 1.5) -> None:
        """Close every socket and join every thread (bounded by ``timeout`` overall)."""
        if hasattr(self.clock, "remove_listener"):
            self.clock.remove_listener(self._clock_moved)
        deadline = time.monotonic() + timeout
        self._ws.stop(max(0.1, (deadline - time.monotonic()) / 2))
        self._http.stop(max(0.1, deadline - time.monotonic()))
        self.cache.close()

    def __enter__(self) -> "FakeTardisMachine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self._http.port}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT2``."""
        return f"ws://127.0.0.1:{self._ws.port}"

    @property
    def availability_delay_us(self) -> int:
        """The availability delay in µs."""
        return int(self.availability_delay.total_seconds() * 1_000_000)

    @property
    def availability_mode(self) -> str:
        """How not-yet-available history ends a replay: "error" (error line) or "empty" (just ends)."""
        return self._availability_mode

    @availability_mode.setter
    def availability_mode(self, mode: str) -> None:
        if mode not in AVAILABILITY_MODES:
            raise ValueError(f"availability_mode must be one of {AVAILABILITY_MODES}, not {mode!r}")
        self._availability_mode = mode

    @property
    def line_rate(self) -> float | None:
        """Lines per second per replay response (None: as fast as possible)."""
        return self._line_rate

    @line_rate.setter
    def line_rate(self, rate: float | None) -> None:
        if rate is not None and not rate > 0:
            raise ValueError("line_rate must be positive or None")
        self._line_rate = None if rate is None else float(rate)

    # -- ground truth ------------------------------------------------------------------
    def expected_replay(self, options, from_=None, to=None, *, ignore_availability: bool = False) -> list[dict]:
        """Exactly the messages a fault-free replay of ``options`` would send now.

        ``from_``/``to`` (datetime or ISO text) override the options' range. Lines past
        the availability limit are left out (the server would end with an error line
        or, in "empty" mode, just end) unless ``ignore_availability``.
        """
        items = [dict(o) for o in (options if isinstance(options, list) else [options])]
        for o in items:
            if from_ is not None:
                o["from"] = from_.isoformat() if isinstance(from_, datetime) else from_
            if to is not None:
                o["to"] = to.isoformat() if isinstance(to, datetime) else to
        specs = parse_options(items, replay=True, default_symbols=self.default_symbols)
        until = 1 << 62 if ignore_availability else self.served_until(self.clock.now_us())
        lines = merged_replay_lines(self.market, specs, until_us=until, outages=self.replay_outages,
                                    perturb=self._perturbations("replay"),
                                    blanks=[self.slices.blanks(s) for s in specs])
        return [orjson.loads(line) for line in lines]

    def served_until(self, now_us: int) -> int:
        """Replay sends history up to here (local µs): the availability limit; in "empty" mode whole minutes
        only (upstream slices are minutes: one not available yet comes back empty as a whole).

        Availability never goes back: upstream keeps what it has. A larger ``availability_delay`` makes the server
        fall behind from then on (new minutes come later), it does not take minutes back.
        """
        with self._lock:
            available = self._available_high = max(self._available_high, now_us - self.availability_delay_us)
        return available - available % MINUTE_US if self.availability_mode == "empty" else available

    def clear_slice_cache(self) -> None:
        """Forget the minutes cached empty (tardis-machine restarted with ``--clear-cache``)."""
        self.slices.clear()

    # -- replay switches -----------------------------------------------------------------
    def add_replay_fault(self, kind: str, match: Callable[[list[dict]], bool] | None = None,
                         **params) -> ReplayFault:
        """Queue a fault for the next replay request that ``match(options)`` accepts.

        Kinds: cut(after_lines, reset), error_line(after_lines), status(status, body,
        headers), malformed(after_lines, line), slow(delay_s), hang(seconds, after_lines).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        fault = ReplayFault(kind, params, match)
        with self._lock:
            self.replay_faults.append(fault)
        return fault

    def perturb(self, source: str, symbol: str, minute: datetime, factor: float = 1.001) -> None:
        """Multiply prices of ``source`` ("replay"|"live") messages whose exchange time is in ``minute``.

        Trades and tickers use their own timestamp, book messages the time of the book
        state they show, so the bars and interval snapshots covering that minute differ too.
        """
        if source not in self._perturb:
            raise ValueError("source must be 'replay' or 'live'")
        minute_ms = _to_us(minute) // 60_000_000 * 60_000
        with self._lock:
            table = dict(self._perturb[source])
            table[(symbol, minute_ms)] = factor
            self._perturb[source] = table  # replaced, never mutated: readers hold a snapshot

    def _perturbations(self, source: str) -> dict:
        return self._perturb[source]

    # -- the host's wall clock --------------------------------------------------------------
    def step_local_clock(self, seconds: float, at=None) -> None:
        """Step the wall clock of tardis-machine's host by ``seconds`` (+ forward, - back) at ``at``.

        ``at``: a double-clock time (aware datetime or epoch µs; None = now). From then on the
        localTimestamp tardis-machine stamps on live frames (market messages, samples,
        ``disconnect`` and ``error`` messages) reads the host clock: the double's time plus the sum
        of the steps made so far (whole milliseconds, like live stamps). Nothing else moves: the
        exchange's time, what is sent and when (tardis-machine's timers run on a monotonic clock),
        and replay (history was stamped by tardis' own recorder, another host).
        """
        step = round(seconds * 1000) * 1000
        at_us = self.clock.now_us() if at is None else _to_us(at)
        with self._lock:
            self._local_steps = tuple(sorted(self._local_steps + ((at_us, step),)))
        self._clock_moved()

    def local_offset_us(self, at_us: int) -> int:
        """How far the host's wall clock reads from the double's time at double time ``at_us`` (µs)."""
        return sum(step for since, step in self._local_steps if since <= at_us)

    # -- live switches -------------------------------------------------------------------
    def drop_clients(self, mode: str = "close", timeout: float = 2.0) -> int:
        """Close every live connection with a close frame ("close") or an RST ("reset").

        Returns the number of connections dropped once every close frame is sent (the
        sessions then wait for the clients' close replies) or every reset is done.
        """
        if mode not in ("close", "reset"):
            raise ValueError("mode must be 'close' or 'reset'")
        sessions = self._ws.live_sessions()
        for s in sessions:
            s.push(("drop", mode, "server_close" if mode == "close" else "reset"))
        deadline = time.monotonic() + timeout
        for s in sessions:
            (s.closing if mode == "close" else s.done).wait(max(0.0, deadline - time.monotonic()))
        return len(sessions)

    def live_caught_up(self, now_us: int | None = None) -> bool:
        """True when every open live session has written every event due by ``now_us`` (default: now).

        With a :class:`ManualClock` this is the moment a test can move on: the double has sent all it will
        send until the clock moves again.
        """
        now_us = self.clock.now_us() if now_us is None else now_us
        return all(s.caught_up_us >= now_us for s in self._ws.live_sessions() if s.rec is not None
                   and not s.closing.is_set() and not s.rec.firehose)

    def refuse_connections(self, n: int) -> None:
        """Reset the next ``n`` websocket connection attempts before the handshake."""
        with self._lock:
            self._refuse += n

    def stall_clients(self, seconds: float) -> None:
        """Send nothing at all (no data, no pings) on any live connection for ``seconds``."""
        self._stall_until = time.monotonic() + seconds
        for s in self._ws.live_sessions():
            s.push(("noop",))

    def exchange_drop(self, duration_s: float = 0.03) -> None:
        """At the next event of every live connection: disconnect, pause, fresh snapshots."""
        for s in self._ws.live_sessions():
            s.push(("exchange_drop", duration_s))

    def send_error_message(self, force: bool = False) -> None:
        """An ``error`` frame on each connection (those with withErrorMessages, or all if ``force``)."""
        for s in self._ws.live_sessions():
            s.push(("error", force))

    def inject_frame(self, text: str) -> None:
        """Send a raw text frame (any content) on every live connection."""
        for s in self._ws.live_sessions():
            s.push(("inject", text))

    def firehose(self, seconds: float | None = 30.0) -> None:
        """Connections opened from now on are firehoses of ``seconds`` (None/0: normal)."""
        self._firehose_seconds = seconds or 0.0

    def stop_ws(self) -> None:
        """Stop the websocket listener (connections refused) and reset open connections."""
        self._ws.stop()

    def start_ws(self) -> None:
        """Listen again on the same websocket port."""
        self._ws.start()

    def stop_http(self) -> None:
        """Stop the HTTP listener (connections refused) and cut open requests."""
        self._http.stop()

    def start_http(self) -> None:
        """Listen again on the same HTTP port."""
        self._http.start()

    # -- waiting -------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` is true (re-checked when requests/connections change)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
            return True

    # -- used by the servers ---------------------------------------------------------------
    def _clock_moved(self) -> None:
        # a manual clock moved: every live session re-checks its next event now
        for s in self._ws.live_sessions():
            s.push(("noop",))
        self._notify()

    def _request_started(self) -> None:
        with self._lock:
            self.requests_in_flight += 1
            self.max_concurrent_requests = max(self.max_concurrent_requests, self.requests_in_flight)

    def _request_ended(self) -> None:
        with self._changed:
            self.requests_in_flight -= 1
            self._changed.notify_all()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _record_request(self, rec: RequestRecord) -> None:
        with self._changed:
            self.requests.append(rec)
            self._changed.notify_all()

    def _record_connection(self, rec: ConnectionRecord) -> None:
        with self._changed:
            self.connections.append(rec)
            self._changed.notify_all()

    def _take_replay_fault(self, options: list[dict]) -> ReplayFault | None:
        with self._lock:
            for i, f in enumerate(self.replay_faults):
                if f.match is None or f.match(options):
                    return self.replay_faults.pop(i)
        return None

    def _take_refusal(self) -> bool:
        with self._lock:
            if self._refuse > 0:
                self._refuse -= 1
                return True
        return False

    def _cache_key(self, specs) -> str:
        parts = [(s.exchange, s.symbols, s.data_types, s.with_disconnect, s.from_us, s.to_us) for s in specs]
        outages = [(o.start_us, o.end_us) for o in self.replay_outages]
        blanks = [self.slices.blanks(s) for s in specs]
        return ResponseCache.key(self.market.config, parts, outages, sorted(self._perturb["replay"].items()), blanks)

    def __repr__(self) -> str:
        return f"FakeTardisMachine(http_url={self.http_url!r}, ws_url={self.ws_url!r}, clock={self.clock!r})"

