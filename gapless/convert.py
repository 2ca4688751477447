"""One conversion path for replay and live messages: tardis JSON -> rows for storage.

The path lives in three rooms; this module is its public face and keeps every name importable from
here:

* :mod:`gapless.rows`: the storage tables' row layouts (:func:`table_columns`) and :class:`RowBlock`;
* :mod:`gapless.convert_message`: :class:`Converter`, one message at a time, and the field checks
  (:class:`MalformedMessage`);
* :mod:`gapless.convert_batch`: :class:`BatchConverter`, the vectorised path for whole batches.
"""
from .convert_batch import BatchConverter
from .convert_message import (CONTROL_TYPES, Converter, MalformedMessage, is_finite, is_server_error_line,
                              parse_json)
from .rows import (BOOK_CHANGE_COLUMNS, COMMON_COLUMNS, TICKER_COLUMNS, TICKER_FIELDS, TIMESTAMP_COLUMNS,
                   TRADE_BAR_COLUMNS, TRADE_COLUMNS, Const, RowBlock, level_columns, snapshot_columns,
                   table_columns)
from .timeutil import from_us

__all__ = ["BatchConverter", "Converter", "MalformedMessage", "CONTROL_TYPES", "is_finite", "is_server_error_line",
           "parse_json", "normalize", "table_columns", "level_columns", "snapshot_columns", "RowBlock", "Const",
           "COMMON_COLUMNS", "TRADE_COLUMNS", "TRADE_BAR_COLUMNS", "BOOK_CHANGE_COLUMNS", "TICKER_COLUMNS",
           "TICKER_FIELDS", "TIMESTAMP_COLUMNS"]


def normalize(message, source="replay"):
    """Convert one message to the documented record format (a dict).

    ``type`` becomes ``dtype``, timestamps become aware UTC datetimes, levels are flattened.
    Raises :class:`MalformedMessage` for anything that is not a data message.
    """
    table, row = Converter(source).convert(message)
    record = {}
    for column, value in zip(table_columns(table), row):
        if column in TIMESTAMP_COLUMNS and value is not None:
            value = from_us(value)
        record[column] = value
    return record
