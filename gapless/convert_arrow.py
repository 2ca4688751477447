"""The columnar parse of plain book snapshot lines (``quote``, ``book_snapshot_<d>_<interval>``).

Raw book-derived streams are the bulk of what a replay sends (a day of raw BTC-PERPETUAL ``quote`` is ~240k
lines on a real server). Building a dict per line (orjson) and reading it back field by field cost about
2.9 µs a line in the download worker, as much as the insert itself, and the worker competed with the
writer for the machine's two cores. pyarrow's JSON reader parses a list of such lines straight into
columns, in C++, at about half that, and builds no Python object per line but the arrival-time text the
ingest orders lines by.

The reader is held to an explicit schema and this module checks everything else the dict path checks, so
a list is taken here only when every line is exactly a book snapshot of one name: another type, a control
message, a stray or repeated field, a number that is not a finite number below the sanity bound, a
timestamp of another shape, a blank line or two objects on one line make :func:`parse_snapshot_lines`
return None, and the caller takes the dict path (:mod:`gapless.convert_batch`), which names bad lines.
tests/test_convert_arrow.py holds both paths to the same rows.
"""
import numpy as np

from .convert_message import MAX_ABS

_TIMESTAMP_SHAPE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$"
_pa = _pc = _options = _UTC_US = None


class SnapshotLines:
    """The columns of a list of book snapshot lines (see :func:`parse_snapshot_lines`)."""

    __slots__ = ("name", "exchanges", "symbols", "timestamps", "local_timestamps", "local_texts", "levels", "n")

    def __init__(self, name, exchanges, symbols, timestamps, local_timestamps, local_texts, levels, n):
        self.name = name  # the one ``name`` of every line
        self.exchanges = exchanges  # a str when every line has the same, else a list
        self.symbols = symbols  # likewise
        self.timestamps = timestamps  # int64 µs arrays
        self.local_timestamps = local_timestamps
        self.local_texts = local_texts  # the localTimestamp texts (list of str), for the arrival order checks
        self.levels = levels  # per side (bids, asks), per level: price, amount columns (array, or list with None)
        self.n = n


def parse_snapshot_lines(lines, depth_of):
    """Parse a list of lines (bytes) that are all book snapshots of one name into columns, or return None.

    ``depth_of(name)`` gives the number of levels per side the name's table keeps (raises ``ValueError``
    for a name that is not a book snapshot). None means: not for this path (see the module docstring).
    """
    if not lines or lines[0].__class__ is not bytes or b"" in lines:
        return None
    body = b"\n".join(lines)
    n = len(lines)
    # every line one object: n-1 boundaries "}\n{" (no line holds a newline, so a line starting with "{" and
    # ending with "}" cannot be the middle of an object that spans lines)
    if body[:1] != b"{" or body[-1:] != b"}" or body.count(b"}\n{") != n - 1:
        return None
    pa, pc = _arrow()
    try:
        table = pa.json.read_json(pa.py_buffer(body), read_options=_options[0], parse_options=_options[1])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != n:
        return None
    columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    for field in ("type", "name", "exchange", "symbol", "timestamp", "localTimestamp", "bids", "asks"):
        if columns[field].null_count:
            return None
    kinds = pc.unique(columns["type"]).to_pylist()
    names = pc.unique(columns["name"]).to_pylist()
    if kinds != ["book_snapshot"] or len(names) != 1:
        return None
    try:
        depth = depth_of(names[0])
    except ValueError:
        return None
    streams = []
    for field in ("exchange", "symbol"):
        values = pc.unique(columns[field]).to_pylist()
        if "" in values:
            return None
        streams.append(values[0] if len(values) == 1 else columns[field].to_pylist())
    stamps = []
    for field in ("timestamp", "localTimestamp"):
        if not pc.all(pc.match_substring_regex(columns[field], _TIMESTAMP_SHAPE)).as_py():
            return None
        stamps.append(columns[field].cast(_UTC_US).cast(pa.int64()).to_numpy())
    levels = []
    for field in ("bids", "asks"):
        side = _levels(columns[field], depth, pa, pc)
        if side is None:
            return None
        levels.append(side)
    return SnapshotLines(names[0], streams[0], streams[1], stamps[0], stamps[1],
                         columns["localTimestamp"].to_pylist(), levels, n)


def _levels(lists, depth, pa, pc):
    """Price and amount columns of levels 0..depth-1 of one side (a level a line lacks is None)."""
    flat = lists.flatten()  # every level of every line, in order
    if flat.null_count:
        return None  # a level that is not an object: the dict path calls that line malformed
    lengths = pc.list_value_length(lists).to_numpy()
    starts = lists.offsets.to_numpy()[:-1]
    columns = []
    for key in ("price", "amount"):
        values = flat.field(key)
        if len(values) and values.null_count == 0:
            numbers = values.to_numpy()
            if not (np.abs(numbers) < MAX_ABS).all():  # false for NaN and inf too
                return None
        elif len(values):
            finite = pc.all(pc.less(pc.abs(values), MAX_ABS), min_count=0)  # nulls skipped; NaN compares false
            if not finite.as_py():
                return None
        columns.append(values)
    out = []
    for level in range(depth):
        present = lengths > level
        index = np.where(present, starts + level, 0)
        for values in columns:
            if not len(values):
                out.append([None] * len(lengths))
                continue
            taken = values.take(pa.array(index))
            if present.all() and taken.null_count == 0:
                out.append(taken.to_numpy())
            else:
                mask = ~present | np.asarray(taken.is_null())
                out.append(pa.array(taken.to_numpy(zero_copy_only=False), mask=mask).to_pylist())
    return out


def _arrow():
    """pyarrow, imported on first use (a worker that never meets a book snapshot does not pay for it)."""
    global _pa, _pc, _options, _UTC_US
    if _pa is None:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json  # noqa: F401 (pa.json)
        level = pa.struct([("price", pa.float64()), ("amount", pa.float64())])
        schema = pa.schema([
            ("type", pa.string()), ("symbol", pa.string()), ("exchange", pa.string()), ("name", pa.string()),
            ("depth", pa.int64()), ("interval", pa.int64()), ("bids", pa.list_(level)), ("asks", pa.list_(level)),
            ("timestamp", pa.string()), ("localTimestamp", pa.string())])
        # one thread: the download already runs in a worker process beside the writer, on a 2-core machine
        _options = (pa.json.ReadOptions(use_threads=False, block_size=1 << 26),
                    pa.json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error"))
        _UTC_US = pa.timestamp("us", tz="UTC")
        _pa, _pc = pa, pc
    return _pa, _pc
