"""A test double of tardis-machine (Tardis.dev's local server) for the gapless tests.

``FakeTardisMachine`` serves ``/replay-normalized`` (HTTP) and ``/ws-stream-normalized``
(websocket, on a second port) on 127.0.0.1 from a deterministic synthetic market, printing
the same bytes the real server prints (see the captured fixtures in tests/data), with switches
to inject faults::

    from tests.fake_tardis import FakeTardisMachine, FakeClock, MarketConfig, Outage

    clock = FakeClock(start=datetime(2026, 11, 25, 0, 20, tzinfo=timezone.utc))
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=2, trade_rate=1)) as tm:
        requests.get(tm.http_url + "/replay-normalized", params={"options": json.dumps(opts)})
        tm.expected_replay(opts)          # what a fault-free replay sends
        tm.add_replay_fault("cut", after_lines=100)
        tm.requests, tm.connections       # what was asked and sent

``ManualClock`` stands still until the test moves it (``advance``/``set``); the servers
react at once when it moves. Other switches: ``availability_delay`` and
``availability_mode`` ("error" line or "empty" tail for history not yet available),
``line_rate`` (lines/s per replay request) and ``max_concurrent_requests`` on the machine;
``MarketConfig(skew_ms=...)`` (local clock vs exchange clock),
``MarketConfig(quiet=...)`` (quiet windows, silent symbols),
``MarketConfig(no_trade_ids=...)`` (exchanges whose trades carry no ``id`` and repeat
identical trades; ``kraken`` by default) and ``MarketConfig(live_arrival_spread_ms=...)``
(each live connection stamps its own localTimestamps) on the market;
``step_local_clock(seconds, at=None)`` on the machine steps the wall clock of
tardis-machine's host (an NTP step): live localTimestamps from then on are off by the sum
of the steps, exchange time and the sending schedule are not (see the method);
``slices`` / ``clear_slice_cache()``: the minutes the slice cache holds empty per filter set
(``availability_mode="empty"``; see ``slices.py``). The ground
truth of a market as minute series is in ``tests/truth.py``.

Data types: everything of ``options.py``, including the ticker channel's ``book_ticker`` (any symbol, one per
exchange ticker, the top of the book) and ``option_summary`` for Deribit option names such as
``BTC-29JAN27-85000-C`` (a model of its own, ``option_model.py``: ticker every 1-2 s, Black-76 marks and
greeks on the perpetual's price, nothing from 08:00 UTC of the expiry date on). Symbols are upper-cased.

Run it as its own process with ``python -m tests.fake_tardis`` (see ``__main__``).
"""
from .clock import FakeClock, ManualClock
from .machine import FakeTardisMachine
from .market import MarketConfig
from .streams import Outage

__all__ = ["FakeTardisMachine", "FakeClock", "ManualClock", "MarketConfig", "Outage"]
