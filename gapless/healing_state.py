"""The healing planner's memory: per book-derived stream and UTC day, when history was last asked from 00:00,
how far that request reached, why, and how many times (the ``healing_state`` table; see :mod:`gapless.healing`).

Kept in the database, so every process that heals the same database follows one schedule: a service, a
restart of it, a new :class:`~gapless.service.Gapless` object and every ``get_data_without_gap`` call beside
it read what the others asked and when. Without a database (``HealingMemory()``) it lives in the process.
"""
import contextlib
from dataclasses import dataclass

from .timeutil import iso

# the reasons a from-00:00 request is planned (column ``reason``; see gapless.healing)
REASONS = ("cold", "day_over", "cached_empty", "gap_reached", "frontier", "upgrade", "disagreement")


@dataclass(frozen=True)
class Asked:
    """The last from-00:00 request planned for one (exchange, symbol, data type, day)."""

    asked_at: int  # µs, the planner's clock
    reason: str
    requests: int  # from-00:00 requests planned for that day so far
    asked_until: int  # µs: how far that request could claim (the history horizon then)


class HealingMemory:
    """``{(exchange, symbol, data_type, day): Asked}``, in ``storage`` (or in the process when None)."""

    def __init__(self, storage=None):
        self.storage = storage
        self._local = {}

    def deciding(self):
        """The transaction one decision runs in: read the day's row, decide, write it.

        SQLite: ``BEGIN IMMEDIATE`` serialises deciders, so a second process sees the first one's ask. PostgreSQL
        (READ COMMITTED, no row lock taken): two processes deciding at the same moment may both read the old row
        and both ask once; the next decision of either sees the newer row. That costs one request at worst and is
        accepted rather than locked against.
        """
        if self.storage is None:
            return contextlib.nullcontext()
        return self.storage.write_transaction()

    def get(self, key):
        """The :class:`Asked` of ``key`` (exchange, symbol, data type, day µs), or None if never asked."""
        if self.storage is None:
            return self._local.get(key)
        model = self.storage.models["healing_state"]
        row = model.get_or_none(_where(model, key))
        return Asked(row.asked_at, row.reason, row.requests, row.asked_until) if row is not None else None

    def asked(self, key, now_us, reason, until):
        """Remember that a from-00:00 request of ``key`` reaching ``until`` was planned at ``now_us`` for ``reason``."""
        previous = self.get(key)
        values = dict(asked_at=now_us, reason=reason, requests=(previous.requests if previous else 0) + 1,
                      asked_until=until)
        if self.storage is None:
            self._local[key] = Asked(**values)
            return
        model = self.storage.models["healing_state"]
        if previous is None:
            exchange, symbol, data_type, day = key
            model.insert(exchange=exchange, symbol=symbol, data_type=data_type, day=day, **values).execute()
        else:
            model.update(**values).where(_where(model, key)).execute()


def _where(model, key):
    exchange, symbol, data_type, day = key
    return ((model.exchange == exchange) & (model.symbol == symbol) & (model.data_type == data_type)
            & (model.day == day))


def latest_asked(storage, exchange, symbol, data_type):
    """For status: the newest day's row of a stream as a dict with ISO times, or None (also on a database made
    before this table existed: readers never create it)."""
    if not storage.has_table("healing_state"):
        return None
    model = storage.models["healing_state"]
    row = (model.select().where((model.exchange == exchange) & (model.symbol == symbol)
                                & (model.data_type == data_type)).order_by(model.day.desc()).first())
    if row is None:
        return None
    return {"day": iso(row.day)[:10], "last_asked": iso(row.asked_at), "reason": row.reason,
            "requests": row.requests}
