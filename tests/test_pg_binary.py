"""PostgreSQL's binary COPY of row blocks (gapless.pg_binary) stores exactly what text COPY stores.

Randomized blocks of every bulk table's shape, most of them packable (text the same in every row, numbers in
arrays), go through ``Storage.write`` into one schema and through text COPY of the same row tuples
(``write_row``, the path before binary COPY) into another, some of them over rows already stored (the
staging-table path); stored rows and counts of inserted rows must be equal.
"""
import math
import random

import numpy as np
import pytest

from gapless.pg_binary import binary_copy, column_kinds
from gapless.pgstore import copy_rows
from gapless.rows import Const, RowBlock, table_columns
from gapless.storage import Storage
from tests.conftest import pg_schema_url
from tests.row_blocks import KEY, TABLES, random_block


def _stored(store, table):
    columns = table_columns(table)
    order = ", ".join('"%s"' % c for c in columns if c in KEY or c in ("seq", "trade_id"))
    rows = store.db.execute_sql('SELECT %s FROM "%s" ORDER BY %s' % (
        ", ".join('"%s"' % c for c in columns), table, order)).fetchall()
    # NaN is stored as NaN on both paths; compared as a marker (NaN != NaN)
    return [tuple("NaN" if isinstance(v, float) and math.isnan(v) else v for v in row) for row in rows]


@pytest.mark.parametrize("seed", range(6))
def test_row_blocks_are_stored_exactly_as_text_copy_stores_their_rows(pg_database, seed):
    rng = random.Random(seed)
    ours, reference = (Storage(pg_schema_url(pg_database)[1]) for _ in range(2))
    used, packed = set(), 0
    try:
        for round_no in range(8):
            table = rng.choice(TABLES)
            n = rng.choice([1, 2, 99, 1000, rng.randrange(0, 2600)])
            for store in (ours, reference):
                store.ensure_tables({table})
            used.add(table)
            model = ours.model(table)
            block = random_block(rng, table, n, model._meta.fields, packable=rng.random() < 0.75)
            packed += binary_copy(block, column_kinds(model, table_columns(table))) is not None
            if rng.random() < 0.4:  # some rows stored already: COPY meets them and takes the staging table
                earlier = list(block)[: rng.randrange(1, n + 1)]
                for store in (ours, reference):
                    with store.db.atomic():
                        copy_rows(store.db.cursor(), table, table_columns(table), earlier)
            inserted = ours.write({table: block})
            with reference.db.atomic():
                expected = copy_rows(reference.db.cursor(), table, table_columns(table), list(block))
            assert inserted == expected, (seed, round_no, table, n)
        for table in used:
            assert _stored(ours, table) == _stored(reference, table), table
        assert packed, "no block took the binary path"
    finally:
        ours.close()
        reference.close()


def test_a_block_packs_only_where_every_column_has_a_fixed_binary_width():
    kinds = ("text", "int8", "int4", "float8")
    numbers = np.arange(3, dtype=np.int64)
    assert binary_copy(RowBlock("t", [Const("deribit"), numbers, numbers, numbers * 0.5], 3), kinds) is not None
    assert binary_copy(RowBlock("t", [["a", "b", "c"], numbers, numbers, numbers * 0.5], 3), kinds) is None
    assert binary_copy(RowBlock("t", [Const("x"), numbers, numbers + 2 ** 31, numbers * 0.5], 3), kinds) is None
    assert binary_copy(RowBlock("t", [Const("x\x00"), numbers, numbers, numbers * 0.5], 3), kinds) is None
    assert binary_copy(RowBlock("t", [Const("x"), numbers * 0.5, numbers, numbers], 3), kinds) is None
    one = binary_copy(RowBlock("t", [Const(None), Const(2), Const(-1), Const(1.5)], 1), kinds)
    assert one == (b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\x00\x04" + b"\xff\xff\xff\xff"
                   + b"\x00\x00\x00\x08" + (2).to_bytes(8, "big") + b"\x00\x00\x00\x04" + b"\xff\xff\xff\xff"
                   + b"\x00\x00\x00\x08" + b"\x3f\xf8" + bytes(6) + b"\xff\xff")
