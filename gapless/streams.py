"""Which streams gapless keeps: groups of (exchange, symbols, data types), and their validation.

One service may keep several exchanges, each with its own symbols and data types. They are written as
``GAPLESS_STREAMS`` (or ``--streams``, or the library's ``streams=``)::

    deribit:BTC-PERPETUAL,ETH-PERPETUAL:quote_1m,trade_bar_1m;binance-futures:BTCUSDT:trade

groups separated by ``;``, each ``exchange:symbols:data types`` with comma-separated lists. The
single-exchange settings (``GAPLESS_EXCHANGE``, ``GAPLESS_SYMBOLS``, ``GAPLESS_DATA_TYPES``) are the
shorthand for one group. Names are validated strictly: they reach URLs, logs and SQL parameters.

An exchange may appear in several groups, to say different data types for different symbols::

    deribit:BTC-PERPETUAL,ETH-PERPETUAL:quote_1m,liquidation;deribit:BTC-29JAN27-85000-C:option_summary

Its groups merge into one :class:`StreamGroup` (one recorder, one history horizon) that keeps exactly the
(symbol, data type) pairs listed: ``pairs``, and ``filters``, the fewest symbols x data types products that
cover them (one filter object each in the websocket subscription).
"""
import re
from dataclasses import dataclass

from .datatypes import check_series_types, parse_data_types
from .exceptions import ConfigurationError, UsageError

EXCHANGE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
SYMBOL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


@dataclass(frozen=True)
class StreamGroup:
    """One exchange's streams (names validated, symbols upper-cased): every symbol x data type, or exactly
    ``pairs`` (``((symbol, data_type), ...)``) when the exchange was given in several groups."""

    exchange: str
    symbols: tuple
    data_types: tuple
    pairs: tuple = ()

    @property
    def stream_pairs(self):
        """``[(symbol, data_type)]`` kept, in the order given."""
        return list(self.pairs) if self.pairs else [(s, d) for s in self.symbols for d in self.data_types]

    @property
    def streams(self):
        """``[(exchange, symbol, data_type)]``."""
        return [(self.exchange, s, d) for s, d in self.stream_pairs]

    @property
    def filters(self):
        """``[(symbols, data_types)]``: the fewest products that hold exactly :attr:`stream_pairs`."""
        return filters_of(self.stream_pairs)

    def __str__(self):
        return ";".join("%s:%s:%s" % (self.exchange, ",".join(symbols), ",".join(types))
                        for symbols, types in self.filters)


def filters_of(pairs):
    """``[(symbols, data_types)]`` products (symbols with the same data types together) covering ``pairs``."""
    types_of = {}
    for symbol, data_type in pairs:
        types = types_of.setdefault(symbol, [])
        if data_type not in types:
            types.append(data_type)
    products = {}
    for symbol, types in types_of.items():
        products.setdefault(tuple(types), []).append(symbol)
    return [(tuple(symbols), types) for types, symbols in products.items()]


def merged(groups):
    """Groups of one exchange as one :class:`StreamGroup` holding exactly their pairs (a single group: itself)."""
    if len(groups) == 1:
        return groups[0]
    symbols, types, pairs = [], [], []
    for group in groups:
        symbols += [s for s in group.symbols if s not in symbols]
        types += [d for d in group.data_types if d not in types]
        pairs += [p for p in group.stream_pairs if p not in pairs]
    if len(pairs) == len(symbols) * len(types):
        return StreamGroup(groups[0].exchange, tuple(symbols), tuple(types))  # a product after all
    # in symbol order, then data type order (as a product would list them): the same group however it was written
    pairs.sort(key=lambda p: (symbols.index(p[0]), types.index(p[1])))
    return StreamGroup(groups[0].exchange, tuple(symbols), tuple(types), tuple(pairs))


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
    except UsageError as exc:
        raise _labelled(exc, label) from None
    if series:
        _check_series(types, label)
    return StreamGroup(exchange, symbols, tuple(t.name for t in types))


def _check_series(data_types, label):
    try:
        check_series_types(data_types, label)
    except UsageError as exc:
        raise _labelled(exc, label) from None


def _labelled(exc, label):
    message = str(exc)
    return ConfigurationError(message if message.startswith(label) else "%s: %s" % (label, message))


def parse_streams(value, label="GAPLESS_STREAMS", series=True):
    """Groups from ``"exchange:symbols:types;..."`` text, or from a list of groups or 3-tuples.

    Raises :class:`~gapless.exceptions.ConfigurationError` naming the setting and the group that is wrong.
    The groups of an exchange given more than once merge into one (see :func:`merged`), where it first appears.
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
    elif value and all(isinstance(g, StreamGroup) for g in value):
        by_exchange = {}
        for group in value:  # names validated already; a minute series is asked of them here
            if series:
                _check_series(group.data_types, "%s (%s)" % (label, group.exchange))
            by_exchange.setdefault(group.exchange, []).append(group)
        return tuple(merged(groups) for groups in by_exchange.values())
    else:
        items = [item for g in value for item in
                 ([(g.exchange, symbols, types) for symbols, types in g.filters] if isinstance(g, StreamGroup)
                  else [tuple(g)])]
    by_exchange = {}
    for item in items:
        if len(item) != 3:
            raise ConfigurationError("%s: %r is not (exchange, symbols, data types)" % (label, item))
        group = make_group(*item, label="%s (%s)" % (label, item[0]), series=series)
        by_exchange.setdefault(group.exchange, []).append(group)
    if not by_exchange:
        raise ConfigurationError("%s: no stream given" % label)
    return tuple(merged(groups) for groups in by_exchange.values())
