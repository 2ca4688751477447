"""Option contracts named in a symbol: their type, strike and expiration, and where a stream's life ends.

Deribit names options ``<UNDERLYING>-<D><MON><YY>-<STRIKE>-<C|P>`` (``BTC-29JAN27-85000-C``; a decimal strike keeps
a ``d`` for the point: ``XRP_USDC-30JUN23-0d625-C``). An option expires at 08:00 UTC of the date in its name: from
then on it sends nothing, so the minutes after it are outside its streams (not missing, never downloaded, not
gaps), whatever the data type (an option's ``book_ticker`` ends there too). Other symbols live for ever.
"""
import re
from dataclasses import dataclass
from datetime import datetime, timezone

_MONTHS = {m: i for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV",
                                       "DEC"), start=1)}
_OPTION = re.compile(r"^(?P<underlying>[A-Z0-9_]+)-(?P<day>\d{1,2})(?P<month>[A-Z]{3})(?P<year>\d{2})-"
                     r"(?P<strike>\d+(?:[dD]\d+)?)-(?P<kind>[CP])$")
EXPIRY_HOUR_UTC = 8
OPTION_EXCHANGES = ("deribit",)


@dataclass(frozen=True)
class OptionContract:
    """An option named by its symbol: ``option_type`` (call/put), ``strike_price``, ``expiration`` (µs, UTC)."""

    symbol: str
    underlying: str
    option_type: str
    strike_price: float
    expiration: int


def option_contract(exchange, symbol):
    """The :class:`OptionContract` an exchange's symbol names, or None when it names no option."""
    if exchange not in OPTION_EXCHANGES:
        return None
    match = _OPTION.match(symbol.upper())
    if not match or match.group("month") not in _MONTHS:
        return None
    try:
        expiry = datetime(2000 + int(match.group("year")), _MONTHS[match.group("month")], int(match.group("day")),
                          EXPIRY_HOUR_UTC, tzinfo=timezone.utc)
    except ValueError:
        return None  # 31FEB26: not a date, so not an option
    strike = float(match.group("strike").upper().replace("D", "."))
    return OptionContract(symbol, match.group("underlying"), "call" if match.group("kind") == "C" else "put", strike,
                          int(expiry.timestamp()) * 1_000_000)


def contract_values(exchange, symbol):
    """An option's own fields as a follower's event carries them: ``option_type``, ``strike_price``,
    ``expiration_date`` (ISO-8601 UTC); empty for a symbol that names no option."""
    contract = option_contract(exchange, symbol)
    if contract is None:
        return {}
    expiration = datetime.fromtimestamp(contract.expiration // 1_000_000, timezone.utc)
    return {"option_type": contract.option_type, "strike_price": contract.strike_price,
            "expiration_date": expiration.strftime("%Y-%m-%dT%H:%M:%SZ")}


def life_end(exchange, symbol):
    """Where a stream of ``symbol`` ends for good (µs): an option's expiration, else None."""
    contract = option_contract(exchange, symbol)
    return contract.expiration if contract is not None else None


def clip_to_life(exchange, symbol, start, end):
    """``[start, end)`` cut at the symbol's :func:`life_end` (``start == end`` when it lies wholly after it)."""
    last = life_end(exchange, symbol)
    if last is None or end <= last:
        return start, end
    return min(start, last), last
