"""The byte-level timestamp parse of replay batches equals parse_timestamp_us, or declines (randomized)."""
import random

import numpy as np

from gapless.convert_batch import _fixed_width_us, _timestamps
from gapless.timeutil import parse_timestamp_us


def _draw(rng, fraction_digits):
    year = rng.choice([rng.randint(1, 9999), rng.randint(1960, 2100), 1900, 2000, 2024, 2100])
    month = rng.randint(0, 13) if rng.random() < 0.05 else rng.randint(1, 12)
    day = rng.randint(0, 32) if rng.random() < 0.1 else rng.randint(1, 31 if rng.random() < 0.3 else 28)
    hour = rng.randint(0, 24) if rng.random() < 0.05 else rng.randint(0, 23)
    minute = rng.randint(0, 60) if rng.random() < 0.05 else rng.randint(0, 59)
    second = rng.randint(0, 60) if rng.random() < 0.05 else rng.randint(0, 59)
    fraction = "." + "".join(rng.choice("0123456789") for _ in range(fraction_digits)) if fraction_digits else ""
    return "%04d-%02d-%02dT%02d:%02d:%02d%sZ" % (year, month, day, hour, minute, second, fraction)


def test_every_batch_it_parses_equals_the_reference_and_every_valid_one_of_one_width_is_parsed():
    rng = random.Random(20261207)
    parsed = 0
    for _ in range(4000):
        digits = rng.randint(0, 9)
        texts = [_draw(rng, digits) for _ in range(rng.randint(1, 40))]
        if rng.random() < 0.1:  # a damaged character: another digit, a separator, a space, a non-ASCII digit
            i = rng.randrange(len(texts))
            j = rng.randrange(len(texts[i]))
            texts[i] = texts[i][:j] + rng.choice("x9-:.TZ \u0661") + texts[i][j + 1:]
        try:
            expected = [parse_timestamp_us(text) for text in texts]
        except ValueError:
            expected = None
        got = _fixed_width_us(texts)
        if got is None:
            same_width = len(set(map(len, texts))) == 1 and all(text.isascii() for text in texts)
            assert expected is None or not same_width, texts
            continue
        parsed += 1
        assert got.dtype == np.int64 and got.tolist() == expected, texts
    assert parsed > 1000


def test_mixed_widths_take_the_general_parse_with_the_same_result():
    texts = ["2026-11-24T13:30:00.368Z", "2026-11-24T13:30:00.371246Z", "2026-11-24T13:30:01Z"]
    assert _fixed_width_us(texts) is None
    assert _timestamps(texts) == [parse_timestamp_us(text) for text in texts]
