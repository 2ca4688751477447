"""Turn the lines of one run (a replay request or a live connection) into storage batches with claims.

A replay *run* is one HTTP request: ``[start, request_end)`` in local (arrival) time, where
``request_end = claim_end + 1 minute`` because the sample stamped at a range's end is only emitted when
the next event arrives; a live run is one websocket connection. The parser is pure (no I/O), so it runs
in a worker process or inline. What a run may claim (exchange time, never more than was delivered) is
decided by :class:`gapless.claims.ClaimTracker`, which this parser feeds.

A line whose localTimestamp is more than :data:`LATENCY_MARGIN_US` older than one already seen breaks
the order the claims rely on (smaller reorderings are stored and counted as out of order). tardis-machine
sends in arrival order, so such a line means the wall clock of the host that stamped it stepped back (an
NTP step): the segment ends there with end reason ``clock_step`` (claimed up to what arrived before the
line), the line is kept and opens the next segment, which starts afresh like one after a ``disconnect``,
on the new clock. Only a raw message (a trade, a quote, a ticker...) whose exchange timestamp is also
older than the margin before the newest one seen is a stale resend, not a clock step: it would land in
time already claimed complete, so it is counted as malformed and logged, never stored.
"""
import logging
import uuid
from operator import itemgetter

import numpy as np
import orjson

from .claims import LATENCY_MARGIN_US, SKEW_BOUND_US, ClaimTracker
from .convert import BatchConverter
from .datatypes import asked_types, parse_data_type
from .runs import Batch, ReplayRequest  # noqa: F401 (the run's types, imported from here by older code)
from .timeutil import MINUTE_US, iso, parse_timestamp_us
from .trade_keys import vouched
from .typed_lines import decode_lines, message_text

log = logging.getLogger(__name__)

_TS = itemgetter(5)
_LTS = itemgetter(6)
_STR = {str}
_AFTER_EVERYTHING = 2 ** 62


class _LineByLine(Exception):
    """This list of lines needs the careful line-by-line path."""


class RunParser:
    """Feeds the lines of one run (a replay request or a live connection) and produces :class:`Batch` es.

    Size-triggered batches are cut only between two different localTimestamps, so a group of messages
    that share an arrival time (one exchange packet) is never split between transactions. For live
    connections (``live=True``) the first segment opens at the first message, claims stay marked open
    until :meth:`close`, and :meth:`flush` cuts a batch on demand (the recorder commits by time).
    """

    def __init__(self, request, batch_rows=5000, source="replay", live=False):
        self.request = request
        self.batch_rows = batch_rows
        self.source = source
        self.live = live
        self.converter = BatchConverter(source)
        asked = asked_types(request.data_types)  # with the leaders of followers (``trade`` for ``liquidation``)
        self._types = {name: parse_data_type(name) for name in asked}
        self._expected = {(s, d) for s, name in request.streams for d in asked_types([name])}
        self._evidence_only = set(asked) - set(request.data_types)  # observed for claims, never stored
        self._skip = {(s, d): us for s, d, us in request.skip_before}
        self.claims = ClaimTracker(request, self._types, source, live, uuid.uuid4().hex[:16])
        self._pending = []
        self._last_lts_text = None
        self._arrival = request.start  # latest localTimestamp seen
        self._lines = self._malformed = self._errors = 0
        self._samples = []
        self.out_of_order = 0
        self._line_minutes = set()  # local minutes in which a line arrived (replay)
        self._silent_from = request.start - request.start % MINUTE_US  # silence is known before this minute

    # -- feeding -----------------------------------------------------------------------------
    def feed(self, lines):
        """Consume a list of lines; return the batches that became complete.

        The common case (only data messages) is handled for the whole list at once; a list with a
        control message, an unparseable line or an odd field goes line by line.
        """
        try:
            messages = decode_lines(lines)  # a bulk chunk of one of the bulk types: typed records
            if messages is not None:
                texts = [m.localTimestamp for m in messages]
            else:
                messages = [orjson.loads(line) for line in lines]
                kinds = [m["type"] for m in messages]
                texts = [m["localTimestamp"] for m in messages]
                if "disconnect" in kinds or "error" in kinds or set(map(type, texts)) != _STR:
                    raise _LineByLine()
            # arrival order, checked on the ISO texts (one format per server, so text order is time
            # order); any doubt, e.g. a different precision, goes the exact line-by-line way
            if (self._last_lts_text is not None and texts and texts[0] < self._last_lts_text) or \
                    any(map(str.__gt__, texts[:-1], texts[1:])):
                raise _LineByLine()
            if messages and self.claims.first_arrival is None:
                self.claims.segment_line(parse_timestamp_us(texts[0]), _exchange_time(messages[0]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, _LineByLine):
            return self._feed_line_by_line(lines)
        n = len(messages)
        if not n:
            return []
        self._lines += n
        batches = []
        start = 0
        while len(self._pending) + n - start >= self.batch_rows:
            # cut at the first arrival-time change after the batch is full, never inside a packet
            cut = start + max(0, self.batch_rows - len(self._pending))
            previous = texts[cut - 1] if cut > start else self._last_lts_text
            while cut < n and texts[cut] == previous:
                previous = texts[cut]
                cut += 1
            if cut >= n:
                break
            self._pending.extend(messages[start:cut])
            try:
                progress = parse_timestamp_us(texts[cut])
                self._line_minutes.add(progress - progress % MINUTE_US)
            except ValueError:
                progress = None  # a malformed message follows: fall back to what arrived
            batches.append(self._flush(progress_us=progress))
            start = cut
        self._pending.extend(messages[start:] if start else messages)
        self._last_lts_text = texts[-1]
        try:
            self._arrival = max(self._arrival, parse_timestamp_us(texts[-1]))
        except ValueError:
            pass  # the converter reports the line when the batch is flushed
        return batches

    def _feed_line_by_line(self, lines):
        batches = []
        pending = self._pending
        for line in lines:
            if not line:
                continue
            self._lines += 1
            try:
                message = orjson.loads(line)
                kind = message["type"]
                lts_text = message["localTimestamp"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self._bad(line, "not a tardis message")
                continue
            if lts_text != self._last_lts_text:
                try:
                    lts = parse_timestamp_us(lts_text)
                except (ValueError, TypeError):
                    self._bad(line, "bad localTimestamp")
                    continue
                if lts < self._arrival - LATENCY_MARGIN_US:
                    if self._stale(message):
                        # both clocks say it is old: a resend into time coverage may already claim complete,
                        # a server fault, not data (counted, logged)
                        self._bad(line, "arrived out of localTimestamp order (%s after %s)"
                                  % (lts_text, iso(self._arrival)))
                        continue
                    # tardis-machine sends in arrival order: the stamping host's clock stepped back
                    batches.append(self._clock_step(lts, lts_text))
                    pending = self._pending
                if len(pending) >= self.batch_rows and lts > self._arrival:
                    # a new arrival time: the batch may end here without splitting a packet
                    self._line_minutes.add(lts - lts % MINUTE_US)
                    batches.append(self._flush(progress_us=lts))
                    pending = self._pending
                self._last_lts_text = lts_text
                self._arrival = max(self._arrival, lts)
            if not self.live:  # any line shows its minute's slice non-empty (see gapless.silence)
                self._line_minutes.add(self._arrival - self._arrival % MINUTE_US)
            if kind == "disconnect":
                batches.append(self._disconnect(message))
                pending = self._pending
                continue
            if kind == "error":
                self._errors += 1
                continue
            if self.claims.first_arrival is None:
                self.claims.segment_line(self._arrival, _exchange_time(message))
            pending.append(message)
        return batches

    def flush(self):
        """Cut a batch now with everything received so far (live: the periodic commit)."""
        return self._flush(progress_us=None)

    def close(self, reason):
        """Last batch of a live connection: claims end at the last message and are closed."""
        return self._flush(progress_us=None, end_reason=reason, closing=True)

    @property
    def last_arrival(self):
        """Latest localTimestamp seen (µs)."""
        return self._arrival

    @property
    def has_data(self):
        """True once any line with a valid localTimestamp arrived."""
        return self._last_lts_text is not None

    @property
    def segment_start(self):
        """Arrival of the current segment's first message (µs), or None before it."""
        return self.claims.first_arrival

    @property
    def run_id(self):
        """The run's id: coverage segments are ``<run_id>:<n>``."""
        return self.claims.run_id

    @run_id.setter
    def run_id(self, value):
        self.claims.run_id = value

    @property
    def owner(self):
        """``host:pid`` of the live recorder that writes this run's open segments (None for replay)."""
        return self.claims.owner

    @owner.setter
    def owner(self, value):
        self.claims.owner = value

    def finish(self, complete, refused=False):
        """The last batch of the run. ``complete`` is False when the stream was cut or errored.

        ``refused``: the server ended it with its error line, where history ends (it streams everything before
        the minute it cannot serve): complete up to the last line, and what was not claimed is reported like a
        complete run's (a silent symbol is then held back like after any complete run, not asked every pass).
        """
        if self.out_of_order:
            log.warning("%s: %d line(s) arrived out of localTimestamp order", self.request.describe(),
                        self.out_of_order)
        if refused and not complete:
            return self._finish(self._arrival if self.has_data else self.request.start, "refused")
        # after a cut, only messages strictly older than the last arrival time are known complete
        progress = self.request.request_end if complete else None
        proven = self.request.proven_until
        if complete and proven is not None and progress > proven:
            # past where history is proven available, an empty stretch may be minutes not served yet (tardis
            # can send those empty): only the lines themselves prove the run got that far
            progress = max(proven, self._arrival)
        if not complete:
            return self._flush(progress_us=None, end_reason="partial", sealed=self._arrival)
        return self._finish(progress, "complete")

    def _finish(self, progress, end_reason):
        """The last batch of a run known complete up to ``progress`` (local time), with what it did not claim."""
        batch = self._flush(progress_us=progress, end_reason=end_reason, evidence_bound=_AFTER_EVERYTHING,
                            sealed=progress)
        batch.unclaimed = self.claims.unclaimed(batch.claims)
        missing = sorted(self.claims.expected - self.claims.claimable())
        if missing:
            log.warning("%s: no data at all for %s in [%s, %s); not claiming coverage (unknown symbol, no data yet, "
                        "or a market quiet for the whole range)", self.request.exchange,
                        ", ".join("%s %s" % m for m in missing), iso(self.request.start), iso(self.request.claim_end))
        return batch

    # -- internals ---------------------------------------------------------------------------
    def _bad(self, line, reason):
        self._malformed += 1
        if len(self._samples) < 5:
            sample = line[:200] if isinstance(line, (bytes, str)) else repr(line)[:200]
            self._samples.append("%s: %r" % (reason, sample))

    def _flush(self, progress_us, end_reason=None, closing=False, evidence_bound=None, sealed=None):
        messages = self._pending
        self._pending = []
        rows, malformed = self.converter.convert_many(messages) if messages else ({}, [])
        for message, reason in malformed:
            self._bad(message_text(message), reason)
        # packets that arrived entirely before the bound are complete (see _gather_evidence)
        if evidence_bound is None:
            evidence_bound = self._arrival if progress_us is None else progress_us
        self.claims.confirm(evidence_bound)
        self._track(rows, evidence_bound)
        if progress_us is None:
            progress_us = self._arrival
        claims = self.claims.claims(progress_us, end_reason=end_reason,
                                    is_open=self.live and not closing and end_reason is None, sealed=sealed)
        batch = Batch(rows=rows, claims=claims, lines=self._lines, messages=len(messages) - len(malformed),
                      malformed=self._malformed, errors=self._errors, progress_us=progress_us,
                      samples=self._samples, silent=[] if self.live else self._silent_until(progress_us))
        self._lines = self._malformed = self._errors = 0
        self._samples = []
        return batch

    def _silent_until(self, progress):
        """The local minutes before ``progress`` without any line, not reported before."""
        silent = [m for m in range(self._silent_from, progress, MINUTE_US) if m not in self._line_minutes]
        self._silent_from = max(self._silent_from, progress - progress % MINUTE_US)
        if progress % MINUTE_US and silent and silent[-1] == self._silent_from:
            self._silent_from += MINUTE_US  # the run ends inside a minute it never saw a line of
        return silent

    def _track(self, rows, evidence_bound):
        """Record which streams delivered data and the source-event evidence; drop unwanted rows."""
        for table, block in list(rows.items()):
            if not block:
                continue
            symbols, names = block.distinct(1), block.distinct(3)
            if len(names) == 1:
                name = next(iter(names))
                streams = {(symbol, name) for symbol in symbols}
            else:
                streams = set(zip(block.column(1), block.column(3)))
            unexpected = streams - self._expected
            if unexpected:
                log.warning("%s: tardis-machine sent streams that were not asked for: %s (ignored)",
                            self.request.exchange, sorted(unexpected)[:5])
                keep = np.fromiter(((s, d) in self._expected for s, d in zip(block.column(1), block.column(3))),
                                   dtype=bool, count=len(block))
                block = block.select(keep)
                streams -= unexpected
                symbols = {s for s, _ in streams}
                if not block:
                    rows[table] = block
                    continue
            ts = block.array(5)
            arrivals = block.array(6)
            if not self.live:
                self._line_minutes.update(np.unique(arrivals - arrivals % MINUTE_US).tolist())
            self.claims.observe(table, block, streams, ts, arrivals, evidence_bound)
            self.out_of_order += int(np.count_nonzero(arrivals[1:] < arrivals[:-1]))
            latest_arrival = int(arrivals.max())
            if latest_arrival > self._arrival:
                self._arrival = latest_arrival
            if self._evidence_only and names & self._evidence_only:
                # the leader of a follower, asked only as its evidence: observed above, not stored
                keep = np.fromiter((d not in self._evidence_only for d in block.column(3)), dtype=bool,
                                   count=len(block))
                block = block.select(keep)
                streams = {k for k in streams if k[1] not in self._evidence_only}
                if not block:
                    rows[table] = block
                    continue
                ts = block.array(5)
            if table == "trade":
                keep = vouched(block, self._whole_since())
                if keep is not None:  # trades without ids this run may have seen only part of (gapless.trade_keys)
                    block = block.select(keep)
            if self._skip:
                # already stored (coverage says so): don't spend insert time on them again
                if len(streams) == 1:
                    keep = ts >= self._skip.get(next(iter(streams)), 0)
                else:
                    keep = ts >= np.fromiter((self._skip.get(k, 0) for k in zip(block.column(1), block.column(3))),
                                             dtype=np.int64, count=len(block))
                if not keep.all():
                    block = block.select(keep)
            rows[table] = block

    def _stale(self, message):
        """Whether a line that went back in local time is a stale resend rather than a clock step.

        A clock step moves local time only: the exchange's timestamps go on. A raw message (its timestamp is its
        event's time) stamped more than the latency margin before the newest exchange time seen is stale. A sample
        (a bar, an interval snapshot) is stamped at its interval's end, which may be long past: never stale here.
        """
        if message.get("type") == "trade_bar" or (message.get("type") == "book_snapshot"
                                                  and message.get("interval")):
            return False
        ts = _exchange_time(message)
        if ts is None:
            return False  # no exchange time to judge by: the converter reports the line if it is bad
        newest = self.claims.exchange_seen
        for pending in self._pending:
            if pending.get("type") != "disconnect":
                newest = max(newest, _exchange_time(pending) or 0)
        return ts < newest - LATENCY_MARGIN_US

    def _clock_step(self, lts, lts_text):
        """The stamping host's clock stepped back to ``lts``: end the segment, the next one starts on the new clock."""
        at = self._arrival
        # every line before this one arrived, the samples of its packet included (as before a disconnect)
        batch = self._flush(progress_us=at, end_reason="clock_step", evidence_bound=at + 1, sealed=at)
        batch.clock_steps = 1
        log.warning("%s: %s localTimestamp stepped back %.3f s (%s after %s): the clock of the host that stamped it "
                    "stepped; the segment ends here, the next one starts on the new clock", self.request.exchange,
                    self.source, (at - lts) / 1e6, lts_text, iso(at))
        self.claims.clock_step(batch.claims)
        self._arrival = lts
        return batch

    def _whole_since(self):
        """Exchange time from which this segment saw every packet of each timestamp: lines arrive from its
        start on (a replay's ``from``; a live connection's, or a segment's after a disconnect, first line),
        and a packet arrives within the skew bound of its timestamp."""
        claims = self.claims
        start = self.request.start if not self.live and claims.segment_no == 0 else claims.first_arrival
        return None if start is None else start + SKEW_BOUND_US

    def _disconnect(self, message):
        """Close the current segment at the disconnect; the next one starts at the next message."""
        try:
            at = parse_timestamp_us(message["localTimestamp"])
        except (KeyError, ValueError, TypeError):
            at = self._arrival
        # every line before the disconnect line arrived, the samples in its packet included
        batch = self._flush(progress_us=at, end_reason="disconnect", evidence_bound=at + 1, sealed=at)
        batch.disconnects = 1
        log.info("%s: %s disconnect at %s (%s exchange connection dropped)", self.request.exchange,
                 self.source, iso(at), "tardis-machine's" if self.live else "the history recorder's")
        self.claims.disconnect(at, batch.claims)
        return batch


def _exchange_time(message):
    """A message's exchange ``timestamp`` (µs), or None when it has none or it does not parse."""
    try:
        return parse_timestamp_us(message["timestamp"])
    except (KeyError, ValueError, TypeError):
        return None
