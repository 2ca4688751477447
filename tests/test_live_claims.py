"""Which of a live segment's claims a recorder's commit writes (gapless.live_claims), on random commit schedules: a
claim whose end passes the end of a minute, a new one and a closing one are written at once; the others at least
every REFRESH_S seconds; what is written never claims past what the commit claimed."""
import random

import pytest

from gapless.live_claims import REFRESH_S, ClaimWrites
from gapless.runs import Claim
from gapless.timeutil import MINUTE_US, US

T0 = 1795564800 * US


def claim(symbol, end, is_open=True, segment="live-x:0"):
    return Claim("deribit", symbol, "option_summary", "live", segment, T0, end, is_open=is_open,
                 end_reason=None if is_open else "stop")


@pytest.mark.parametrize("seed", range(5))
def test_minute_crossings_new_and_closing_claims_are_written_at_once_the_rest_at_least_every_refresh(seed):
    rng = random.Random(seed)
    writes = ClaimWrites()
    symbols = ["S%d" % i for i in range(rng.randint(1, 30))]
    ends = {s: T0 + rng.randrange(MINUTE_US) for s in symbols}
    stored = {}  # symbol -> (end written, monotonic time written)
    now = 0.0
    for step in range(400):
        now += rng.choice((0.02, 0.25, 1.0, 2.0))
        for s in rng.sample(symbols, rng.randint(0, len(symbols))):
            ends[s] += rng.randrange(3 * US)
        final = step == 399
        claims = [claim(s, ends[s], is_open=not final) for s in symbols]
        due = writes.due(claims, now)
        writes.written(due, now)
        written = {c.symbol for c in due}
        for c in claims:
            last = stored.get(c.symbol)
            must = final or last is None or c.end // MINUTE_US != last[0] // MINUTE_US or now - last[1] >= REFRESH_S
            assert (c.symbol in written) == must, (step, c.symbol, last, c.end)
            if c.symbol in written:
                stored[c.symbol] = (c.end, now)
            assert stored[c.symbol][0] <= c.end  # never more than this commit claims
    assert writes._written == {}  # every segment closed: nothing kept


def test_a_new_segment_of_the_same_stream_is_written_at_once():
    writes = ClaimWrites()
    first = claim("BTC-PERPETUAL", T0 + 10 * US)
    writes.written(writes.due([first], 0.0), 0.0)
    assert writes.due([claim("BTC-PERPETUAL", T0 + 11 * US)], 0.5) == []
    after_reconnect = claim("BTC-PERPETUAL", T0 + 11 * US, segment="live-x:1")
    assert writes.due([after_reconnect], 0.5) == [after_reconnect]
