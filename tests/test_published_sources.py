"""The published sources of every stream of an exchange, read at once (``PublishedSources``), equal what the
per-stream read (``published_sources``) gives, on randomized published series with holes, live and missing minutes,
and ranges that reach outside what is published or outside the window."""
import random

import numpy as np
import pytest

from gapless.published import PublishedSources, published_sources
from gapless.timeutil import MINUTE_US, US

T0 = 1795564800 * US  # 2026-11-25T00:00:00Z
STREAMS = [("BTC-PERPETUAL", "quote_1m"), ("ETH-PERPETUAL", "quote_1m"), ("BTC-29JAN27-85000-C", "option_summary"),
           ("BTC-29JAN27-85000-P", "option_summary"), ("ETH-PERPETUAL", "trade_bar_1m")]


def _publish(store, rng):
    rows = []
    for symbol, data_type in STREAMS:
        first, last = rng.randrange(0, 30), rng.randrange(60, 120)
        holes = set(rng.sample(range(first, last), rng.choice([0, 0, 1, 3])))  # minutes never published
        for k in range(first, last):
            if k in holes:
                continue
            source = rng.choices(["replay", "live", "missing"], [8, 1, 1])[0]
            rows.append(("deribit", symbol, data_type, T0 + k * MINUTE_US, source, source == "missing", 0, 0))
    rows.append(("kraken", "XBT/USD", "quote_1m", T0 + 40 * MINUTE_US, "live", False, 0, 0))  # another exchange
    with store.write_transaction():
        store.bulk_insert(store.models["minute_series"],
                          ["exchange", "symbol", "data_type", "minute", "source", "missing", "seq", "revision"], rows)


@pytest.mark.parametrize("seed", range(4))
def test_reading_every_stream_at_once_equals_reading_each_on_its_own(store, seed):
    rng = random.Random(seed)
    _publish(store, rng)
    start, end = T0 + rng.randrange(0, 40) * MINUTE_US, T0 + rng.randrange(70, 130) * MINUTE_US
    at_once = PublishedSources(store, "deribit", start, end)
    ranges = [(start, end)] + [tuple(sorted(T0 + MINUTE_US * k for k in rng.sample(range(0, 130), 2)))
                               for _ in range(12)]
    compared = 0
    for symbol, data_type in STREAMS + [("SOL-PERPETUAL", "quote_1m")]:
        for a, b in ranges:
            expected = published_sources(store, "deribit", symbol, data_type, a, b)
            got = at_once(symbol, data_type, a, b)
            if expected is None:
                assert got is None, (symbol, data_type, a, b)
            else:
                compared += 1
                assert got is not None and list(got) == list(expected), (symbol, data_type, a, b)
                assert isinstance(got, np.ndarray)
    assert compared > 0
