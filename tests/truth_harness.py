"""Randomized fault schedules against the fake tardis-machine, on a manual clock (issue 11's harness).

An example draws a :class:`Schedule` (a few hours around a midnight: history outages anywhere, ending at a
whole second and a quarter of them on a minute boundary (the minute after one is replay once history
provably holds it; see tests/test_history_outage_start.py), live
drops/resets/exchange disconnects, a second recorder joining and leaving at random seconds, clock skew,
steps of tardis-machine's host clock while recording (issue 21), quiet periods, a silent symbol, service
restarts, random data types; in a quarter of the examples an exchange whose trades carry no ids, with a
second recorder), then :func:`run` plays it: a real
``Gapless`` service (recorder thread, downloads, healing passes) against a real double whose clock the
harness moves step by step. The result holds what is needed to check it against the double's market
model (see :mod:`tests.truth_checks`).
"""
import json
import random
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

import requests

from gapless.exceptions import UsageError
from gapless.recorder import Recorder
from gapless.service import Gapless
from gapless.storage import Storage
from gapless.streams import parse_streams
from tests.fake_tardis import FakeTardisMachine, ManualClock, MarketConfig, Outage
from tests.follow_support import HarnessFollower

MINUTE = 60_000_000
SYMBOLS = ("BTC-PERPETUAL", "ETH-PERPETUAL")
SILENT = "SOL-PERPETUAL"
DATA_TYPES = ("quote", "quote_1m", "quote_10s", "book_snapshot_5_1s", "trade", "trade_bar_1m", "trade_bar_10s",
              "derivative_ticker", "book_change")
DAY = datetime(2026, 11, 25, tzinfo=timezone.utc)
IDLESS_SHARE = 0.25  # examples on an exchange without trade ids (issue 21)
LIQUIDATION_SHARE = 0.3  # examples with Deribit's liquidation stream (issue 19)
BOOK_TICKER_SHARE = 0.3  # examples with Deribit's book_ticker (issue 19)
CHAIN_SHARE = 0.25  # examples with a few Deribit options' option_summary in one more group (issue 19)
# examples whose replay requests meet a cut connection or a garbage line (the replay read and the typed parse of
# bulk chunks fall back line by line around it)
REPLAY_FAULT_SHARE = 0.3
# examples of an option chain played nine hours later, across 08:00 UTC of DAY's next day, with one more option that
# expires then (in the window, its lookback, or while history catches up at the end): its minutes end there, nothing
# is asked past it, and it never counts as missing
EXPIRY_SHARE = 0.35
EXPIRY_SHIFT = 9 * 3600 * 1_000_000
EXPIRING = "BTC-26NOV26-86000-C"
OPTIONS = ("BTC-27NOV26-84000-P", "BTC-27NOV26-90000-C", "BTC-27NOV26-60000-P", "BTC-29JAN27-85000-C",
           "ETH-8DEC26-3000-P", "BTC-27NOV26-152600-C")


@dataclass
class Schedule:
    """One drawn example. Times are µs since the epoch (exchange = double time)."""

    seed: int
    start: int
    end: int
    symbols: tuple
    data_types: tuple
    skew_ms: int
    quiet: tuple  # ((symbol or "*", start_ms, end_ms), ...)
    history_outages: tuple  # ((start, end), ...)
    live_events: tuple  # ((at, kind), ...): kind in close, reset, exchange
    second_recorder: tuple  # ((start, stop), ...)
    restarts: tuple  # (at, ...)
    availability_s: int
    availability_mode: str
    steps: tuple  # the clock's stops
    refused: tuple = ()  # data types the service must refuse (book_change)
    clock_steps: tuple = ()  # ((at, seconds), ...): tardis-machine's host clock steps (NTP) while recording
    exchange: str = "deribit"  # or "kraken": trades without ids, identical trades, a second recorder
    arrival_spread_ms: int = 0  # live connections stamp their own localTimestamps (MarketConfig)
    # ((at, data type, symbols, minutes back), ...): another client of the server asks minutes too early, through
    # a stream's filter set (in "empty" mode tardis-machine's cache then holds them empty for good)
    early_asks: tuple = ()
    upgrade: str = "daily"  # when the service upgrades live minutes of book-derived types (GAPLESS_UPGRADE)
    workers: int = 0  # download worker processes (GAPLESS_WORKERS; 0: fetcher threads in the service's process)
    options: tuple = ()  # option symbols kept with option_summary only (one more GAPLESS_STREAMS group, issue 19)
    # ((kind, after_lines), ...): faults of the next replay requests, whatever they are: "cut" (the connection
    # closed after that many lines) or "malformed" (a garbage line inserted there, nothing lost)
    replay_faults: tuple = ()

    def describe(self):
        """One line to reproduce the example by hand."""
        return "seed %d: %s" % (self.seed, self)


def draw(seed):
    """Draw one example from a seed (deterministic)."""
    rng = random.Random(seed)
    start = int((DAY + timedelta(hours=22, minutes=rng.randint(0, 100))).timestamp()) * 1_000_000
    end = start + rng.randint(40, 150) * MINUTE
    symbols = SYMBOLS + ((SILENT,) if rng.random() < 0.5 else ())
    types = tuple(sorted(rng.sample(DATA_TYPES, rng.randint(2, 4))))
    refused = tuple(t for t in types if t == "book_change")
    types = tuple(t for t in types if t != "book_change") or ("trade",)
    lookback_start = start - 120 * MINUTE
    quiet = []
    if SILENT in symbols:
        quiet.append((SILENT, 0, 2 ** 62 // 1000))
    for _ in range(rng.randint(0, 2)):
        a = rng.randint(lookback_start, end) // 1000
        quiet.append((rng.choice(("*",) + SYMBOLS), a, a + rng.randint(2, 60) * 60_000))
    outages = []
    ends = random.Random("outage-ends/%d" % seed)  # its own draws: every other draw of a seed stays as it was
    for _ in range(rng.randint(0, 3)):
        # anywhere, but often right around the places where requests start: the window start and midnight
        anchor = rng.choice([rng.randint(lookback_start, end), start - 120 * MINUTE, _midnight_after(start)])
        a = anchor + rng.randint(-3 * MINUTE, 3 * MINUTE)
        outages.append((a, _outage_end(a + rng.randint(30_000_000, 40 * MINUTE), ends)))
    outages = _disjoint(outages)  # one history recorder: its outages never overlap
    live = tuple(sorted((rng.randint(start + MINUTE, end), rng.choice(("close", "reset", "exchange")))
                        for _ in range(rng.randint(0, 4))))
    second = []
    if rng.random() < 0.5:
        a = rng.randint(start, end - 5 * MINUTE)
        second.append((a, a + rng.randint(30_000_000, 30 * MINUTE)))
    restarts = tuple(sorted(rng.randint(start + 5 * MINUTE, end) for _ in range(rng.randint(0, 2))))
    steps, t = [], start
    while t < end:
        t += rng.choice((30, 60, 120, 180, 300)) * 1_000_000
        steps.append(min(t, end))
    skew = rng.choice((0, 0, rng.randint(-2000, 2000)))
    availability = rng.randint(20, 120)
    mode = rng.choice(("error", "empty"))
    # drawn last, so that every other part of a seed's schedule is what it was before clock steps existed
    clock_steps = []
    if rng.random() < 0.3:
        for _ in range(rng.randint(1, 2)):
            at = rng.randint(start + 30, end) // 1_000_000 * 1_000_000  # at any second while recording
            clock_steps.append((at, rng.choice((-1, 1)) * rng.randint(5, 120)))
    schedule = Schedule(seed, start, end, symbols, types, skew, tuple(quiet), tuple(sorted(outages)), live,
                        tuple(second), restarts, availability, mode, tuple(steps), refused, tuple(sorted(clock_steps)))
    if rng.random() < IDLESS_SHARE:  # drawn after the rest: every other part of the example stays what it was
        # an exchange without trade ids, recorded by two recorders whose connections stamp arrivals apart
        if not second:
            a = rng.randint(start, end - 5 * MINUTE)
            second.append((a, a + rng.randint(5 * MINUTE, 40 * MINUTE)))
        types = tuple(sorted(set(schedule.data_types) | {"trade"}))
        schedule = replace(schedule, exchange="kraken", arrival_spread_ms=1, second_recorder=tuple(second),
                           data_types=types)
    # the service's settings, from their own draws (every other part of a seed stays what it was): upgrades at
    # a different time must not change truth, and the worker processes (the default outside the harness) must
    # store what the threads store
    settings = random.Random("settings/%d" % seed)
    schedule = replace(schedule, early_asks=_early_asks(seed, schedule), upgrade=settings.choice(("daily", "hourly")),
                       workers=1 if settings.random() < 0.25 else 0)
    # Deribit's liquidations (issue 19), from their own draw: claimed only where the trades channel is, which the
    # service asks along whether trade is a stream of its own or not
    if schedule.exchange == "deribit" and random.Random("liquidation/%d" % seed).random() < LIQUIDATION_SHARE:
        schedule = replace(schedule, data_types=tuple(sorted(set(schedule.data_types) | {"liquidation"})))
    more = random.Random("deribit-types/%d" % seed)  # book tickers and an option chain, from their own draws
    if schedule.exchange == "deribit" and more.random() < BOOK_TICKER_SHARE:
        schedule = replace(schedule, data_types=tuple(sorted(set(schedule.data_types) | {"book_ticker"})))
    if schedule.exchange == "deribit" and more.random() < CHAIN_SHARE:
        schedule = replace(schedule, options=tuple(sorted(more.sample(OPTIONS, more.randint(2, 4)))))
    if schedule.options and random.Random("expiry/%d" % seed).random() < EXPIRY_SHARE:
        schedule = replace(_shifted(schedule, EXPIRY_SHIFT), options=tuple(sorted(schedule.options + (EXPIRING,))))
    faults = random.Random("replay-faults/%d" % seed)  # from their own draws, like every part added later
    if faults.random() < REPLAY_FAULT_SHARE:
        schedule = replace(schedule, replay_faults=tuple(
            (faults.choice(("cut", "malformed")), faults.randint(1, 3000)) for _ in range(faults.randint(1, 3))))
    return schedule


def streams_of(schedule, data_types=None):
    """The service's GAPLESS_STREAMS: the perpetuals' data types, and the options' option_summary if any."""
    text = "%s:%s:%s" % (schedule.exchange, ",".join(schedule.symbols), ",".join(data_types or schedule.data_types))
    if schedule.options:
        text += ";%s:%s:option_summary" % (schedule.exchange, ",".join(schedule.options))
    return text


def _early_asks(seed, schedule):
    """Other clients asking minutes before they are available (their own draws: the rest stays as it was)."""
    rng = random.Random("early-asks/%d" % seed)
    if rng.random() >= 0.4:
        return ()
    asks = set()
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(schedule.start, schedule.end) // 1_000_000 * 1_000_000
        kind = rng.choice(("trade", "book_change", "derivative_ticker"))
        symbols = rng.choice((schedule.symbols, SYMBOLS))  # gapless asks a silent symbol on its own
        asks.add((at, kind, tuple(sorted(symbols)), rng.randint(0, 6)))
    return tuple(sorted(asks))


def _shifted(schedule, delta):
    """The same example ``delta`` µs later: every time of it moves (a silent symbol's quiet stays for ever)."""
    ms = delta // 1000
    return replace(
        schedule, start=schedule.start + delta, end=schedule.end + delta,
        quiet=tuple((symbol, a + ms, b + ms) if b < 2 ** 62 // 1000 else (symbol, a, b) for symbol, a, b in schedule.quiet),
        history_outages=tuple((a + delta, b + delta) for a, b in schedule.history_outages),
        live_events=tuple((at + delta, kind) for at, kind in schedule.live_events),
        second_recorder=tuple((a + delta, b + delta) for a, b in schedule.second_recorder),
        restarts=tuple(at + delta for at in schedule.restarts), steps=tuple(at + delta for at in schedule.steps),
        clock_steps=tuple((at + delta, seconds) for at, seconds in schedule.clock_steps),
        early_asks=tuple((at + delta,) + tuple(rest) for at, *rest in schedule.early_asks))


def _outage_end(us, rng):
    """The history recorder comes back at a whole second of a minute, a quarter of the times on the minute."""
    if rng.random() < 0.25:
        return -(-us // MINUTE) * MINUTE
    return us // 1_000_000 * 1_000_000


def _disjoint(intervals):
    merged = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1] + 60_000_000:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def _midnight_after(us):
    return (us // (1440 * MINUTE) + 1) * 1440 * MINUTE


@dataclass
class Result:
    """What an example left behind, for the checks."""

    schedule: Schedule
    machine: FakeTardisMachine
    database_url: str
    lookback_us: int
    checkpoints: list = field(default_factory=list)  # (now, status report, {stream: frame}) along the way
    final: tuple = None  # (now, status report, {stream: frame}) after the final healing
    refusals: list = field(default_factory=list)
    follow_problems: list = field(default_factory=list)  # a follower's copy against the published series
    follower_kills: int = 0
    follower_events: int = 0


FINAL_ADVANCE = 150 * MINUTE  # after the last step: history catches up, a finished day's outages are re-asked


def run(schedule, tmp_path, checkpoint_every=4):
    """Play ``schedule``; return a :class:`Result` (the machine is stopped, its records kept)."""
    clock = ManualClock(schedule.start)
    market = MarketConfig(book_rate=0.3, trade_rate=0.3, ticker_interval_s=5.0, skew_ms=schedule.skew_ms,
                          quiet=schedule.quiet, live_arrival_spread_ms=schedule.arrival_spread_ms)
    machine = FakeTardisMachine(clock=clock, market=market, default_symbols=schedule.symbols,
                                availability_delay=timedelta(seconds=schedule.availability_s),
                                availability_mode=schedule.availability_mode,
                                replay_outages=[Outage(_dt(a), _dt(b)) for a, b in schedule.history_outages])
    database_url = "sqlite:///%s" % (tmp_path / ("truth-%d.db" % schedule.seed))
    lookback = schedule.end - schedule.start + FINAL_ADVANCE + 125 * MINUTE
    result = Result(schedule, machine, database_url, lookback)
    with machine:
        for kind, after in schedule.replay_faults:
            if kind == "cut":
                machine.add_replay_fault("cut", after_lines=after)
            else:
                machine.add_replay_fault("malformed", after_lines=after, line=b'{"type":"trade","symbol":')
        if schedule.refused:
            try:
                _service(schedule, machine, database_url, lookback, schedule.data_types + schedule.refused)
            except UsageError as exc:
                result.refusals.append(str(exc))
        service = _service(schedule, machine, database_url, lookback, schedule.data_types)
        service.recorder.start()
        # a follower beside the service, from before anything is published (issue 18)
        follower = HarnessFollower(database_url, service.window()[0], schedule.seed)
        second = None
        events = sorted([(t, "live", k) for t, k in schedule.live_events] +
                        [(t, "restart", None) for t in schedule.restarts] +
                        [(a, "second_on", None) for a, _ in schedule.second_recorder] +
                        [(b, "second_off", None) for _, b in schedule.second_recorder] +
                        [(a, "clock_step", seconds) for a, seconds in schedule.clock_steps] +
                        [(a, "early_ask", (kind, symbols, back)) for a, kind, symbols, back in schedule.early_asks])
        try:
            for i, step in enumerate(schedule.steps):
                while events and events[0][0] <= step:
                    at, kind, detail = events.pop(0)
                    advance(clock, machine, at, [service.recorder] + ([second] if second else []))
                    if kind == "live":
                        if detail == "exchange":
                            machine.exchange_drop(2.0)
                        else:
                            machine.drop_clients(detail)
                    elif kind == "restart":
                        service.stop()
                        service = _service(schedule, machine, database_url, lookback, schedule.data_types)
                        service.recorder.start()
                    elif kind == "clock_step":
                        machine.step_local_clock(detail)
                    elif kind == "early_ask":
                        _ask_too_early(machine, schedule.exchange, at, *detail)
                    elif kind == "second_on" and second is None:
                        second = _recorder(schedule, machine, database_url).start()
                    elif kind == "second_off" and second is not None:
                        second.stop()
                        second.storage.close()
                        second = None
                advance(clock, machine, step, [service.recorder] + ([second] if second else []))
                service.heal()
                if i % checkpoint_every == checkpoint_every - 1:
                    result.checkpoints.append(_snapshot(service))
                    result.follow_problems += follower.check(result.checkpoints[-1][2], schedule.exchange)
            if second is not None:
                second.stop()
                second.storage.close()
            service.recorder.stop()
            # no live data any more: history catches up, finished days' outages come up again
            for _ in range(int(FINAL_ADVANCE // (30 * MINUTE))):
                clock.advance(30 * 60)
                service.heal()
            service.heal()
            result.final = _snapshot(service)
            result.follow_problems += follower.check(result.final[2], schedule.exchange)
            result.follower_kills = follower.kills
            result.follower_events = len(follower.copy.events)
        finally:
            follower.close()
            service.stop()
    return result


def _ask_too_early(machine, exchange, at, data_type, symbols, back):
    """Another client of the server asks ``back`` minutes before ``at`` up to the minute after it.

    The replay faults of a schedule hit the next requests, whoever makes them: a cut of this client's answer is
    its own concern (seed 84441 stopped the whole example on it), the server has served it all the same."""
    first = at - at % MINUTE - back * MINUTE
    options = {"exchange": exchange, "symbols": list(symbols), "from": _dt(first).isoformat(),
               "to": _dt(at - at % MINUTE + MINUTE).isoformat(), "dataTypes": [data_type]}
    try:
        requests.get(machine.http_url + "/replay-normalized", params={"options": json.dumps(options)}, timeout=30)
    except requests.exceptions.ChunkedEncodingError:
        pass  # cut by a replay fault of the schedule


def _dt(us):
    return datetime.fromtimestamp(us // 1_000_000, timezone.utc).replace(microsecond=us % 1_000_000)


def _service(schedule, machine, database_url, lookback, data_types):
    return Gapless(streams=streams_of(schedule, data_types), lookback="%ds" % (lookback // 1_000_000),
                   database_url=database_url, tardis_url=machine.http_url, tardis_ws_url=machine.ws_url,
                   history_delay="15m", rebuild_interval="3600s", workers=schedule.workers, upgrade=schedule.upgrade,
                   now=machine.clock.now_us, recorder_options=dict(_RECORDER_OPTIONS))


_RECORDER_OPTIONS = {"backoff_base": 0.01, "backoff_cap": 0.05, "flush_interval": 0.02, "recv_timeout": 0.01,
                     "data_silence": 3600.0,
                     "dead_after": 3600.0}


def _recorder(schedule, machine, database_url):
    (group,) = parse_streams(streams_of(schedule))
    return Recorder(Storage(database_url), machine.ws_url, schedule.exchange, group.symbols, group.data_types,
                    clock=lambda: machine.clock.now_us() / 1e6, pairs=group.pairs, **_RECORDER_OPTIONS)


def advance(clock, machine, to_us, recorders, step_us=60_000_000):
    """Move the clock to ``to_us`` in steps of at most ``step_us`` and wait until the recorders stored what was sent.

    First the recorders must be connected: a subscription made after the clock moved would start later. A step
    sends everything due in it at once: keep it well below the double's 5 MiB send buffer at the market's rates.
    """
    _settle(machine, recorders)
    while clock.now_us() < to_us:
        clock.set(min(to_us, clock.now_us() + step_us))
        _settle(machine, recorders)


def _settle(machine, recorders, timeout=10.0):
    """Wait until the double sends nothing more for now and every recorder committed what it received.

    Quiescence, observed: what the double wrote and what the recorders committed stay the same over a few
    polls (there is no event to wait on across two processes' worth of sockets and threads).
    """
    deadline = time.monotonic() + timeout
    last, same = None, 0
    while time.monotonic() < deadline:
        state = (sum(c.sent_count for c in machine.connections),
                 tuple(r.health()["frames_received"] for r in recorders if r.is_alive()))
        # the double has written everything due (its own account), and the recorders took it all
        ready = machine.live_caught_up() and all(_idle(r) for r in recorders)
        same = same + 1 if state == last and ready else 0
        if same >= 3:
            return
        last = state
        time.sleep(0.004)


def _idle(recorder):
    # connected and committed: the frames the double sent on the open connection are all received
    health = recorder.health()
    return not recorder.is_alive() or (health["connected"] and not health["uncommitted"])


def _snapshot(service, tries=5):
    """Status and series of the service's window at one clock reading and one database state.

    The recorder may still commit between two reads (a reconnect's first frames): a snapshot counts only
    when the status read before and after the series agree with each other.
    """
    now = service.now()
    for _ in range(tries):
        before = service.status()
        frames = service.series()
        after = service.status()
        if [s["minutes"] for s in before["streams"]] == [s["minutes"] for s in after["streams"]]:
            return now, after, frames
    return now, after, frames

