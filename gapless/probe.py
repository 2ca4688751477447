"""Measuring how far history reaches, with a handful of small probe requests.

A probe asks one minute of ``trade`` for the exchange's symbols, plus one symbol no exchange lists, new for
every request (:func:`gapless.replay.fresh_symbol`): tardis-machine caches what it fetched per filter set,
an empty answer for a minute not available yet included, for good; a probe must neither fill a stream's
cache with such a minute nor be answered from one. A minute counts as available only on
positive evidence: the probe returned lines (their latest localTimestamp proves history reaches at least
there). tardis.dev may serve a minute that is not available yet as an EMPTY minute, so an empty answer
proves nothing by itself; it counts as *not available* when the live recording stored trades for that
minute (history would have them), and as unknown (treated as not available) otherwise. An error line
(the minute is refused) means not available.

The search comes down from the present: the present minute, then 1, 2, 4, 8 ... minutes before it until a
minute is available, then bisects between it and the newest minute that was not: about ten one-minute
requests (2 log2 of the delay in minutes) find the newest available minute; its latest line is the edge.

The edge is *tight* when the minute after it was shown not to be available (refused, or empty where live
has trades). When it is only followed by unknown minutes (a quiet market: empty, and live saw no trades
either) history may reach further: the edge is a lower bound, and the delay it implies an upper bound
that must not make the delay in use grow. A minute already proven available (at or before the edge of an
earlier measurement) is never asked again, and one that came back without lines is not asked again
before its backoff (the service's request memory, kept across restarts).
"""
import logging
from dataclasses import dataclass, field

import orjson

from .exceptions import IncompleteStreamError, ServerError
from .replay import replay_options
from .timeutil import MINUTE_US, floor_minute, iso, parse_timestamp_us

log = logging.getLogger(__name__)

MAX_LOOK_BACK_US = 12 * 60 * MINUTE_US


@dataclass
class ProbeResult:
    """What a measurement found: the edge (µs, local time of the newest line history delivered) or None."""

    edge: int = None
    tight: bool = False  # the minute after the edge was shown not to be available (else: a lower bound)
    probes: int = 0
    answers: list = field(default_factory=list)  # [(minute, "yes" | "no" | "unknown", latest line)]
    # how the server answers a minute not available yet: "error" (refused), "empty" (no lines where live has
    # trades) or None (no evidence in this measurement)
    mode: str = None


class EdgeProbe:
    """Finds the newest minute history can deliver (see the module docstring)."""

    def __init__(self, client, exchange, symbols, api_key=None, live_trades_in=None, max_probes=24, admit=None):
        self.client = client
        # admit(minute) -> bool: may this minute be asked now (False: asked lately in vain, no new evidence;
        # it counts as not available, which can only make the delay in use larger, never claim too much)
        self.admit = admit
        self.exchange = exchange
        self.symbols = list(symbols)
        self.api_key = api_key
        self.live_trades_in = live_trades_in or (lambda minute: False)
        self.max_probes = max_probes
        self._known_edge = None

    def measure(self, now_us, known_edge=None):
        """Measure the edge at ``now_us``. Returns a :class:`ProbeResult`.

        The search comes down from the present minute (steps back doubling each time until a minute with
        lines, then bisection between it and the newest minute without), so neither a hole in history nor a
        quiet stretch below the edge, nor a delay in use that is far too large, can hide it. ``known_edge``:
        an earlier measurement's edge (history reaches at least there): minutes up to it count as available
        without a request.
        """
        result = ProbeResult()
        self._known_edge = known_edge
        present = floor_minute(now_us)
        lo, hi = None, present + MINUTE_US  # the newest minute shown available; the oldest asked above it
        for minute in _descending(present):
            if now_us - minute > MAX_LOOK_BACK_US or result.probes >= self.max_probes:
                log.warning("%s: no history with trades found in the last %d min; history delay not measured",
                            self.exchange, (now_us - minute) // MINUTE_US)
                return result
            if self._ask(minute, result) == "yes":
                lo = minute
                break
            hi = minute
        while hi - lo > MINUTE_US and result.probes < self.max_probes:
            mid = floor_minute(lo + (hi - lo) // 2)
            if self._ask(mid, result) == "yes":
                lo = mid
            else:
                hi = mid
        answers = {minute: answer for minute, answer, _ in result.answers}
        result.edge = max(latest for _, answer, latest in result.answers if answer == "yes")
        result.tight = hi - lo <= MINUTE_US and answers.get(hi) == "no"
        log.info("%s: history reaches %s%s (now %s): delay %.0fs, measured with %d probe(s)", self.exchange,
                 "" if result.tight else "at least ", iso(result.edge), iso(now_us), (now_us - result.edge) / 1e6,
                 result.probes)
        return result

    def _ask(self, minute, result):
        """One probe: 'yes' (lines came), 'no' (refused, or empty where live has trades) or 'unknown'."""
        for asked, answer, _ in result.answers:
            if asked == minute:  # a search may come back to a minute: one request per minute and measurement
                return answer
        known = self._known_edge
        if known is not None and minute + MINUTE_US <= known:
            result.answers.append((minute, "yes", known))  # proven by an earlier measurement: not asked again
            return "yes"
        if self.admit is not None and not self.admit(minute):
            result.answers.append((minute, "unknown", 0))
            return "unknown"
        result.probes += 1
        answer, latest, mode = self._request(minute)
        if mode == "empty" or (mode == "error" and result.mode is None):
            result.mode = mode
        result.answers.append((minute, answer, latest))
        return answer

    def advance(self, minute):
        """Ask one more minute (the next one a download would need): the latest line it delivered, or None.

        Returns ``(latest or None, mode evidence or None)``; a minute the request memory holds back is not
        asked (``(None, None)``).
        """
        if self.admit is not None and not self.admit(minute):
            return None, None
        answer, latest, mode = self._request(minute)
        return (latest if answer == "yes" else None), mode

    def _request(self, minute):
        """One one-minute request, in a filter set of its own (a probe must never fill a stream's cache with an
        empty minute, nor be answered by one): ``(answer, latest line, mode evidence)``."""
        symbols = set(self.symbols)
        options = replay_options(self.exchange, self.symbols, ["trade"], minute, minute + MINUTE_US, self.api_key,
                                 fresh="probe")
        lines, latest, refused = 0, 0, False
        try:
            for chunk in self.client.stream_lines(options):
                for line in chunk:
                    try:
                        message = orjson.loads(line)
                        stamp = parse_timestamp_us(message["localTimestamp"])
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        continue
                    if message.get("type") == "trade" and message.get("symbol") in symbols:
                        lines += 1
                        latest = max(latest, stamp)
        except IncompleteStreamError as exc:
            refused = exc.refused
        except ServerError as exc:
            log.warning("%s: history probe of %s failed: %s", self.exchange, iso(minute), exc)
            refused = True
        if lines:
            return "yes", latest, None
        if refused:
            return "no", latest, "error"
        if self.live_trades_in(minute):
            return "no", latest, "empty"
        return "unknown", latest, None


def _descending(present):
    """Minutes to ask, newest first: the present, then 1, 2, 4, 8 ... minutes before it."""
    yield present
    step = MINUTE_US
    while True:
        yield present - step
        step *= 2
