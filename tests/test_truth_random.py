"""Randomized fault schedules, checked against the double's ground truth (the truth harness).

Each example draws a schedule of a few hours around a midnight on the double's (manual) clock: history
outages of any length anywhere, including across 00:00 and around request starts; live drops, resets
and exchange disconnects; a second recorder that joins and leaves at random seconds; exchange-vs-local
skew within +-2 s; steps of tardis-machine's host clock (+-5 to +-120 s, in about 30 % of examples); quiet
periods up to an hour; a silent symbol; service restarts; random data types; an exchange without trade ids;
other clients asking minutes too early (tardis-machine's cache then holds them empty, in "empty" mode).
A real ``Gapless`` service plays it against the real double. Then, against the market model (never
gapless code): every minute labelled replay or live equals the truth; status and the series agree on
every minute; every gap has a reason and heals when history can prove it; no request is repeated
without backing off. See tests/truth_harness.py and tests/truth_checks.py.

CI runs a fixed set of seeds. By hand: ``GAPLESS_TRUTH_EXAMPLES=1000 GAPLESS_TRUTH_SEED=5000 pytest -q
tests/test_truth_random.py`` (an example takes 10 to 20 s), or ``tests/bench/truth_batch.py`` for a
one-line-per-example log. A seed that fails becomes an explicit test in tests/test_found_regressions.py
(the eight defects of issue 11 are pinned in tests/test_truth_regressions.py).
"""
import os

import pytest

from tests.truth_checks import check
from tests.truth_harness import draw, run

# three in CI (about 110 s): the by-hand batches (tests/bench/truth_batch.py) are where breadth comes from
EXAMPLES = int(os.environ.get("GAPLESS_TRUTH_EXAMPLES", "3"))
FIRST_SEED = int(os.environ.get("GAPLESS_TRUTH_SEED", "0"))


FAST_SEED = 2  # the quickest of the fixed seeds (~5 s): the one example in the fast lane (-m "not slow")


@pytest.mark.parametrize("seed", [pytest.param(s, marks=() if s == FAST_SEED else pytest.mark.slow)
                                  for s in range(FIRST_SEED, FIRST_SEED + EXAMPLES)])
def test_a_random_schedule_serves_only_the_truth(seed, tmp_path):
    check(run(draw(seed), tmp_path))
