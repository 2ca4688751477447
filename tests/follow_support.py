"""A follower's copy of the published series, checked as it grows, and the published series to compare it with."""
import math
import threading

from gapless.aggregate import value_columns
from gapless.follower import CaughtUp, Follower
from gapless.published import deeper_levels


def _same(a, b):
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


class FollowerCopy:
    """Consumes a follower's events (in a thread, or fed by hand) and checks what a consumer may rely on:

    * the backlog is in minute order (every stream of a minute before the next minute);
    * one caught_up marker, whose seq is at least every backlog event's seq;
    * after it, seq strictly increases;
    * a minute seen again comes with a higher revision (never repeated without one).
    """

    def __init__(self):
        self.copy = {}  # {(exchange, symbol, data_type, minute µs): (seq, revision, source, values)}
        self.events = []
        self.caught_up = None
        self.problems = []
        self.last_seq = None
        self._last_backlog_minute = None
        self._resumed = False
        self.thread = None
        self.error = None
        self.changed = threading.Event()

    def take(self, event):
        """Check and apply one event (or the marker)."""
        if isinstance(event, CaughtUp):
            if self.caught_up is not None and not self._resumed:
                self.problems.append("a second caught_up marker (%d)" % event.seq)
            if event.seq < (self.last_seq or 0):
                self.problems.append("caught_up at %d after seq %d" % (event.seq, self.last_seq))
            self._resumed = False
            backlog = [e.seq for e in self.events]
            if backlog and max(backlog) > event.seq and self.last_seq is None:
                self.problems.append("backlog seq %d after the marker's %d" % (max(backlog), event.seq))
            self.caught_up = event.seq
            self.last_seq = event.seq
            self.changed.set()
            return
        minute = int(event.minute.value // 1000)
        key = (event.exchange, event.symbol, event.data_type, minute)
        if self.caught_up is None and self.last_seq is None:
            if self._last_backlog_minute is not None and minute < self._last_backlog_minute:
                self.problems.append("backlog out of minute order at %s" % (key,))
            self._last_backlog_minute = minute
        elif event.seq <= self.last_seq:
            self.problems.append("seq %d after %d" % (event.seq, self.last_seq))
        if self.caught_up is not None or self.last_seq is not None:
            self.last_seq = event.seq
        before = self.copy.get(key)
        if before is not None and event.revision <= before[1]:
            self.problems.append("%s again with revision %d after %d" % (key, event.revision, before[1]))
        self.copy[key] = (event.seq, event.revision, event.source, dict(event.values))
        self.events.append(event)
        self.changed.set()

    def resume_from(self, seq):
        """This copy continues after ``seq`` (a resumed follower: it sends its own caught_up marker)."""
        self.last_seq = seq
        self._resumed = True

    def run(self, follower):
        """Consume ``follower`` in a daemon thread."""
        def loop():
            try:
                for event in follower:
                    self.take(event)
            except Exception as exc:  # the test reads it
                self.error = exc
        self.thread = threading.Thread(target=loop, name="follower-copy", daemon=True)
        self.thread.start()
        return self

    def differences(self, published, keys=None):
        """What differs between this copy and ``published`` (see :func:`published_copy`): a list of texts."""
        out = []
        wanted = set(published) if keys is None else {k for k in published if k[:3] in keys}
        for key in sorted(wanted | set(self.copy)):
            if key not in published:
                continue  # left the window (not a change) or never published in the compared range
            mine, theirs = self.copy.get(key), published[key]
            if mine is None:
                out.append("%s: not delivered (published seq %d)" % (key, theirs[0]))
            elif mine[1] != theirs[1] or mine[2] != theirs[2] or any(
                    not _same(mine[3].get(c), v) for c, v in theirs[3].items()):
                out.append("%s: copy %r, published %r" % (key, mine, theirs))
        return out


def published_copy(storage, since=None):
    """``{(exchange, symbol, data_type, minute): (seq, revision, source, values)}`` as minute_series holds it."""
    model = storage.models["minute_series"]
    query = model.select()
    if since is not None:
        query = query.where(model.minute >= since)
    result = {}
    for row in query.dicts():
        row.update(deeper_levels(row.pop("levels"), row["data_type"]))
        values = {c: (None if row[c] is None or (isinstance(row[c], float) and math.isnan(row[c])) else row[c])
                  for c in value_columns(row["data_type"]) if c in row}
        result[(row["exchange"], row["symbol"], row["data_type"], row["minute"])] = (
            row["seq"], row["revision"], row["source"], values)
    return result


def follower(storage, streams, **kwargs):
    """A :class:`Follower` with a quick poll for tests."""
    kwargs.setdefault("poll", 0.05)
    return Follower(storage, streams, **kwargs)


class HarnessFollower:
    """A follower beside the service of one truth-harness example (every published stream of its database).

    It is stopped at random points (its seed's choice) and resumed from the last seq it saw. :meth:`check`
    waits until it has consumed everything published so far and returns what is wrong: its own ordering
    problems, differences between its copy and the published series, and published minutes that differ from
    the series the service computes (which the harness checks against the market's truth).
    """

    def __init__(self, database_url, since, seed, kill_rate=0.02):
        import random
        from gapless.storage import Storage
        self.store = Storage(database_url, create=False)
        self.copy = FollowerCopy()
        self.stop = threading.Event()
        self.rng = random.Random(seed)
        self.kill_rate = kill_rate
        self.kills = 0
        self.error = None
        self._since = since
        self._reader_store = Storage(database_url, create=False)
        self._thread = threading.Thread(target=self._loop, name="harness-follower", daemon=True)
        self._thread.start()

    def _loop(self):
        position = None
        try:
            while not self.stop.is_set():
                if position is not None:
                    self.copy.resume_from(position)
                reader = Follower(self._reader_store, None, since=self._since if position is None else None,
                                  resume=position, stop=self.stop, poll=0.01)
                for event in reader:
                    self.copy.take(event)
                    if self.copy.caught_up is None:
                        continue
                    position = self.copy.last_seq
                    if self.rng.random() < self.kill_rate:
                        self.kills += 1
                        break
                reader.close()
        except Exception as exc:  # reported by check()
            self.error = exc

    def check(self, frames, exchange, timeout=30.0):
        """Problems (texts) at this moment; ``frames``: the service's series ``{(symbol, data_type): frame}``."""
        import time
        from gapless.sequence import read_published_seq
        newest = read_published_seq(self.store)
        # a stuck follower fails after ``timeout`` seconds without progress; a slow one (a loaded machine: seed 80053
        # of a batch at nice 15 had 3,352 events to catch up on) is waited for as long as it moves
        deadline, seen = time.monotonic() + timeout, self.copy.last_seq
        while (self.copy.last_seq or 0) < newest and self.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
            if self.copy.last_seq != seen:
                deadline, seen = time.monotonic() + timeout, self.copy.last_seq
        problems = ["follower error: %r" % (self.error,)] if self.error else []
        if (self.copy.last_seq or 0) < newest:
            problems.append("follower at seq %s, published %d" % (self.copy.last_seq, newest))
        published = published_copy(self.store)
        problems += self.copy.problems
        problems += self.copy.differences(published)
        for (symbol, data_type), frame in frames.items():
            columns = list(frame.columns)
            minutes = frame.index.as_unit("us").asi8.tolist()
            for minute, row in zip(minutes, frame.itertuples(index=False, name=None)):
                mine = published.get((exchange, symbol, data_type, minute))
                if mine is None:
                    continue  # published passes may end before the window's newest minute
                series = dict(zip(columns, row))
                if mine[2] != series["source"] or any(not _same(v, _none(series.get(c))) for c, v in mine[3].items()):
                    problems.append("%s: published %r, series %s %r" % (
                        (exchange, symbol, data_type, minute), mine, series["source"],
                        {c: _none(series.get(c)) for c in mine[3]}))
        return problems

    def close(self):
        self.stop.set()
        self._thread.join(10)
        self.store.close()
        self._reader_store.close()


def _none(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
