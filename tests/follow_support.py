"""A follower's copy of the published series, checked as it grows, and the published series to compare it with."""
import math
import threading

from gapless.aggregate import value_columns
from gapless.follower import CaughtUp, Follower


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
        values = {c: (None if row[c] is None or (isinstance(row[c], float) and math.isnan(row[c])) else row[c])
                  for c in value_columns(row["data_type"]) if c in row}
        result[(row["exchange"], row["symbol"], row["data_type"], row["minute"])] = (
            row["seq"], row["revision"], row["source"], values)
    return result


def follower(storage, streams, **kwargs):
    """A :class:`Follower` with a quick poll for tests."""
    kwargs.setdefault("poll", 0.05)
    return Follower(storage, streams, **kwargs)
