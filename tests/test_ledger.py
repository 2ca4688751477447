"""The replay ledger's writes in one batch (issue 19: a chain of 500 options leaves 500 quiet tails every pass).

``record`` reads the exchange's entries once and writes them in one batch; its attempt counting must stay what
the rule says, entry by entry: an entry counts one more attempt than the entries of the same stream and reason
it overlaps or touches (a history outage or a cached-empty range: the same start), entries recorded earlier in
the same call included. ``spec_record`` below is that rule, written the plain way (one query per entry);
randomized calls of both on two databases must leave the same table.
"""
import random

import pytest

from gapless import ledger
from gapless.storage import Storage
from gapless.timeutil import MINUTE_US

REASONS = ledger.REASONS
T0 = 1_764_000_000 * 1_000_000 // MINUTE_US * MINUTE_US


def spec_record(storage, exchange, unclaimed, now_us, asked_end, anchored=False):
    """The rule, one entry at a time, each reading what the ones before it wrote."""
    model = storage.models["replay_ledger"]
    with storage.write_transaction():
        for symbol, data_type, start, end, reason in unclaimed:
            stream = (model.exchange == exchange) & (model.symbol == symbol) & (model.data_type == data_type)
            key = stream & (model.start == start)
            old = model.get_or_none(key)
            near = (model.start == start) if reason in ("history_outage", "history_cached_empty") else \
                (model.start <= end) & (model.end >= start)
            before = [e.attempts for e in model.select(model.attempts).where(stream & (model.reason == reason) & near)]
            attempts = max(before) + 1 if before else (old.attempts + 1 if old is not None else 1)
            values = dict(end=end, reason=reason, attempts=attempts, asked_at=now_us, asked_end=asked_end,
                          retry_at=ledger.next_ask(reason, attempts, start, now_us), anchored=bool(anchored))
            if old is None:
                model.insert(exchange=exchange, symbol=symbol, data_type=data_type, start=start, **values).execute()
            else:
                model.update(**values).where(key).execute()


def table(storage):
    return sorted((e["exchange"], e["symbol"], e["data_type"], e["start"], e["end"], e["reason"], e["attempts"],
                   e["asked_at"], e["asked_end"], e["retry_at"], bool(e["anchored"]))
                  for exchange in ("deribit", "binance") for e in ledger.entries(storage, exchange))


def random_call(rng):
    """A run's unclaimed ranges: few streams and starts, so that entries overlap, touch and repeat."""
    exchange = rng.choice(["deribit", "deribit", "binance"])
    unclaimed = []
    for _ in range(rng.randint(1, 12)):
        start = T0 + rng.randint(0, 40) * MINUTE_US // 2
        end = start + rng.randint(0, 6) * MINUTE_US // 2
        unclaimed.append((rng.choice(["BTC-PERPETUAL", "ETH-PERPETUAL", "BTC-29JAN27-85000-C"]),
                          rng.choice(["trade", "option_summary"]), start, end, rng.choice(REASONS)))
    now = T0 + rng.randint(0, 600) * MINUTE_US
    return exchange, unclaimed, now, now - rng.randint(0, 30) * MINUTE_US, rng.random() < 0.3


@pytest.mark.parametrize("seed", range(6))
def test_record_in_one_batch_counts_attempts_as_the_rule_entry_by_entry(tmp_path, seed):
    rng = random.Random(seed)
    batched, spec = (Storage("sqlite:///%s" % (tmp_path / name)) for name in ("batched.db", "spec.db"))
    try:
        for store in (batched, spec):
            store.ensure_tables(["replay_ledger"])
        attempts_seen = set()
        for _ in range(40):
            exchange, unclaimed, now, asked_end, anchored = random_call(rng)
            ledger.record(batched, exchange, unclaimed, now, asked_end, anchored)
            spec_record(spec, exchange, unclaimed, now, asked_end, anchored)
            assert table(batched) == table(spec)
            if rng.random() < 0.2:  # some ranges become covered: their entries go, in both
                covered = [(T0, T0 + rng.randint(1, 20) * MINUTE_US)]
                streams = {(s, d) for _, s, d, *_ in table(spec)}
                for store in (batched, spec):
                    ledger.forget_covered(store, exchange, streams, lambda symbol, data_type: covered)
                assert table(batched) == table(spec)
            attempts_seen |= {row[6] for row in table(spec)}
        assert max(attempts_seen) >= 3  # the draws did make entries count each other
    finally:
        batched.close()
        spec.close()


def test_forget_covered_drops_only_covered_entries_of_the_streams_named(store):
    store.ensure_tables(["replay_ledger"])
    ledger.record(store, "deribit", [("BTC-PERPETUAL", "trade", T0, T0 + MINUTE_US, "no_data"),
                                     ("BTC-PERPETUAL", "trade", T0 + 5 * MINUTE_US, T0 + 6 * MINUTE_US, "no_data"),
                                     ("ETH-PERPETUAL", "trade", T0, T0 + MINUTE_US, "no_data")], T0, T0)
    asked = []

    def covered(symbol, data_type):
        asked.append(symbol)
        return [(T0, T0 + 2 * MINUTE_US)]

    ledger.forget_covered(store, "deribit", {("BTC-PERPETUAL", "trade")}, covered)
    assert [(e["symbol"], e["start"]) for e in ledger.entries(store, "deribit")] == [
        ("ETH-PERPETUAL", T0), ("BTC-PERPETUAL", T0 + 5 * MINUTE_US)]
    assert asked == ["BTC-PERPETUAL"]  # coverage is read only for the streams named that have entries
