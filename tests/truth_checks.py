"""What an example of the truth harness must satisfy, checked against the double's market model.

* every minute labelled replay or live equals the truth (:func:`tests.truth.minute_truth`) exactly
  (vwap to 1e-9 relative; a quiet trade minute may leave its price unknown, NaN, but never wrong);
* ``status`` and the series agree on every minute; every gap carries a known reason;
* after the final healing, every minute history can prove is replay;
* no replay request is repeated without new evidence.
"""
import re

import numpy as np
import pandas as pd

from gapless.timeutil import MINUTE_US
from tests.truth import minute_truth, option_contract

REASONS = {"history_outage", "disconnect", "clock_step", "downtime", "unknown_state", "not_yet_available", "no_data",
           "history_cached_empty",
           "awaiting_evidence", "not_downloaded"}
EXACT = {"trade": ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "trades"),
         "book": ("bid_price", "bid_amount", "ask_price", "ask_amount", "mid_close"),
         "ticker": ("last_price", "open_interest", "funding_rate", "index_price", "mark_price"),
         "liquidation": ("liquidations", "volume", "buy_volume", "sell_volume"),
         "book_ticker": ("bid_price", "bid_amount", "ask_price", "ask_amount", "mid_open", "mid_high", "mid_low",
                         "mid_close"),
         "option_summary": ("best_bid_price", "best_bid_amount", "best_bid_iv", "best_ask_price", "best_ask_amount",
                            "best_ask_iv", "last_price", "open_interest", "mark_price", "mark_iv", "delta", "gamma",
                            "vega", "theta", "rho", "underlying_price")}
PRICES = ("open", "high", "low", "close")


def family(data_type):
    """trade, book, liquidation, book_ticker, option_summary or ticker."""
    if data_type.startswith(("trade",)):
        return "trade"
    if data_type in ("liquidation", "book_ticker", "option_summary"):
        return data_type
    if data_type.startswith(("quote", "book_snapshot")):
        return "book"
    return "ticker"


def false_minutes(machine, frames, exchange="deribit"):
    """Minutes labelled replay or live whose values differ from the truth: ``[(stream, minute, column, got,
    truth)]`` (at most a few per stream)."""
    found = []
    for (symbol, data_type), frame in frames.items():
        served = frame[frame["source"] != "missing"]
        if served.empty:
            continue
        start = int(frame.index[0].value // 1000)
        end = int(frame.index[-1].value // 1000) + MINUTE_US
        truth = minute_truth(machine.market, exchange, symbol, data_type, start, end).reindex(frame.index)
        kind = family(data_type)
        columns = list(EXACT[kind])
        if kind == "book":
            columns += [c for c in truth.columns if c.startswith(("bids_", "asks_"))]
        for column in columns:
            got = served[column].to_numpy(dtype=float)
            want = truth.loc[served.index, column].to_numpy(dtype=float)
            bad = ~((got == want) | (np.isnan(got) & np.isnan(want)))
            if kind == "trade" and column in PRICES:
                # a quiet minute whose last price is not known inside coverage says NaN, not a guess
                bad &= ~(np.isnan(got) & (served["trades"].to_numpy(dtype=float) == 0))
            for i in np.flatnonzero(bad)[:3]:
                found.append(((symbol, data_type), served.index[i], served["source"].iloc[i], column, got[i],
                              want[i]))
        if kind in ("trade", "liquidation"):
            got = served["vwap"].to_numpy(dtype=float)
            want = truth.loc[served.index, "vwap"].to_numpy(dtype=float)
            bad = ~(np.isclose(got, want, rtol=1e-9, atol=0) | (np.isnan(got) & np.isnan(want)))
            for i in np.flatnonzero(bad)[:3]:
                found.append(((symbol, data_type), served.index[i], served["source"].iloc[i], "vwap", got[i],
                              want[i]))
    return found


def disagreements(status, frames):
    """Where ``status`` and the series differ: counts, gaps, or a gap without a known reason."""
    problems = []
    for stream in status["streams"]:
        key = (stream["symbol"], stream["data_type"])
        frame = frames[key]
        sources = frame["source"]
        counts = {s: int((sources == s).sum()) for s in ("replay", "live", "missing")}
        counts["total"] = len(frame)
        if counts != stream["minutes"]:
            problems.append((key, "counts", counts, stream["minutes"]))
        runs = _runs(frame)
        gaps = [(pd.Timestamp(g["start"]), pd.Timestamp(g["end"])) for g in stream["gaps"]]
        if runs != gaps:
            problems.append((key, "gaps", runs[:5], gaps[:5]))
        for gap in stream["gaps"]:
            if gap["reason"] not in REASONS:
                problems.append((key, "reason", gap))
    return problems


def _runs(frame):
    missing = frame["missing"].to_numpy()
    runs, i = [], 0
    while i < len(missing):
        if missing[i]:
            j = i
            while j < len(missing) and missing[j]:
                j += 1
            runs.append((frame.index[i], frame.index[j - 1] + pd.Timedelta(minutes=1)))
            i = j
        else:
            i += 1
    return runs


def repeated_requests(machine, first_wait_us=2 * MINUTE_US, most=8):
    """Replay requests asked again with the very same options without backing off.

    Asking again is fine after a wait that doubles every time (at least ``first_wait_us`` first), and at
    most ``most`` times in all; sooner or more often means the same range is asked without new evidence.
    """
    asks = {}
    for record in machine.requests:
        key = repr(sorted((k, repr(v)) for o in record.options for k, v in o.items()))
        asks.setdefault(key, []).append((int(record.received_at.timestamp() * 1_000_000), record.fault))
    found = []
    for key, answers in asks.items():
        # a request the server cut is a failure: asking it again after a short backoff is what a retry is (only
        # asks after an answer count, harness replay faults)
        times = [t for t, _ in answers]
        waits = [b - a for (a, fault), (b, _) in zip(answers, answers[1:]) if fault != "cut"]
        early = [i for i, w in enumerate(waits) if w < first_wait_us * 2 ** i]
        if early or len(times) > most:
            found.append((key, len(times), [w // 1_000_000 for w in waits]))
    return found


def unhealed(result, frames, margin=4 * MINUTE_US, after_outage=30 * 1_000_000):
    """Minutes history can prove that are not replay after the final healing: ``[(stream, minute, source)]``.

    Provable: an active symbol (not silent), not within ``margin`` of a quiet period, of the window's start,
    or of the final horizon (history lags by the availability delay), nor of a history outage's start, nor
    within ``after_outage`` after its end (the first line after the outage, plus the 2 s skew bound, proves
    the rest: a minute starting that long after the recorder came back is replay). A run of trade bars alone
    sees its first line only when the first bar after the outage is sent (at the first trade after that bar's
    interval) and then claims from the next whole interval: two intervals more.
    """
    schedule = result.schedule
    now = result.final[0]
    horizon = now - (schedule.availability_s + 60) * 1_000_000 - 3 * MINUTE_US
    avoid = [(a * 1000 - margin, b * 1000 + margin) for symbol, a, b in schedule.quiet if symbol != "SOL-PERPETUAL"]
    found = []
    for (symbol, data_type), frame in frames.items():
        if symbol == "SOL-PERPETUAL":
            continue
        after = after_outage + 2 * _bar_interval_us(data_type)
        holes = avoid + [(a - margin, b + after) for a, b in schedule.history_outages]
        first = int(frame.index[0].value // 1000)
        for t, source in frame["source"].items():
            m = int(t.value // 1000)
            if source == "replay" or m < first + margin or m + MINUTE_US > horizon:
                continue
            if any(a < m + MINUTE_US and m < b for a, b in holes):
                continue
            found.append(((symbol, data_type), t, source))
    return found


def past_expiry(result):
    """What an option that expired during the example has after its expiration (08:00 UTC of the date in its name,
    from the double's contract model): a published minute, or a replay request of ours reaching more than a minute
    past it (a run reaches one minute past what it claims; a silence check asks with symbols of its own)."""
    found = []
    for symbol in result.schedule.options:
        expiry = option_contract(symbol)["expiration_date"]
        frame = result.final[2].get((symbol, "option_summary"))
        if frame is not None and len(frame) and frame.index[-1] >= expiry:
            found.append((symbol, "published", str(frame.index[-1])))
        for record in result.machine.requests:
            if not record.options or record.to is None:
                continue
            names = record.options[0].get("symbols", [])
            if symbol in names and not any(s.startswith("GAPLESS-") for s in names) and \
                    pd.Timestamp(record.to) > expiry + pd.Timedelta(minutes=1):
                found.append((symbol, "asked", str(record.from_), str(record.to)))
    return found


def _bar_interval_us(data_type):
    """The interval of a time bar (``trade_bar_10s``, ``trade_bar_1m``) in µs; 0 for anything else."""
    match = re.fullmatch(r"trade_bar_(\d+)(s|m)", data_type)
    if not match:
        return 0
    return int(match.group(1)) * (MINUTE_US if match.group(2) == "m" else 1_000_000)


def check(result):
    """All the checks of one example; raises AssertionError naming the schedule and what was wrong."""
    schedule = result.schedule
    problems = []
    for label, (now, status, frames) in [("checkpoint %d" % i, c) for i, c in enumerate(result.checkpoints)] + \
            [("final", result.final)]:
        wrong = false_minutes(result.machine, frames, schedule.exchange)
        if wrong:
            problems.append("%s: %d false minute(s), e.g. %s" % (label, len(wrong), wrong[:3]))
        differ = disagreements(status, frames)
        if differ:
            problems.append("%s: status and series disagree: %s" % (label, differ[:3]))
    left = unhealed(result, result.final[2])
    if left:
        problems.append("final: %d provable minute(s) not replay, e.g. %s" % (len(left), left[:3]))
    repeated = repeated_requests(result.machine)
    if repeated:
        problems.append("requests asked again without backing off: %s" % (repeated[:2],))
    if result.follow_problems:
        problems.append("follower: %d problem(s), e.g. %s" % (len(result.follow_problems), result.follow_problems[:3]))
    expired = past_expiry(result)
    if expired:
        problems.append("expired options: %s" % (expired[:3],))
    if schedule.refused and not result.refusals:
        problems.append("%s accepted; it has no minute series" % (schedule.refused,))
    assert not problems, "%s\n%s" % (schedule.describe(), "\n".join(problems))
