"""PostgreSQL's binary COPY of a :class:`~gapless.rows.RowBlock`, packed by NumPy instead of row by row.

``copy.write_row`` formats every value of every row as text in Python-called code, and the server parses that
text back: for a replay of raw quotes that is most of the writer's time. A block whose columns all have a fixed
width in PostgreSQL's binary format (a :class:`~gapless.rows.Const` of any type, NumPy integer and float arrays)
is packed at once as a NumPy record array whose fields are the format's own (per row: the field count, then each
field's length and big-endian value), so the rows reach the server as one buffer it does not have to parse.
Anything else (a column of strings that differ between rows, a list) returns None and takes ``write_row``.

The stored rows are those of ``write_row``: the same values, NaN stays NaN, a None is NULL
(``tests/test_pg_binary.py`` compares the two).
"""
import numpy as np

from .rows import Const

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # magic, flags, no extension
TRAILER = b"\xff\xff"
_KINDS = {"BIGINT": "int8", "INT": "int4", "INTEGER": "int4", "DOUBLE": "float8", "VARCHAR": "text",
          "TEXT": "text", "BOOL": "bool"}
_DTYPES = {"int8": ">i8", "int4": ">i4", "float8": ">f8", "bool": "u1"}
_INT4 = (-2 ** 31, 2 ** 31 - 1)


def column_kinds(model, columns):
    """The binary kind of each of ``columns`` of a Peewee model (int8, int4, float8, text, bool), or None for a
    column of another type (the table then always takes ``write_row``)."""
    return tuple(_KINDS.get(model._meta.fields[c].field_type) for c in columns)


def binary_copy(block, kinds, encoding="utf-8"):
    """The whole binary COPY data (signature, rows, trailer) of ``block``, or None when a column cannot be packed
    with a fixed width (see the module docstring). ``encoding``: the connection's client encoding, which the
    server converts binary text from."""
    if None in kinds:
        return None
    fields = [("count", ">i2")]
    fills = [("count", len(kinds))]
    for i, (column, kind) in enumerate(zip(block.columns, kinds)):
        if column.__class__ is Const:
            packed = _const(column.value, kind, encoding)
            if packed is None:
                return None
            fields.append(("c%d" % i, "V%d" % len(packed)))  # length and value, the same bytes in every row
            fills.append(("c%d" % i, np.frombuffer(packed, dtype="V%d" % len(packed))[0]))
        elif _packable(column, kind):
            fields += [("l%d" % i, ">i4"), ("v%d" % i, _DTYPES[kind])]
            fills += [("l%d" % i, np.dtype(_DTYPES[kind]).itemsize), ("v%d" % i, column)]
        else:
            return None
    rows = np.empty(len(block), dtype=np.dtype(fields))
    for name, value in fills:
        rows[name] = value
    return SIGNATURE + rows.tobytes() + TRAILER


def _packable(column, kind):
    """Whether a column is a NumPy array whose values ``kind`` holds exactly."""
    if not isinstance(column, np.ndarray) or column.ndim != 1 or kind not in ("int8", "int4", "float8"):
        return False
    if kind == "float8":
        return column.dtype.kind == "f"
    if column.dtype.kind not in "iu":
        return False
    low, high = _INT4 if kind == "int4" else (-2 ** 63, 2 ** 63 - 1)
    return not len(column) or (int(column.min()) >= low and int(column.max()) <= high)


def _const(value, kind, encoding):
    """A constant column's field as bytes (length and value), or None when it does not fit ``kind``."""
    if value is None:
        return b"\xff\xff\xff\xff"  # NULL: length -1, no value
    if kind == "text" and isinstance(value, str):
        if "\x00" in value:
            return None  # PostgreSQL text cannot hold NUL: let write_row's path raise its own error
        try:
            data = value.encode(encoding)
        except UnicodeEncodeError:
            return None  # write_row's path raises its own error
    elif kind == "float8" and isinstance(value, (float, int)) and not isinstance(value, bool):
        data = np.array(value, dtype=">f8").tobytes()
    elif kind in ("int8", "int4") and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if kind == "int4" and not _INT4[0] <= value <= _INT4[1] or not -2 ** 63 <= value < 2 ** 63:
            return None
        data = np.array(value, dtype=_DTYPES[kind]).tobytes()
    elif kind == "bool" and isinstance(value, (bool, np.bool_)):
        data = b"\x01" if value else b"\x00"
    else:
        return None
    return len(data).to_bytes(4, "big", signed=True) + data
