"""Storage keys of trades that carry no exchange ``id`` (e.g. kraken's normalized trades).

The key of a trade row is ``(exchange, symbol, source, timestamp, trade_id)``. Without an exchange id,
``trade_id`` is made from what the exchange printed, never from how it was received::

    ~<price>:<amount>:<side>:<n>

where ``n`` numbers identical trades (same exchange timestamp, price, amount and side) of the stream in
arrival order. Two recorders of one stream, or two overlapping replay requests, therefore give the same
trade the same key and it is stored once. The arrival order among the trades of one exchange timestamp
(which decides a minute's open and close) is kept in the row's ``seq`` column, outside the key.

Both numbers are only right when the run saw every packet of that exchange timestamp. A run can miss the
first packets of a timestamp only near its start (a live connection opened, or a replay ``from``, between
two packets of it), because packets of one timestamp arrive within the clock-skew bound of it. So trades
stamped before the run's start plus that bound are not stored by that run (:func:`vouched`): they lie
before the run's claims anyway (claims start at least 10 s after the first line, see
:mod:`gapless.claims`), and a run that covers them saw them whole and stores them itself.

Databases written before schema 3 keyed these trades ``~<localTimestamp>:<n>`` (by the receiving
connection); :func:`rewrite_fallback_keys` moves those rows to the new keys, keeping every row.
"""
import numpy as np

PREFIX = "~"
# the exchange timestamps a run still counts: a trade this much older than the newest one seen would start
# its numbering again (lines more than 5 s out of arrival order are refused before they get here)
HORIZON_US = 120_000_000


def trade_key(price, amount, side, n):
    """``trade_id`` of the ``n``-th identical id-less trade (0-based) at its exchange timestamp."""
    return "%s%r:%r:%s:%d" % (PREFIX, float(price), float(amount), side, n)


class IdlessCounter:
    """Numbers the id-less trades of one run (a live connection or a replay request), across its batches.

    :meth:`number` gives ``(n, seq)``: ``n`` among identical trades (the key), ``seq`` among all trades of
    the stream at that exchange timestamp (the order). Identical trades split across two batches, or two
    packets, continue the same count.
    """

    def __init__(self):
        self._streams = {}

    def number(self, exchange, symbol, ts, price, amount, side):
        """``(n, seq)`` of the next trade of ``(exchange, symbol)`` stamped ``ts``."""
        stamps = self._streams.get((exchange, symbol))
        if stamps is None:
            stamps = self._streams[(exchange, symbol)] = {}
        entry = stamps.get(ts)
        if entry is None:
            entry = stamps[ts] = [0, {}]
            _forget_before(stamps, ts - HORIZON_US)
        seq = entry[0]
        entry[0] = seq + 1
        same = entry[1]
        content = (price, amount, side)
        n = same.get(content, 0)
        same[content] = n + 1
        return n, seq


def _forget_before(stamps, oldest):
    # exchange timestamps come in (nearly) increasing order, and dicts keep insertion order: the old ones
    # are at the front
    while stamps:
        first = next(iter(stamps))
        if first >= oldest:
            return
        del stamps[first]


def vouched(block, since_us):
    """Mask of the rows of a ``trade`` :class:`~gapless.rows.RowBlock` a run may store, or None for all.

    An id-less trade stamped before ``since_us`` (the run's first arrival plus the skew bound) may have
    had packets before the run began: its numbers could be wrong, so the run leaves it to one that saw
    it whole. Trades with exchange ids are always kept.
    """
    if since_us is None or not block:
        return None
    ts = block.array(5)
    early = ts < since_us
    if not early.any():
        return None
    idless = np.fromiter((i[:1] == PREFIX for i in block.column(7)), dtype=bool, count=len(block))
    keep = ~(early & idless)
    return None if keep.all() else keep


# -- the schema 3 migration -------------------------------------------------------------------------------
# an old fallback key: "~<localTimestamp>:<n>" (one colon; the new keys have three)
_OLD = "\"trade_id\" LIKE '~%%' AND \"trade_id\" NOT LIKE '%%:%%:%%'"


def rewrite_fallback_keys(db, is_sqlite, chunk=5000):
    """Move id-less trades keyed ``~<localTimestamp>:<n>`` (before schema 3) to :func:`trade_key` keys.

    Runs inside the schema upgrade's transaction. Per (exchange, symbol, source, timestamp), the old rows
    are taken in arrival order (localTimestamp, then the old ``n``: the order within a packet) and numbered
    again by content; ``seq`` is their position. Every row is kept: rows that two recorders stored twice
    under two old keys cannot be told from identical trades, and stay two rows. Returns the rows moved.
    """
    mark = "?" if is_sqlite else "%s"
    old = _OLD if not is_sqlite else _OLD.replace("%%", "%")
    columns = '"timestamp", "local_timestamp", "trade_id", "price", "amount", "side"'
    streams = db.execute_sql('SELECT DISTINCT "exchange", "symbol", "source" FROM "trade" WHERE ' + old).fetchall()
    moved = 0
    for stream in streams:
        where = '"exchange" = {0} AND "symbol" = {0} AND "source" = {0} AND {1}'.format(mark, old)
        after = -2 ** 63
        while True:
            # one stream's old rows in timestamp order (a range of its primary key), a chunk at a time
            rows = db.execute_sql('SELECT %s FROM "trade" WHERE %s AND "timestamp" > %s ORDER BY "timestamp" '
                                  'LIMIT %d' % (columns, where, mark, chunk), tuple(stream) + (after,)).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            if len(rows) == chunk:  # the last timestamp may go on past the chunk: take all of it
                rows = [r for r in rows if r[0] != last] + db.execute_sql(
                    'SELECT %s FROM "trade" WHERE %s AND "timestamp" = %s' % (columns, where, mark),
                    tuple(stream) + (last,)).fetchall()
            updates = []
            for ts, group in _by_timestamp(rows):
                updates.extend(new + tuple(stream) + (ts, old_id) for new, old_id in _renumber(group))
            db.cursor().executemany(
                'UPDATE "trade" SET "trade_id" = {0}, "seq" = {0} WHERE "exchange" = {0} AND "symbol" = {0} AND '
                '"source" = {0} AND "timestamp" = {0} AND "trade_id" = {0}'.format(mark), updates)
            moved += len(updates)
            after = last
    return moved


def _by_timestamp(rows):
    groups = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    return groups.items()


def _renumber(group):
    """``((trade_id, seq), old trade_id)`` for the old rows of one (stream, source, timestamp)."""
    group.sort(key=lambda r: (r[1], int(r[2].rsplit(":", 1)[1])))  # arrival, then the order in the packet
    same = {}
    for seq, (_, _, old_id, price, amount, side) in enumerate(group):
        content = (price, amount, side)
        n = same.get(content, 0)
        same[content] = n + 1
        yield (trade_key(price, amount, side, n), seq), old_id
