"""Measuring how far history reaches, with a handful of small probe requests.

A probe asks one minute of ``trade`` for the exchange's symbols. A minute counts as available only on
positive evidence: the probe returned lines (their latest localTimestamp proves history reaches at least
there). tardis.dev may serve a minute that is not available yet as an EMPTY minute, so an empty answer
proves nothing by itself; it counts as *not available* when the live recording stored trades for that
minute (history would have them), and as unknown (treated as not available) otherwise. An error line
(the minute is refused) means not available.

The search: from ``now - upper bound`` (the configured history delay) step back exponentially until a
minute is available, then forward exponentially until one is not, then bisect: about ten one-minute
requests find the newest available minute, and its latest line is the measured edge.
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
    probes: int = 0
    answers: list = field(default_factory=list)  # [(minute, "yes" | "no" | "unknown", latest line)]


class EdgeProbe:
    """Finds the newest minute history can deliver (see the module docstring)."""

    def __init__(self, client, exchange, symbols, api_key=None, live_trades_in=None, max_probes=24):
        self.client = client
        self.exchange = exchange
        self.symbols = list(symbols)
        self.api_key = api_key
        self.live_trades_in = live_trades_in or (lambda minute: False)
        self.max_probes = max_probes

    def measure(self, now_us, upper_us):
        """Measure the edge at ``now_us``, starting from ``now - upper_us``. Returns a :class:`ProbeResult`."""
        result = ProbeResult()
        present = floor_minute(now_us)
        lo = floor_minute(now_us - upper_us) - MINUTE_US
        step = MINUTE_US
        while self._ask(lo, result) != "yes":
            lo -= step
            step *= 2
            if now_us - lo > MAX_LOOK_BACK_US or result.probes >= self.max_probes:
                log.warning("%s: no history with trades found in the last %d min; history delay not measured",
                            self.exchange, (now_us - lo) // MINUTE_US)
                return result
        hi, step = present + MINUTE_US, MINUTE_US  # the present minute may be partly available already
        while lo + step < hi and result.probes < self.max_probes:
            if self._ask(lo + step, result) == "yes":
                lo, step = lo + step, step * 2
            else:
                hi = lo + step
                break
        while hi - lo > MINUTE_US and result.probes < self.max_probes:
            mid = floor_minute(lo + (hi - lo) // 2)
            if self._ask(mid, result) == "yes":
                lo = mid
            else:
                hi = mid
        result.edge = max(latest for _, answer, latest in result.answers if answer == "yes")
        log.info("%s: history reaches %s (now %s): delay %.0fs, measured with %d probe(s)", self.exchange,
                 iso(result.edge), iso(now_us), (now_us - result.edge) / 1e6, result.probes)
        return result

    def _ask(self, minute, result):
        """One probe: 'yes' (lines came), 'no' (refused, or empty where live has trades) or 'unknown'."""
        result.probes += 1
        options = replay_options(self.exchange, self.symbols, ["trade"], minute, minute + MINUTE_US, self.api_key)
        lines, latest, refused = 0, 0, False
        try:
            for chunk in self.client.stream_lines(options):
                for line in chunk:
                    try:
                        message = orjson.loads(line)
                        stamp = parse_timestamp_us(message["localTimestamp"])
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        continue
                    if message.get("type") == "trade":
                        lines += 1
                        latest = max(latest, stamp)
        except IncompleteStreamError as exc:
            refused = exc.refused
        except ServerError as exc:
            log.warning("%s: history probe of %s failed: %s", self.exchange, iso(minute), exc)
            refused = True
        if lines:
            answer = "yes"
        elif refused or self.live_trades_in(minute):
            answer = "no"
        else:
            answer = "unknown"
        result.answers.append((minute, answer, latest))
        return answer
