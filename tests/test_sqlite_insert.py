"""SQLite's multi-row insert of row blocks (gapless.sqlite_insert) stores exactly what ``executemany`` stores.

Randomized blocks of every bulk table's shape (columns the same in every row, NumPy arrays, lists with NULLs,
NaN, duplicates inside the block and rows already stored) go through ``Storage.write`` into one database and
through a plain ``executemany`` of the same row tuples into another; the stored rows, their storage classes and
the counts of inserted rows must be equal.
"""
import random
import sqlite3

import pytest

from gapless.rows import table_columns
from gapless.sqlite_insert import MAX_PARAMETERS, ValuesInserter, values_sql
from gapless.storage import Storage
from tests.row_blocks import KEY, TABLES, random_block

def _stored(path, table):
    columns = table_columns(table)
    connection = sqlite3.connect(path)
    try:
        picked = ", ".join('"%s", typeof("%s")' % (c, c) for c in columns)
        order = ", ".join('"%s"' % c for c in columns if c in KEY or c in ("seq", "trade_id"))
        return connection.execute('SELECT %s FROM "%s" ORDER BY %s' % (picked, table, order)).fetchall()
    finally:
        connection.close()


@pytest.mark.parametrize("seed", range(12))
def test_row_blocks_are_stored_exactly_as_executemany_stores_their_rows(tmp_path, seed):
    rng = random.Random(seed)
    ours = Storage("sqlite:///%s" % (tmp_path / "ours.db"))
    reference = Storage("sqlite:///%s" % (tmp_path / "reference.db"))
    used = set()
    try:
        for round_no in range(6):
            table = rng.choice(TABLES)
            n = rng.choice([0, 1, 2, 9, 11, 99, 101, 999, 1000, 1001, rng.randrange(0, 2600)])
            for store in (ours, reference):
                store.ensure_tables({table})
            used.add(table)
            block = random_block(rng, table, n, ours.model(table)._meta.fields)
            if n and rng.random() < 0.5:  # some of the rows are stored already: both must skip them
                earlier = list(block)[: rng.randrange(1, n + 1)]
                for store in (ours, reference):
                    with store.db.atomic():
                        store.db.cursor().executemany(store.insert_sql(table), earlier)
            inserted = ours.write({table: block})
            connection = reference.db.connection()
            before = connection.total_changes
            with reference.db.atomic():
                reference.db.cursor().executemany(reference.insert_sql(table), iter(block))
            assert inserted == connection.total_changes - before, (seed, round_no, table, n)
        for table in used:
            assert _stored(tmp_path / "ours.db", table) == _stored(tmp_path / "reference.db", table), table
    finally:
        ours.close()
        reference.close()


def test_statement_sizes_fit_the_variable_limit_and_reach_every_count(tmp_path):
    connection = sqlite3.connect(tmp_path / "x.db")
    inserter = ValuesInserter(connection)
    inserter.variables = 999  # SQLite's limit before 3.32
    ladder = inserter._ladder(5, 103)  # book_snapshot_25: 108 columns, 5 the same in every row
    assert ladder[0] == (999 - 5) // 103 and ladder[-1] == 1
    inserter.variables = 32766  # SQLite 3.32 and later: the statement's own cap applies
    assert inserter._ladder(5, 7)[0] * 7 + 5 <= MAX_PARAMETERS and inserter._ladder(5, 103)[0] * 103 + 5 <= MAX_PARAMETERS
    assert all(a > b for a, b in zip(ladder, ladder[1:]))
    sql = values_sql("t", ("a", "b", "c"), (1,), 2)
    assert sql == ('INSERT INTO "t" ("a", "b", "c") SELECT column1, ?, column2 FROM (VALUES (?, ?), (?, ?)) '
                   'WHERE true ON CONFLICT DO NOTHING')
