"""Run many examples of the truth harness and log one line per example (issue 11's batches).

Run by hand (not collected by pytest; an example is about 20 s):

    .venv/bin/python tests/bench/truth_batch.py --first 5000 --count 1000 --out truth-5000.log

Each line: ``ok|FAIL seed=N secs=S false=F exchange=E types=... outages=O drops=D second=Y restarts=R
clock_steps=C early_asks=A mode=M upgrade=U workers=W options=O faults=F expiring=X follower=K/E`` (X: 1 when
the option chain crosses an option's expiration; K: times the follower beside the service was stopped and resumed; E: minute events it received) and, for a
failure, the checks' message on the following indented lines. ``false`` counts the minutes labelled
replay or live whose values differ from the market model's truth, over all checkpoints and the final
state. The log is appended to, so a batch can be stopped and continued with a later ``--first``. A
failing seed becomes an explicit test (tests/test_found_regressions.py).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.truth_checks import check, false_minutes  # noqa: E402
from tests.truth_harness import EXPIRING, draw, run  # noqa: E402


def one(seed):
    """Play and check one example: (ok, false minutes, message, schedule)."""
    schedule = draw(seed)
    with tempfile.TemporaryDirectory(prefix="truth-%d-" % seed) as folder:
        result = run(schedule, Path(folder))
        states = list(result.checkpoints) + [result.final]
        wrong = sum(len(false_minutes(result.machine, frames, schedule.exchange)) for _, _, frames in states)
        follower = "%d/%d" % (result.follower_kills, result.follower_events)
        try:
            check(result)
            return True, wrong, "", schedule, follower
        except AssertionError as exc:
            return False, wrong, str(exc), schedule, follower


def draws_new_types(schedule):
    """Whether an example plays one of issue 19's Deribit types: liquidations, book tickers or an option chain."""
    return bool(schedule.options) or bool({"liquidation", "book_ticker"} & set(schedule.data_types))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=0, help="first seed")
    parser.add_argument("--count", type=int, default=100, help="number of examples")
    parser.add_argument("--out", default="truth-batch.log", help="log file (appended to)")
    parser.add_argument("--new-types", action="store_true",
                        help="play only the seeds that draw issue 19's types (liquidation, book_ticker, an option "
                             "chain); the others are skipped, not counted")
    parser.add_argument("--expiring", action="store_true",
                        help="play only the seeds whose option chain crosses an option's expiration (see "
                             "tests/truth_harness.py EXPIRY_SHARE); the others are skipped, not counted")
    args = parser.parse_args()
    passed = failed = false_total = 0
    with open(args.out, "a", buffering=1) as log:
        for seed in range(args.first, args.first + args.count):
            if args.new_types and not draws_new_types(draw(seed)):
                continue
            if args.expiring and EXPIRING not in draw(seed).options:
                continue
            started = time.monotonic()
            try:
                ok, wrong, message, s, follower = one(seed)
            except Exception as exc:  # a crash of the harness or the service is a failure too
                ok, wrong, message, s, follower = False, 0, "%s: %s" % (type(exc).__name__, exc), draw(seed), "-"
            passed += ok
            failed += not ok
            false_total += wrong
            log.write("%s seed=%d secs=%.1f false=%d exchange=%s types=%s outages=%d drops=%d second=%d "
                      "restarts=%d clock_steps=%d early_asks=%d mode=%s upgrade=%s workers=%d options=%d faults=%d "
                      "expiring=%d follower=%s\n" % (
                          "ok" if ok else "FAIL", seed, time.monotonic() - started, wrong, s.exchange,
                          ",".join(s.data_types), len(s.history_outages), len(s.live_events),
                          len(s.second_recorder), len(s.restarts), len(s.clock_steps), len(s.early_asks),
                          s.availability_mode, s.upgrade, s.workers, len(s.options), len(s.replay_faults),
                          EXPIRING in s.options, follower))
            if message:
                log.write("".join("    %s\n" % line for line in message.splitlines()[:12]))
    print("%d passed, %d failed, %d false minutes" % (passed, failed, false_total))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
