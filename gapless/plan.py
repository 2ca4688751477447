"""Planning replay requests: what history replay coverage lacks, asked for the way tardis-machine needs it.

* Raw types, trade bars and tickers are asked for exactly what is missing, with a look-behind
  (:data:`gapless.claims.LOOK_BEHIND_US`): the request starts early, so a ``disconnect`` just before the
  wanted start is seen, a line there proves the history recorder up, and tardis' local-time ``from``
  filter cannot cut messages whose exchange time is inside the wanted range. A start that replay
  coverage of the exchange already reaches is *anchored*: known continuous; it looks one minute back.
* Book-derived types (quotes, snapshots, book changes) need the day's initial book snapshot, so their
  requests start at 00:00 UTC of the day; rows already stored are skipped before insertion.
* Requests never cross a UTC day (except a quiet tail asked past its end); streams needing the same
  range share one request.
* What the replay ledger holds back is not asked for (see :mod:`gapless.ledger`); what it says
  tardis-machine's cache holds empty (``history_cached_empty``) is asked with a fresh filter set. So is a
  history outage once it is due again: through the stream's own filter set, a minute cached empty just after
  the outage's end looks like more outage.
"""
import time

from . import ledger
from .claims import LOOK_BEHIND_US, START_MARGIN_US
from .contract import clip_to_life
from .datatypes import parse_data_types
from .runs import ReplayRequest
from .intervals import merge, split, subtract
from .timeutil import DAY_US, MINUTE_US, US, ceil_minute, floor_day, floor_minute


MAX_SYMBOLS = 100  # per request: about 3 KB of symbols in the URL (servers refuse URLs beyond 8-16 KB)


def plan_requests(storage, exchange, symbols, data_types, start, end, now_us=None, limit=None):
    """The replay requests that download what replay coverage lacks in ``[start, end)`` (µs)."""
    data_types = parse_data_types(data_types)
    wanted = {(symbol, data_type): [(start, end)] for symbol in symbols for data_type in data_types}
    return plan_wanted(storage, exchange, wanted, now_us=now_us, limit=limit)


class Anchors:
    """Where history of an exchange is known continuous: its replay coverage, over every stream."""

    def __init__(self, storage, exchange):
        rows = storage.coverage_rows(exchange=exchange, source="replay")
        self.intervals = merge((r["start"], r["end"]) for r in rows if r["end"] > r["start"])

    def __call__(self, at):
        """True when replay coverage holds ``[at - start margin, at]``: the history recorder was up at ``at``."""
        return any(a <= at - START_MARGIN_US and b >= at for a, b in self.intervals)


def plan_wanted(storage, exchange, wanted, now_us=None, limit=None, proven_until=None):
    """Like :func:`plan_requests`, for ``{(symbol, DataType): [(start, end), ...]}`` wanted per stream.

    ``limit`` caps how far a quiet tail's retry may reach (the history horizon); ``now_us`` decides which
    ledger entries are due; ``proven_until`` is where history is proven available (runs reaching past it
    claim only what their lines prove).
    """
    now_us = int(time.time() * US) if now_us is None else now_us
    anchors = Anchors(storage, exchange)
    groups, skips, knowns = {}, {}, set()
    ledger_entries = ledger.entries_by_stream(storage, exchange)
    for (symbol, data_type), ranges in wanted.items():
        covered = storage.covered(exchange, symbol, data_type.name, "replay")
        # nothing after an option's expiration: its minutes there are outside the stream (gapless.contract)
        ranges = [r for r in (clip_to_life(exchange, symbol, floor_minute(a), ceil_minute(b)) for a, b in ranges)
                  if r[1] > r[0]]
        reach = max((b for _, b in ranges), default=0)
        stream_entries = ledger_entries.get((symbol, data_type.name), [])
        held, tails = ledger.held_back(stream_entries, now_us, anchors, reach)
        # what tardis-machine's cache holds empty for the stream's filter set is asked with a fresh one; so is a
        # history outage's retry: a minute the cache holds empty right after the outage's end looks exactly
        # like more outage through the stream's own filter set (the outage seems to end only at the next line)
        cached_empty = [(e["start"], e["end"]) for e in stream_entries if e["reason"] == "history_cached_empty"
                        or (e["reason"] == "history_outage" and e["retry_at"] <= now_us)]
        need = merge((floor_minute(a), ceil_minute(b)) for a, b in subtract(subtract(ranges, covered), held))
        if not need:
            continue

        def further(a, b):
            """A quiet tail due again is asked past its end, further each time, so the next event shows up; never
            past the end of an option's life (nothing comes after it: harness seed 86993)."""
            reach = b
            for x, y, attempts in tails:
                if a <= x < b:
                    far = y + ledger.tail_reach(attempts)
                    reach = max(reach, min(far, limit) if limit is not None else far)
            return max(b, clip_to_life(exchange, symbol, a, reach)[1])

        if data_type.book_derived:
            ends = {}
            for a, b in split(need, DAY_US):
                day = floor_day(a)
                ends[day] = max(ends.get(day, 0), further(a, b))
            for day, b in ends.items():
                fresh = _touches(cached_empty, day, b)
                groups.setdefault((day, day, b, False, fresh), set()).add((symbol, data_type.name))
                prefix = _covered_prefix(covered, day)
                if prefix > day:
                    skips[(day, symbol, data_type.name)] = prefix
        else:
            for a, b in split(need, DAY_US):
                b = further(a, b)
                anchored = anchors(a)
                known = anchored and any(x <= a - START_MARGIN_US and y >= a for x, y in covered)
                # anchored: a minute back is enough for tardis' local-time ``from`` not to cut the wanted range;
                # unanchored: the full look-behind, for a line (or a disconnect) to show up before the start
                behind = MINUTE_US if anchored else LOOK_BEHIND_US
                fresh = _touches(cached_empty, a - behind, b)
                groups.setdefault((a - behind, a, b, anchored, fresh), set()).add((symbol, data_type.name))
                if known:
                    knowns.add((a, symbol, data_type.name))
    requests = []
    for (start, claim_start, end, anchored, fresh), streams in sorted(groups.items()):
        for symbols_, types_ in _product_groups(streams):
            skip = tuple((s, d, skips[(start, s, d)]) for s in symbols_ for d in types_ if (start, s, d) in skips)
            known = tuple((s, d) for s in symbols_ for d in types_ if (claim_start, s, d) in knowns)
            requests.append(ReplayRequest(exchange, symbols_, types_, start, end, skip_before=skip,
                                          claim_start=claim_start, anchored=anchored, known=known,
                                          proven_until=proven_until, fresh=fresh))
    return requests


def _touches(ranges, start, end):
    """True when one of ``ranges`` overlaps ``[start, end)``."""
    return any(a < end and b > start for a, b in ranges)


def _covered_prefix(covered, at):
    """End of the covered interval that contains ``at`` (or ``at`` when none does)."""
    for a, b in covered:
        if a <= at < b:
            return b
    return at


def _product_groups(streams):
    """Split a set of (symbol, data type) into (symbols, data types) products, for one request each (at most
    :data:`MAX_SYMBOLS` symbols: the options travel in the URL, and an option chain has hundreds)."""
    by_type = {}
    for symbol, name in streams:
        by_type.setdefault(name, set()).add(symbol)
    by_symbols = {}
    for name, symbols in by_type.items():
        by_symbols.setdefault(tuple(sorted(symbols)), []).append(name)
    return [(symbols[i:i + MAX_SYMBOLS], tuple(sorted(names))) for symbols, names in sorted(by_symbols.items())
            for i in range(0, len(symbols), MAX_SYMBOLS)]
