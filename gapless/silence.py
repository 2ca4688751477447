"""Silent minutes of a replay run: a quiet market, or tardis-machine's cached EMPTY answer?

tardis-machine caches every one-minute data-feed slice it fetched, per filter set (the channels and symbols
of one request), for good, and serves every client from that cache. Where upstream answers a minute that is
not available yet with an EMPTY slice, that empty slice is cached too: any client that asked the minute too
early (an older gapless, another tool) leaves it empty for that filter set forever. A run through that
filter set then has lines before and after the minute and nothing inside: exactly a quiet market. For a
book-derived type it is worse: the server rebuilds the book across the minute without its changes, so every
later book of the run is wrong.

So a replay minute is claimed as quiet only when its silence is confirmed by a source that cannot be a
cached empty answer. Only the silent minutes (no line of the run at all, any stream: a slice holds every
stream of its filter set) that a claim would cover are checked, one contiguous stretch at a time, so a busy
stream costs nothing. The check asks the raw channel behind each of the run's data types (``trade``,
``book_change``, ``derivative_ticker``: every raw message gives a line; ``book_change`` from 00:00, since it too
needs the day's snapshot: a run with silent book minutes is a quiet one, so that costs little), first through
the run's own filter
set (the same channels and symbols: the very slices the run was answered from, from the cache): raw lines in
the minute mean its slice is not empty, and the run's types simply had nothing to say there. For the
minutes still without lines, the same request with a filter set nothing can have cached (the run's symbols
plus one no exchange lists, new each time: :func:`gapless.replay.fresh_symbol`): no lines there either is a
quiet market.

The fresh request starts :data:`~gapless.claims.LOOK_BEHIND_US` before the stretch and asks for disconnect
messages: the minute a cached empty slice hides may hold the disconnect of a hole in tardis' own recording, and a
request starting inside the hole shows it as a quiet market. A minute inside a hole is ``history_outage``: no
claim crosses the hole (cut as after a disconnect the run saw itself), with no book cut (the reconnect snapshot
rebuilds every filter set's book).

A minute the fresh request has lines for was cached empty (``history_cached_empty``); one it could not ask
(a failure) is ``unverified_quiet``. Either way no claim covers the exchange times whose events could have
arrived in it (:data:`CUT_BEFORE_US` before it to :data:`CUT_AFTER_US` after it, from the latency margin and
the skew bound); for book-derived types no claim and no row of the run from that minute on. The replay
ledger gets the range with its reason, for every stream whose claims it cuts: a cached-empty range is asked
again at once with a fresh filter set. A minute an earlier run of the filter set found cached empty (settled,
not asked again) cuts a run's claims the same way and is reported the same way, once per run and stream: the
stream that cut may not be the one the earlier run reported it for (a bar whose claim stopped short of it).
"""
import dataclasses
import logging

import numpy as np
import orjson

from .claims import LATENCY_MARGIN_US, LOOK_BEHIND_US, SKEW_BOUND_US
from .datatypes import parse_data_type
from .exceptions import GaplessError
from .intervals import subtract
from .replay import replay_options
from .silence_memory import CACHED_EMPTY, DOWN, QUIET, UNVERIFIED
from .timeutil import DAY_US, MINUTE_US, iso, parse_timestamp_us

log = logging.getLogger(__name__)

# an event arriving (local time) in a minute has an exchange time from latency + skew before it to skew after it
CUT_BEFORE_US = LATENCY_MARGIN_US + SKEW_BOUND_US
CUT_AFTER_US = SKEW_BOUND_US
PAST_STRETCH_US = 2 * MINUTE_US
_AFTER_EVERYTHING = 2 ** 62
_RAW = {"book_snapshot": "book_change", "book_change": "book_change", "trade": "trade", "trade_bar": "trade",
        "derivative_ticker": "derivative_ticker", "liquidation": "trade", "book_ticker": "book_ticker",
        "option_summary": "option_summary"}


class SilenceCheck:
    """Vets the batches of one replay run (see the module docstring); ``vet`` returns the batch to write."""

    def __init__(self, request, client, api_key=None, answers=None):
        self.request = request
        self.answers = answers  # CheckAnswers shared by the runs of a feed (None: every run asks for itself)
        self.client = client
        self.api_key = api_key
        self.types = {name: parse_data_type(name) for name in request.data_types}
        self._raw_only = all(t.family in ("trade", "book_change", "liquidation", "book_ticker", "option_summary")
                             for t in self.types.values())
        # local minute -> QUIET | CACHED_EMPTY | UNVERIFIED; minutes an earlier run settled for this filter set
        # (slices never change once cached) are not asked again
        self.verdicts = dict(getattr(request, "settled", ()))
        # the minutes an earlier run found cached empty: they cut this run's claims like the ones it finds itself,
        # and each stream they cut gets its ledger entry as well (once per run), or nothing ever asks it fresh
        self._known_bad = sorted(m for m, verdict in self.verdicts.items() if verdict != QUIET)
        self._known_reported = set()
        self._books = [(s, d) for s, d in request.streams if self.types[d].book_derived]
        self.requests = 0
        self._pending = set()  # silent minutes no claim reached yet
        # (disconnect, next line): holes in tardis' recording the fresh checks showed (local time), or an earlier
        # run did (settled with their minutes: a restart does not ask them again, seed 86045)
        self._holes = list(getattr(request, "holes", ()))
        self._book_cut = None  # (local minute, reason): book-derived rows and claims from here on are dropped
        self._book_cut_reported = set()  # the books whose claims the cut reached: their ledger entry is made
        self._book_stamps = {}  # (symbol, book type) -> the newest exchange timestamp of its rows kept

    def vet(self, batch):
        """Verify the silent minutes the batch's claims would cover; cut what is not proven quiet."""
        if getattr(self.request, "fresh", False):
            return batch  # a filter set of its own: nothing cached can have answered it
        self._pending.update(m for m in batch.silent if m not in self.verdicts)
        due = sorted(m for m in self._pending if _reaches(batch.claims, m))
        report = []
        if due:
            self._pending.difference_update(due)
            self._verify(due)
            report = self._report([m for m in due if self.verdicts[m] != QUIET], batch.claims)
            self._settle(batch, due)
        self._explain_unclaimed(batch)
        if self._known_bad:
            known = [e for e in self._report(self._known_bad, batch.claims) if e not in self._known_reported]
            self._known_reported.update(known)
            report += known
        bad = sorted(m for m, verdict in self.verdicts.items() if verdict not in (QUIET, DOWN))
        wrong_books = bad
        if wrong_books and self._books and self._book_cut is None:
            # a book rebuilt across a missing minute is wrong for the rest of the run; the day stays asked with a
            # fresh filter set until replay covers all of it (the ledger entry lasts that long)
            self._book_cut = (wrong_books[0], self.verdicts[wrong_books[0]])
        if self._book_cut is not None:
            # each book whose claims reach the cut gets its entry, in whichever batch they first do: a cut known
            # from the first batch (minutes an earlier run settled) cuts claims that reach it only in a later one,
            # and without an entry nothing ever asks that book fresh (harness seed 86562)
            first, reason = self._book_cut
            day_end = first - first % DAY_US + DAY_US
            reached = {(c.symbol, c.data_type) for c in batch.claims if c.end > first - CUT_BEFORE_US}
            newly = [k for k in self._books if k in reached and k not in self._book_cut_reported]
            self._book_cut_reported.update(newly)
            report += [(s, d, first - CUT_BEFORE_US, day_end, reason) for s, d in newly]
        if report:
            batch.unclaimed = list(batch.unclaimed) + report
        if self._books and (self._book_cut is None or batch.rows):
            if self._book_cut is not None:
                batch.rows = self._drop_book_rows(batch.rows)
            self._note_book_stamps(batch.rows)
        if bad:
            batch.claims = [piece for claim in batch.claims for piece in self._cut(claim, bad)]
        if self._holes:
            batch.claims = [piece for claim in batch.claims for piece in self._cut_holes(claim)]
        return batch

    def _settle(self, batch, minutes):
        """Hand the verdicts on ``minutes`` to the batch, for later runs of the filter set not to ask them again. A
        minute in a hole is settled with the hole, when the hole is closed (the next line was seen): a later run cuts
        its claims there without asking; an open one may still end, so it is asked again."""
        closed = [h for h in self._holes if h[1] < _AFTER_EVERYTHING]
        batch.settled = list(batch.settled) + [(m, self.verdicts[m]) for m in minutes if self.verdicts[m] != UNVERIFIED
                                               and (self.verdicts[m] != DOWN or _in_hole(m, closed))]
        batch.holes = closed

    def _explain_unclaimed(self, batch):
        """An unproven start, or a history outage, that the run never saw a line in may be the cache's doing: check
        its silent minutes.

        A run that begins without a line in its look-behind claims a stream only from its first evidence on, and
        after a ``disconnect`` only from the next line (a book: the reconnect snapshot), so silent minutes there are
        reached by no claim and never checked. The stream's ledger entry says ``unproven_start`` or
        ``history_outage`` and is asked again later through the same filter set, whose cache holds those minutes
        empty for good: the start is never proven (harness seed 86840: trades asked too early just after a hole in
        tardis' recording), the book never gets its reconnect snapshot (seed 86984: the rest of the day stayed
        live). Where a minute of the entry is cached empty, the entry says so instead (``history_cached_empty``; a
        book's to the end of the day) and is asked again at once with a fresh filter set.
        """
        entries = [u for u in batch.unclaimed if u[4] in ("unproven_start", "history_outage")]
        if not entries:
            return
        # a minute wholly inside a hole a check of this run already found is down (asking it again tells nothing)
        silent = sorted(m for m in self._pending if any(a - a % MINUTE_US <= m < b for _, _, a, b, _ in entries)
                        and not any(x <= m and m + MINUTE_US <= y for x, y in self._holes))
        if silent:
            self._pending.difference_update(silent)
            self._verify(silent)
            # a quiet verdict is not settled: the fresh request may have started inside a hole of tardis' recording
            # (no disconnect shows then), and its minutes must not pass for quiet in a later run of the filter set
            self._settle(batch, [m for m in silent if self.verdicts[m] != QUIET])

        def explained(entry):
            symbol, name, a, b, reason = entry
            if reason not in ("unproven_start", "history_outage"):
                return entry
            cached = [m for m in range(a - a % MINUTE_US, b, MINUTE_US) if self.verdicts.get(m) == CACHED_EMPTY]
            if not cached:
                return entry
            if self.types[name].book_derived:
                b = max(b, cached[0] - cached[0] % DAY_US + DAY_US)  # its book is wrong after it in this filter set
            return symbol, name, a, b, CACHED_EMPTY

        batch.unclaimed = [explained(u) for u in batch.unclaimed]

    def _cut_holes(self, claim):
        """No claim across a hole in tardis' recording: an event that arrived in it is lost (from the latency margin
        before the disconnect to the skew bound after the next line; a book is whole again from its reconnect
        snapshot, stamped at least the skew bound before that line), as after a disconnect the run saw itself."""
        data_type = self.types.get(claim.data_type)
        after = -SKEW_BOUND_US if data_type is not None and data_type.book_derived else SKEW_BOUND_US
        return _pieces(claim, [(a - LATENCY_MARGIN_US, b + after) for a, b in self._holes], DOWN)

    # -- asking ----------------------------------------------------------------------------------
    def _verify(self, minutes):
        """A silent minute is quiet when its raw slice has messages in the run's own filter set (the run's types
        just had nothing to say: a sample comes with the next interval's event, a book change may leave the top
        unchanged) or has none in a fresh one (a quiet market); cached empty when only the fresh one has some."""
        for first, last in _stretches(minutes):
            stretch = range(first, last + MINUTE_US, MINUTE_US)
            # a run of raw types only (a line per raw message) already is its filter set's raw answer
            cached = set() if self._raw_only else self._ask_cached(first, last + MINUTE_US)
            rest = [m for m in stretch if cached is not None and m not in cached]
            # asked a little past the stretch: an empty minute proves a quiet market only where history is proven
            # available (the run's proven edge, or a later line): upstream may answer a minute not available yet
            # empty
            # the fresh request looks behind the stretch, with disconnect messages: a minute the run's filter set
            # holds empty may hide the disconnect of a hole in tardis' own recording, and a request that starts
            # inside the hole shows it as a quiet market (harness seed 81067)
            downs = []
            fresh = self._ask(rest[0] - LOOK_BEHIND_US, rest[-1] + MINUTE_US + PAST_STRETCH_US, fresh=True,
                              downs=downs) if rest else set()
            self._holes += downs
            for m in stretch:
                if cached is None or fresh is None:
                    self.verdicts[m] = UNVERIFIED
                elif m not in rest:
                    self.verdicts[m] = QUIET
                elif m in fresh:
                    self.verdicts[m] = CACHED_EMPTY
                elif _in_hole(m, downs):
                    self.verdicts[m] = DOWN  # the history recorder was down in it: not a quiet market
                else:
                    proven = self.request.proven_until is None or m + MINUTE_US <= self.request.proven_until
                    self.verdicts[m] = QUIET if proven or any(x > m for x in fresh) else UNVERIFIED
                if self.verdicts[m] != QUIET:
                    log.warning("%s: replay sent nothing in the minute %s, %s", self.request.describe(), iso(m),
                                "which a fresh request has data for: tardis-machine's cache holds it EMPTY (it "
                                "was asked before it was available); not claimed, asked again with a fresh "
                                "filter set" if self.verdicts[m] == CACHED_EMPTY else
                                "inside a hole of tardis' own recording (a fresh request shows its disconnect); "
                                "not claimed" if self.verdicts[m] == DOWN else
                                "and it could not be verified; not claimed")

    def _ask_cached(self, start, end):
        """:meth:`_ask` through the run's own filter set, once per process: its slices never change once cached,
        and another run of the filter set (in flight at the same time, or a later one) would ask the same."""
        if self.answers is None:
            return self._ask(start, end, fresh=False)
        request = self.request
        key = (request.exchange, tuple(sorted(request.symbols)),
               tuple(sorted({_RAW[t.family] for t in self.types.values()})), start, end)
        return self.answers.get(key, lambda: self._ask(start, end, fresh=False))

    def _ask(self, start, end, fresh, downs=None):
        """Local minutes of ``[start, end)`` with raw lines of the run's symbols, through the run's own filter set
        (the raw channels behind its data types, its symbols: the slices it was answered from) or a fresh one
        (None: the request failed). ``downs``: a list that gets ``(disconnect, next line)`` local times, the holes
        in tardis' recording the answer shows (disconnect messages are asked only then)."""
        request = self.request
        raw = sorted({_RAW[t.family] for t in self.types.values()})
        if "book_change" in raw:
            start -= start % DAY_US  # book changes, like every book type, come only after the day's snapshot
        options = replay_options(request.exchange, request.symbols, raw, start, end, self.api_key,
                                 fresh="check" if fresh else None)
        # a check, not a download: the same filter set (channels and symbols) as the run, but never the very same
        # request as a stream's (whose raw types it may share); raw messages are what count here
        options["withDisconnectMessages"] = downs is not None
        symbols = set(request.symbols)
        seen = set()
        down = None  # the local time of a disconnect not yet followed by a line
        self.requests += 1
        try:
            for chunk in self.client.stream_lines(options):
                for line in chunk:
                    try:
                        message = orjson.loads(line)
                        stamp = parse_timestamp_us(message["localTimestamp"])
                        if message.get("type") == "disconnect":
                            down = stamp if down is None else down
                        elif message.get("symbol") in symbols:
                            seen.add(stamp - stamp % MINUTE_US)
                            if down is not None:
                                downs.append((down, stamp))
                                down = None
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                        continue
            if down is not None:
                downs.append((down, _AFTER_EVERYTHING))
        except GaplessError as exc:
            log.warning("%s: checking the silent minutes [%s, %s) failed: %s", request.describe(), iso(start),
                        iso(end), exc)
            return None
        return seen

    # -- cutting ---------------------------------------------------------------------------------
    def _report(self, new_bad, claims):
        """Ledger entries of the other streams for the minutes found not quiet just now (a stretch per entry), for
        the streams whose claims they cut (a silent symbol's own gap keeps its own reason)."""
        report = []
        for reason in (CACHED_EMPTY, UNVERIFIED, DOWN):
            for first, last in _stretches([m for m in new_bad if self.verdicts[m] == reason]):
                lo, hi = first - CUT_BEFORE_US, last + MINUTE_US + CUT_AFTER_US
                cut = {(c.symbol, c.data_type) for c in claims if c.start < hi and c.end > lo}
                report += [(symbol, name, lo, hi, reason) for symbol, name in self.request.streams
                           if not self.types[name].book_derived and (symbol, name) in cut]
        return report

    def _cut(self, claim, bad):
        data_type = self.types.get(claim.data_type)
        if data_type is not None and data_type.book_derived and self._book_cut is not None:
            # nothing of the stream past its newest row kept: a sample or a change that arrived after the cut (the
            # next event after a quiet stretch) may be what proved the minutes before it, and it is gone
            last = self._book_stamps.get((claim.symbol, claim.data_type), claim.start)
            holes = [(min(self._book_cut[0] - CUT_BEFORE_US, last), _AFTER_EVERYTHING)]
        else:
            holes = [(m - CUT_BEFORE_US, m + MINUTE_US + CUT_AFTER_US) for m in bad]
        return _pieces(claim, holes, CACHED_EMPTY)

    def _note_book_stamps(self, rows):
        for table, block in rows.items():
            if block and (table.startswith("book_snapshot") or table == "book_change"):
                stamps = np.asarray(block.array(5))
                symbols = np.asarray(list(block.column(1)), dtype=object)
                names = np.asarray(list(block.column(3)), dtype=object)
                for symbol in block.distinct(1):
                    for name in block.distinct(3):
                        mask = (symbols == symbol) & (names == name)
                        if mask.any():
                            key = (symbol, name)
                            self._book_stamps[key] = max(self._book_stamps.get(key, -1), int(stamps[mask].max()))

    def _drop_book_rows(self, rows):
        since = self._book_cut[0]
        kept = {}
        for table, block in rows.items():
            if block and (table.startswith("book_snapshot") or table == "book_change"):
                keep = np.asarray(block.array(6)) < since
                if not keep.all():
                    block = block.select(keep)
            kept[table] = block
        return kept


def _in_hole(minute, holes):
    """True when the local ``minute`` overlaps one of ``holes`` ((disconnect, next line), the skew bound after it)."""
    return any(a < minute + MINUTE_US and b + SKEW_BOUND_US > minute for a, b in holes)


def _reaches(claims, minute):
    """True when a claim covers exchange times whose events could have arrived in the local ``minute``."""
    lo, hi = minute - CUT_BEFORE_US, minute + MINUTE_US + CUT_AFTER_US
    return any(c.start < hi and c.end > lo for c in claims)


def _pieces(claim, holes, reason):
    """``claim`` without ``holes`` (exchange time): the pieces, each after the first a segment of its own."""
    pieces = subtract([(claim.start, claim.end)], holes)
    if pieces == [(claim.start, claim.end)]:
        return [claim]
    return [dataclasses.replace(claim, start=a, end=b,
                                segment=claim.segment if a == claim.start else "%s/%d" % (claim.segment, a),
                                end_reason=claim.end_reason if b == claim.end else reason)
            for a, b in pieces]


def _stretches(minutes):
    """Contiguous runs of sorted minutes as ``[(first, last), ...]``."""
    runs = []
    for m in minutes:
        if runs and m == runs[-1][1] + MINUTE_US:
            runs[-1][1] = m
        else:
            runs.append([m, m])
    return [tuple(r) for r in runs]
