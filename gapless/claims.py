"""Coverage claims of one run (a replay request or a live connection): what is provably stored, per stream.

Claims are in exchange time and never claim more than the run delivered. A run is cut into *segments*
by ``disconnect`` lines; each stream's claim in a segment runs from its *start* to its *end*.

Where a claim may START (the subscription or the history recorder must provably have been up, and a
local-time filter must not have cut messages: exchange and local clocks may differ by up to
:data:`SKEW_BOUND_US`, latency is below :data:`LATENCY_MARGIN_US`):

* book types (quotes, snapshots): at the stream's first row, a full book snapshot; a replay from 00:00
  starts at 00:00 when that snapshot is the day's initial one (within :data:`DAY_SNAPSHOT_SLACK_US`);
* replay, first segment, proven: the run's wanted start (``claim_start``: the request asks from
  :data:`LOOK_BEHIND_US` earlier). Proven means the planner knew history continuous through it
  (``anchored``), or a line arrived in the look-behind (the history recorder was up before the wanted
  start, and an outage after it would have sent a ``disconnect``);
* replay otherwise (an unproven start, every segment after a ``disconnect``): from the segment's first
  line plus :data:`REPLAY_START_MARGIN_US` (the skew bound). The history recorder is one connection
  per exchange: it is up from the arrival of that line until its next ``disconnect``, and an event
  stamped that much later cannot have arrived before it. A proven start is the same rule met by a line
  in the look-behind;
* live (every connection): from the stream's own first row plus :data:`START_MARGIN_US` (each channel
  subscribes on its own; for a trade bar its first trade, ``openTimestamp``);
* a *follower* (``liquidation``, see :attr:`gapless.datatypes.DataType.claims_follow`) is claimed exactly where
  its leader of the same symbol (``trade``: the channel tardis derives it from) is claimed in the same run, and
  never from its own messages: they are rare, so their silence proves nothing. The run asks for the leader
  too; where the leader is not a stream of its own, its rows are evidence only (observed, not stored).

A sampled claim then starts at the next interval boundary: the interval in progress may be partial.

Where a claim ENDS:

* raw types (trade, quote, derivative_ticker): at the progress point minus :data:`LATENCY_MARGIN_US`;
* book-sampled types (``quote_1m``, ``book_snapshot_5_1s``...): at the *evidence*: a sample is sent
  only when the next book event arrives, so only intervals before a seen event are complete. A sample
  stamped S and sent at local time L shows an event at exchange time >= max(S, L - margin) and none
  between S and it; a raw row shows an event at its timestamp;
* trade bars: every trade makes its interval's bar due at the next trade, so after the last trade
  seen only its own interval is unknown ("pending"); later intervals up to the progress point are
  provably empty. The claim skips the pending interval (two claims, ``<segment>`` and ``<segment>:q``).

The local clock (a live run's: tardis-machine's host) may step (NTP) by more than the skew bound. A step back
shows as a localTimestamp going back and ends the segment (``clock_step``, see :mod:`gapless.ingest`); the
next segment may run on a clock far behind the exchange's, and the last one may run far ahead of it. So no
live claim rests on local time alone, and every rule above takes the more careful of local and exchange time:

* an END is bounded by the newest exchange timestamp seen (everything stamped more than
  :data:`LATENCY_MARGIN_US` before it has arrived), besides the local progress point: an arrival never
  proves an exchange time later than the exchange has shown (a clock ahead would claim the future);
* a START is at least the stream's first exchange timestamp, less the skew bound, plus the margin;
* the exchange time of an event known only by its arrival (a sample's trigger) is bounded from below by
  the newest exchange time seen by then, and from above by the arrival plus the skew bound only while no
  row shows the local clock behind the exchange's beyond that bound (and after a step back); otherwise
  only a raw row's own gap between its arrival and its timestamp bounds it, or nothing does.

A stream that sent nothing in a whole run is not claimed (an unknown symbol and a silent market look
the same), unless it is *known*: its own replay coverage reaches the anchored start (it exists, and it
was quiet). What a complete run did not claim is reported (:meth:`ClaimTracker.unclaimed`) for the
replay ledger, with why: ``history_outage``, ``unproven_start``, ``quiet_tail`` or ``no_data``.
"""
import dataclasses

import numpy as np

from .runs import Claim
from .timeutil import MINUTE_US, US, ceil_to, floor_to

LATENCY_MARGIN_US = 5 * US
SKEW_BOUND_US = 2 * US
START_MARGIN_US = 10 * US  # live: a channel's first message to its claim (not loosened: see REPLAY_START_MARGIN_US)
# A replay segment's first line arrived at local time L: the history recorder (one connection per exchange)
# was up then and stays up until its next disconnect, which the replay would show. An event stamped E
# (exchange time) arrives at local E + skew + latency >= E - SKEW_BOUND_US, latency being never negative; so
# every event stamped from L + SKEW_BOUND_US on arrived after L and is in history, the reconnect snapshot
# included. Latency only delays arrivals (an event stamped before the reconnect may arrive after it: kept,
# never claimed), so it adds nothing here; it bounds the END of a claim (LATENCY_MARGIN_US), not its start.
# Nothing earlier is provable: the reconnect itself is unknown, and events stamped between the drop and
# L + SKEW_BOUND_US may have reached the recorder while it was down (the double loses everything stamped
# before its reconnect snapshot, which comes at least 0.1 s after the recorder is back).
REPLAY_START_MARGIN_US = SKEW_BOUND_US
# a replay asks this much before the wanted start: a disconnect there is seen, and a line there proves the
# history recorder up (a one-minute bar, the first line of a bars-only request, comes a minute after ``from``)
LOOK_BEHIND_US = 2 * MINUTE_US
DAY_SNAPSHOT_SLACK_US = SKEW_BOUND_US + US  # the day snapshot, stamped in exchange time just after local 00:00
_BOOK, _TRADE = "book", "trade"
_NEVER = 2 ** 62


class ClaimTracker:
    """Per-stream claim bookkeeping of one run (used by :class:`gapless.ingest.RunParser`)."""

    def __init__(self, request, types, source, live, run_id, owner=None):
        self.request = request
        self.types = types  # {name: DataType}
        self.source = source
        self.live = live
        self.run_id = run_id
        self.owner = owner
        self.expected = set(request.streams)
        # types asked only as the evidence of another's claims (``trade`` for ``liquidation``): never claimed
        self.evidence_only = set(types) - set(request.data_types)
        # a stream known from history before an anchored start exists: quiet in this run means quiet
        self.seen = set(tuple(k) for k in request.known) & self.expected if request.anchored and not live else set()
        self._known = set(self.seen)
        self.segment_no = 0
        self.first_arrival = None  # first data line of the current segment (local time)
        self.proven = bool(request.anchored) and not live
        self.starts = {}
        self.disconnects = []  # local times of the disconnects of this run
        self.history = {}  # {(symbol, name): [(start, end)]} claims of closed segments (for the report)
        self._evidence = {}
        # {(kind, symbol): (latest evidence, first arrival, trade trigger)} of a packet that may be cut
        self._provisional = {}
        self._trigger = {}  # {symbol: (exact time or None, arrival, not before)} of the last trade
        self._own = {}  # {(symbol, sampled data type): evidence from the stream's own samples}
        self._own_trigger = {}  # {(symbol, bar data type): the last bar's trigger, as for _trigger}
        self.exchange_seen = 0  # the newest exchange timestamp of the rows observed (the exchange's clock)
        self._exchange_base = 0  # exchange_seen before the rows of the batch being observed
        self._first_exchange = None  # exchange timestamp of the segment's first data line
        # the local clock vs the exchange's: a row stamped more than the skew bound after its arrival shows the
        # local clock behind (then an arrival no longer bounds an event's time from above); every raw row bounds
        # how far behind: its event came at most the latency margin before it arrived
        self._behind = False
        self._behind_bound = None
        self._open_claims = {}  # live: {(segment, symbol, data type): the last claim written open}

    # -- observing rows --------------------------------------------------------------------------
    def segment_line(self, arrival, exchange=None):
        """A data line arrived (local time; ``exchange``: its timestamp): the first one opens the segment's evidence."""
        if self.first_arrival is None:
            self.first_arrival = arrival
            self._first_exchange = exchange
            if not self.live and self.segment_no == 0 and \
                    arrival + REPLAY_START_MARGIN_US <= self.request.claim_from:
                self.proven = True  # the history recorder was up in the look-behind: it proves the wanted start

    def observe(self, table, block, streams, ts, arrivals, bound):
        """Rows of one table arrived (after dropping unexpected streams): starts, evidence, triggers."""
        self.seen |= streams
        names = block.distinct(3)
        if len(names) == 1:
            sampled = np.full(len(block), self.types[next(iter(names))].interval > 0)
        else:
            sampled = np.fromiter((self.types[n].interval > 0 for n in block.column(3)), dtype=bool,
                                  count=len(block))
        self._watch_clock(ts, arrivals, sampled)
        # the exchange's clock read at least this when each row arrived (rows of this block up to it, and of
        # earlier batches: all arrived before it)
        shown = np.maximum(np.maximum.accumulate(ts), self._exchange_base)
        self.exchange_seen = max(self.exchange_seen, int(shown[-1]))
        new = [s for s in streams if s not in self.starts]
        if new:
            self._set_starts(block, new, ts, arrivals)
        # book evidence: book changes and book samples only (a book_ticker comes from the ticker channel: it says
        # nothing about when the book's samples are due; harness seeds 80101 and 81091)
        kind = _TRADE if table in ("trade", "trade_bar") else (
            _BOOK if table.startswith("book_snapshot") or table == "book_change" else None)
        if kind is None:
            return
        # an arrival proves an exchange time no later than the exchange has shown (live: the clock may be ahead;
        # a clock seen behind proves less than the exchange's own stamps)
        proven = (shown if self._behind else np.minimum(arrivals, shown)) if self.live else arrivals
        # a sample sent at L shows an event at exchange time >= L - margin, and none since its own stamp
        evidence = np.where(sampled, np.maximum(ts, proven - LATENCY_MARGIN_US), ts)
        symbols = block.distinct(1)
        symbol_column = None if len(symbols) == 1 else np.asarray(list(block.column(1)), dtype=object)
        if sampled.any():
            self._own_evidence(kind, block, names, symbol_column, symbols, sampled, evidence, ts, arrivals, proven)
        confirmed = arrivals < bound
        for symbol in symbols:
            mask = np.ones(len(block), dtype=bool) if symbol_column is None else symbol_column == symbol
            for ok, held in ((confirmed, False), (~confirmed, True)):
                rows = np.flatnonzero(mask & ok)
                if not len(rows):
                    continue
                value = int(evidence[rows].max())
                last = int(rows[-1])
                # the last trade: exactly (a raw trade), or as the bar it triggered: at or after the bar's own stamp
                # (the first trade after an interval sends its bar) and near the bar's arrival
                trigger = (None if sampled[last] else int(ts[last]), int(arrivals[last]), int(ts[last]),
                           int(proven[last])) if kind == _TRADE else None
                if not held:
                    self._raise(kind, symbol, value, trigger)
                    continue
                # the last packet may have been cut between an event and its sample: held back until a later
                # packet begins (a cut run never claims an interval whose sample it lost)
                old = self._provisional.get((kind, symbol))
                first = int(arrivals[rows[0]])
                if old is not None:
                    value, first, trigger = max(old[0], value), min(old[1], first), trigger or old[2]
                self._provisional[(kind, symbol)] = (value, first, trigger)

    def _own_evidence(self, kind, block, names, symbol_column, symbols, sampled, evidence, ts, arrivals, proven):
        """A stream's own samples prove its own intervals at once, packet complete or not: its sample is there.

        (Other streams' samples of the same packet may still be on their way: for them, only a later packet
        confirms the evidence; see :meth:`observe`.)
        """
        name_column = None if len(names) == 1 else np.asarray(list(block.column(3)), dtype=object)
        for name in names:
            if not self.types[name].interval:
                continue
            for symbol in symbols:
                mask = sampled.copy()
                if name_column is not None:
                    mask &= name_column == name
                if symbol_column is not None:
                    mask &= symbol_column == symbol
                rows = np.flatnonzero(mask)
                if not len(rows):
                    continue
                key = (symbol, name)
                self._own[key] = max(self._own.get(key, 0), int(evidence[rows].max()))
                if kind == _TRADE:
                    last = int(rows[-1])
                    self._own_trigger[key] = (None, int(arrivals[last]), int(ts[last]), int(proven[last]))

    def _watch_clock(self, ts, arrivals, sampled):
        """What rows tell about the local clock vs the exchange's (see ``_behind``)."""
        if not self.live and not self._behind:
            return  # replay: history's clock is trusted until it is seen stepping back
        ahead = ts - arrivals  # how far the exchange's stamp is after the arrival
        if int(ahead.max()) > SKEW_BOUND_US:
            self._behind = True  # a stamp is never later than its arrival, skew aside: the local clock is behind
        raw = ~sampled
        if raw.any():
            bound = int(ahead[raw].min()) + LATENCY_MARGIN_US  # the local clock is at most this behind
            self._behind_bound = bound if self._behind_bound is None else min(self._behind_bound, bound)

    def _upper(self, arrival):
        """Latest exchange time an event that arrived at ``arrival`` (local) can have, or None if unknown."""
        if not self._behind:
            return arrival + SKEW_BOUND_US
        return None if self._behind_bound is None else arrival + self._behind_bound

    def _set_starts(self, block, new, ts, arrivals):
        firsts = block.first_rows(new)
        request = self.request
        for stream, i in firsts.items():
            data_type = self.types[stream[1]]
            if data_type.family == "book_snapshot":
                first = int(ts[i])
                if not self.live and self.segment_no == 0 and first < request.claim_from + DAY_SNAPSHOT_SLACK_US:
                    first = request.claim_from  # the day's initial snapshot: nothing of the day comes before it
                self.starts[stream] = first
            elif self.live:
                # each live channel is confirmed by its own first message (a bar: by its first trade)
                # (its exchange time, less the skew: the local clock may be behind)
                evidence = int(block.array(7)[i]) if data_type.family == "trade_bar" else \
                    max(int(arrivals[i]), int(ts[i]) - SKEW_BOUND_US)
                self.starts[stream] = self._after(evidence, data_type)
            else:
                self.starts[stream] = self._replay_start(data_type)

    def _replay_start(self, data_type):
        if self.proven and self.segment_no == 0:
            return self.request.claim_from
        # the history recorder is one connection per exchange: it is up since the segment's first line (by the
        # exchange's clock too: after a step back its own clock may be behind)
        if self.first_arrival is None:
            return None
        first = self.first_arrival if self._first_exchange is None else \
            max(self.first_arrival, self._first_exchange - SKEW_BOUND_US)
        return self._after(first, data_type, REPLAY_START_MARGIN_US)

    @staticmethod
    def _after(evidence, data_type, margin=START_MARGIN_US):
        start = evidence + margin
        return ceil_to(start, data_type.interval_ms * 1000) if data_type.interval else start

    def confirm(self, bound):
        """Provisional evidence whose packet has been followed by a later one counts now (a batch begins)."""
        self._exchange_base = self.exchange_seen
        for key, (value, arrival, trigger) in list(self._provisional.items()):
            if arrival < bound:
                del self._provisional[key]
                self._raise(key[0], key[1], value, trigger)

    def _raise(self, kind, symbol, value, trigger=None):
        if value > self._evidence.get((kind, symbol), 0):
            self._evidence[(kind, symbol)] = value
        old = self._trigger.get(symbol)
        # the latest trade wins; at the same arrival a raw trade (its exact time) beats the bar it triggered
        if trigger is not None and (old is None or trigger[1] > old[1] or (trigger[1] == old[1] and trigger[0])):
            self._trigger[symbol] = trigger

    # -- claims --------------------------------------------------------------------------------
    def claims(self, progress, end_reason=None, is_open=False, sealed=None):
        """The claims of the current segment with everything up to ``progress`` (local time) delivered."""
        request = self.request
        if self.live:
            # the local clock may run ahead of the exchange's: never past what the exchange has shown (and a clock
            # seen behind it proves less than the exchange's own stamps: everything stamped more than the latency
            # margin before the newest stamp has arrived)
            progress = self.exchange_seen if self._behind else min(progress, self.exchange_seen)
        raw_end = min(request.claim_end, progress - LATENCY_MARGIN_US)
        claims = []
        for symbol, name in sorted(self.claimable()):
            # a follower (``liquidation``) is claimed exactly where its leader (``trade``) of the symbol is
            basis = self.types[name].claims_follow or name
            start = self._start(symbol, basis)
            if start is None:
                continue
            for suffix, a, b in self._spans(symbol, self.types[basis], start, raw_end):
                if b <= a:
                    continue
                claims.append(Claim(request.exchange, symbol, name, self.source,
                                    "%s:%d%s" % (self.run_id, self.segment_no, suffix), a, b,
                                    end_reason=end_reason, is_open=is_open, owner=self.owner,
                                    limit_end=request.claim_end, sealed_until=sealed))
        if self.live:
            self._close_the_rest(claims, end_reason, is_open, sealed)
        return claims

    def _close_the_rest(self, claims, end_reason, is_open, sealed):
        """A live claim written open stays open until written closed: when the segment closes, every piece it
        ever wrote open is closed, also one with nothing to add now (a trade bar stream's quiet piece after a
        trade in a later interval: empty at the close, and left open for good by a clean stop otherwise)."""
        if is_open:
            for c in claims:
                self._open_claims[(c.segment, c.symbol, c.data_type)] = c
            return
        written = {(c.segment, c.symbol, c.data_type) for c in claims}
        for key, c in self._open_claims.items():
            if key not in written:
                claims.append(dataclasses.replace(c, is_open=False, end_reason=end_reason, sealed_until=sealed))
        self._open_claims = {}

    def claimable(self):
        """The expected streams this run can claim: each one that sent data or is known, and each follower whose
        leader sent data (never a follower from its own messages alone, nor an evidence-only stream)."""
        streams = set()
        for symbol, name in self.seen:
            if name in self.evidence_only:
                continue
            if self.types[name].claims_follow is None or (symbol, name) in self._known:
                streams.add((symbol, name))
        for symbol, name in self.expected:
            leader = self.types[name].claims_follow
            if leader is not None and (symbol, leader) in self.seen:
                streams.add((symbol, name))
        return streams

    def _start(self, symbol, name):
        """The stream's claim start in this segment, or None while unknown."""
        start = self.starts.get((symbol, name))
        if start is not None:
            return start
        data_type = self.types[name]
        if self.live or data_type.family == "book_snapshot":
            return None  # a live channel needs its own first message; a book needs its snapshot
        # a replay stream seen earlier in the run and quiet so far in this segment
        return self._replay_start(data_type)

    def _spans(self, symbol, data_type, start, raw_end):
        if not data_type.interval:
            return [("", start, raw_end)]
        interval = data_type.interval_ms * 1000
        if data_type.evidence == _TRADE:
            trigger = self._trigger.get(symbol)
            own = self._own_trigger.get((symbol, data_type.name))
            if own is not None and (trigger is None or own[1] > trigger[1]):
                trigger = own
            if trigger is None:
                return [("", start, raw_end)]  # no trade since the segment began: nothing is pending
            exact, arrival, not_before, proven = trigger
            if exact is not None:
                pending = (floor_to(exact, interval), floor_to(exact, interval) + interval)
            else:
                latest = self._upper(arrival)
                pending = (floor_to(max(not_before, proven - LATENCY_MARGIN_US), interval),
                           _NEVER if latest is None else ceil_to(max(latest, not_before) + 1, interval))
            # before the pending interval every bar came already (the trigger's own bar came after them); after
            # it, trades would have sent the pending bar: empty up to what the progress point proves
            return [("", start, min(pending[0], self.request.claim_end)), (":q", max(start, pending[1]), raw_end)]
        evidence = max(self._evidence.get((_BOOK, symbol), 0), self._own.get((symbol, data_type.name), 0))
        return [("", start, min(self.request.claim_end, evidence))]

    # -- segments ------------------------------------------------------------------------------
    def disconnect(self, at, final_claims):
        """A ``disconnect`` at local time ``at``: remember the segment's claims, start the next one."""
        self.disconnects.append(at)
        self._next_segment(final_claims)

    def clock_step(self, final_claims):
        """The local clock stepped back: remember the segment's claims, start the next one on the new clock.

        The new clock may be behind the exchange's by up to the step: until raw rows bound by how much, an arrival
        no longer bounds an event's time from above.
        """
        self._next_segment(final_claims)
        self._behind = True
        self._behind_bound = None

    def _next_segment(self, final_claims):
        self._remember(final_claims)
        self.segment_no += 1
        self._first_exchange = None
        self.first_arrival = None
        self.starts = {}
        self._evidence = {}
        self._provisional = {}
        self._trigger = {}
        self._own = {}
        self._own_trigger = {}

    def _remember(self, claims):
        for c in claims:
            self.history.setdefault((c.symbol, c.data_type), []).append((c.start, c.end))

    def unclaimed(self, final_claims):
        """What a complete run asked for and did not claim: ``[(symbol, data_type, start, end, reason)]``."""
        self._remember(final_claims)
        request = self.request
        report = []
        claimable = self.claimable()
        for stream in sorted(self.expected):
            if stream not in claimable:
                report.append(stream + (request.claim_from, request.claim_end, "no_data"))
                continue
            claimed = sorted(self.history.get(stream, []))
            cursor, last_end = request.claim_from, request.start
            for a, b in claimed + [(request.claim_end, request.claim_end)]:
                if a > cursor:
                    report.append(stream + (cursor, a, self._reason(stream, cursor, a, last_end)))
                cursor = max(cursor, b)
                last_end = max(last_end, b)
        return report

    def _reason(self, stream, a, b, last_end):
        """Why ``[a, b)`` was not claimed; ``last_end``: where the stream's claims (or the run) stood before it."""
        if any(min(a, last_end) - START_MARGIN_US <= d < b for d in self.disconnects):
            return "history_outage"  # a disconnect between the last claim and the hole's end: tardis' own hole
        if a == self.request.claim_from:
            if self.types[stream[1]].family == "book_snapshot" and a % (1440 * MINUTE_US) == 0:
                # a day's replay always begins with its initial book snapshot, unless the history recorder
                # was down at midnight: the book is unknown until it reconnected
                return "history_outage"
            if not self.proven:
                return "unproven_start"
        return "quiet_tail"
