"""Which streams gapless keeps: groups of (exchange, symbols, data types), and their validation.

One service may keep several exchanges, each with its own symbols and data types. They are written as
``GAPLESS_STREAMS`` (or ``--streams``, or the library's ``streams=``)::

    deribit:BTC-PERPETUAL,ETH-PERPETUAL:quote_1m,trade_bar_1m;binance-futures:BTCUSDT:trade

groups separated by ``;``, each ``exchange:symbols:data types`` with comma-separated lists. The
single-exchange settings (``GAPLESS_EXCHANGE``, ``GAPLESS_SYMBOLS``, ``GAPLESS_DATA_TYPES``) are the
shorthand for one group. Names are validated strictly: they reach URLs, logs and SQL parameters.
"""
import re
from dataclasses import dataclass

from .datatypes import check_series_types, parse_data_types
from .exceptions import ConfigurationError, UsageError

EXCHANGE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
SYMBOL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


@dataclass(frozen=True)
class StreamGroup:
    """One exchange's symbols and data types (names validated, symbols upper-cased)."""

    exchange: str
    symbols: tuple
    data_types: tuple

    @property
    def streams(self):
        """``[(exchange, symbol, data_type)]``."""
        return [(self.exchange, s, d) for s in self.symbols for d in self.data_types]

    def __str__(self):
        return "%s:%s:%s" % (self.exchange, ",".join(self.symbols), ",".join(self.data_types))


def parse_exchange(text, label="--exchange"):
    """Validate an exchange id as tardis-machine spells it (e.g. ``deribit``, ``binance-futures``)."""
    exchange = str(text).strip()
    if not EXCHANGE_PATTERN.match(exchange):
        raise ConfigurationError("%s: %r is not an exchange name (lower case letters, digits and '-')"
                                 % (label, exchange))
    return exchange


def parse_symbols(text, label="--symbols"):
    """Split and validate a comma-separated symbol list (upper-cased, as tardis-machine spells them)."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    symbols = []
    for item in items:
        symbol = str(item).strip()
        if not symbol:
            continue
        if not SYMBOL_PATTERN.match(symbol):
            raise ConfigurationError("%s: %r is not a symbol (letters, digits and . _ : / - only)" % (label, symbol))
        symbol = symbol.upper()
        if symbol not in symbols:
            symbols.append(symbol)
    if not symbols:
        raise ConfigurationError("%s: no symbol given" % label)
    return tuple(symbols)


def make_group(exchange, symbols, data_types, label="streams", series=True):
    """A validated :class:`StreamGroup` (``series``: every data type must have a minute series)."""
    exchange = parse_exchange(exchange, label)
    symbols = parse_symbols(symbols, label)
    try:
        types = parse_data_types(data_types if isinstance(data_types, str) else list(data_types))
        if series:
            check_series_types(types, label)
    except UsageError as exc:
        message = str(exc)
        raise ConfigurationError(message if message.startswith(label) else "%s: %s" % (label, message)) from None
    return StreamGroup(exchange, symbols, tuple(t.name for t in types))


def parse_streams(value, label="GAPLESS_STREAMS", series=True):
    """Groups from ``"exchange:symbols:types;..."`` text, or from a list of groups or 3-tuples.

    Raises :class:`~gapless.exceptions.ConfigurationError` naming the setting and the group that is wrong.
    An exchange may appear once.
    """
    if isinstance(value, StreamGroup):
        value = [value]
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(";") if p.strip()]
        items = []
        for part in parts:
            fields = part.split(":")
            if len(fields) != 3 or not all(f.strip() for f in fields):
                raise ConfigurationError("%s: %r is not exchange:symbols:data_types (e.g. "
                                         "deribit:BTC-PERPETUAL,ETH-PERPETUAL:quote_1m,trade_bar_1m)" % (label, part))
            items.append(tuple(fields))
    else:
        items = [(g.exchange, g.symbols, g.data_types) if isinstance(g, StreamGroup) else tuple(g) for g in value]
    groups = []
    for item in items:
        if len(item) != 3:
            raise ConfigurationError("%s: %r is not (exchange, symbols, data types)" % (label, item))
        group = make_group(*item, label="%s (%s)" % (label, item[0]), series=series)
        if any(g.exchange == group.exchange for g in groups):
            raise ConfigurationError("%s: exchange %r appears twice; list all its symbols and data types in one "
                                     "group" % (label, group.exchange))
        groups.append(group)
    if not groups:
        raise ConfigurationError("%s: no stream given" % label)
    return tuple(groups)
