"""The coverage picture: colours read back from the PNG at known minutes, and the ``plot`` command."""
import os

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from gapless.cli import main
from gapless.plot import COLOURS, draw_coverage, figure_width
from gapless.service import Gapless
from gapless.storage import Claim
from gapless.timeutil import MINUTE_US, US
from tests.support import ingest_fixture, sqlite_store, us

DISCONNECT = "replay_btc_disconnect_2026-11-24T1330_1345.ndjson"
TYPES = ["quote_1m", "trade"]


def stored_with_replay_live_and_missing(tmp_path):
    """Replay 13:30-13:44 with an exchange disconnect in 13:37 (from the capture), live 13:45-13:47, nothing after.

    Returns the database URL.
    """
    store = sqlite_store(tmp_path)
    ingest_fixture(store, DISCONNECT, "deribit", ["BTC-PERPETUAL"], ["quote_1m", "trade_bar_1m", "trade"],
                   "2026-11-24T13:30", "2026-11-24T13:45")
    t0 = us("2026-11-24T13:45")
    trades = [("deribit", "BTC-PERPETUAL", "trade", "trade", "live", t0 + i * 20 * US, t0 + i * 20 * US + 5,
               "live-%d" % i, 90000.0 + i, 1.0, "buy", None) for i in range(6)]
    store.write({"trade": trades}, [Claim("deribit", "BTC-PERPETUAL", "trade", "live", "live-test:0", t0,
                                          t0 + 2 * MINUTE_US)])
    store.close()
    return "sqlite:///%s" % (tmp_path / "gapless.db")


def colour_at(image, xy):
    x, y = xy
    return tuple(float(v) for v in image[y, x, :3])


def assert_colour(image, xy, name):
    expected = to_rgb(COLOURS[name])
    got = colour_at(image, xy)
    assert np.allclose(got, expected, atol=2 / 255), "pixel %s is %s, not the %s colour %s" % (xy, got, name,
                                                                                               expected)


def test_the_picture_has_the_source_colour_at_each_minute(tmp_path):
    url = stored_with_replay_live_and_missing(tmp_path)
    # the window [13:30, 13:50): the service's own window at 13:50:30 with a 20-minute lookback
    gapless = Gapless("deribit", ["BTC-PERPETUAL"], TYPES, lookback="20m", database_url=url,
                      now=lambda: us("2026-11-24T13:50:30"))
    try:
        path = tmp_path / "coverage.png"
        picture = gapless.plot(str(path))
        gaps = {(g["data_type"], g["start"][11:16]): g["reason"] for g in gapless.gaps()}
    finally:
        gapless.stop()
    assert (picture.start, picture.end) == (us("2026-11-24T13:30"), us("2026-11-24T13:50"))
    image = imread(str(path))
    assert image.shape[:2] == (picture.height, picture.width)
    left, _, right, _ = picture.bands[("BTC-PERPETUAL", "trade")]
    assert (right - left) / 20 >= 4  # a minute is several pixels wide
    key = ("BTC-PERPETUAL", "trade")
    for minute, source in (("13:31", "replay"), ("13:36", "replay"), ("13:37", "missing"), ("13:40", "replay"),
                           ("13:44", "missing"), ("13:45", "live"), ("13:46", "live"), ("13:48", "missing")):
        assert_colour(image, picture.minute_pixel(key, us("2026-11-24T%s" % minute)), source)
    # quotes: no book before the fresh snapshot after the outage (a mid-day start) -> missing until 13:38
    quote = ("BTC-PERPETUAL", "quote_1m")
    assert_colour(image, picture.minute_pixel(quote, us("2026-11-24T13:33")), "missing")
    assert_colour(image, picture.minute_pixel(quote, us("2026-11-24T13:40")), "replay")
    # the gap the picture labels, with its reason
    assert gaps[("trade", "13:37")] == "history_outage"  # tardis' own recording dropped there
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".coverage.png")]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644  # readable by whoever serves or views it


def test_a_long_window_keeps_the_figure_within_its_cap():
    assert figure_width(10) == 1000
    assert figure_width(300) == 300 * 6 + 120
    assert figure_width(7 * 1440) == 3600


def test_plot_command_writes_the_picture_of_the_requested_range(tmp_path, isolated_cli, capsys):
    url = stored_with_replay_live_and_missing(tmp_path)
    out = tmp_path / "cli.png"
    code = main(["plot", "--database", url, "--exchange", "deribit", "--symbols", "BTC-PERPETUAL", "--data-types",
                 "trade", "--from", "2026-11-24T13:30", "--to", "2026-11-24T13:50", "--out", str(out)])
    assert code == 0
    assert "1 stream(s), 20 minute(s), 5 missing"  # 13:37, 13:44, 13:47-13:49 in capsys.readouterr().out
    image = imread(str(out))
    assert image.shape[1] == 1000 and image.shape[0] > 200


@pytest.mark.parametrize("args, text", [
    (["--out", "coverage.jpg"], "must end in .png"),
    (["--out", "no-such-dir/coverage.png"], "does not exist"),
    (["--out", "c.png", "--from", "yesterday"], "not an ISO-8601"),
    (["--out", "c.png", "--from", "2026-11-24T13:50", "--to", "2026-11-24T13:30"], "is not before"),
    (["--out", "c.png", "--symbols", "BTC PERPETUAL"], "is not a symbol"),
    ([], "--out"),
])
def test_plot_command_rejects_bad_input_with_exit_2(tmp_path, isolated_cli, capsys, args, text):
    url = stored_with_replay_live_and_missing(tmp_path)
    code = main(["plot", "--database", url, "--data-types", "trade"] + args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("gapless: error:") and text in err
    assert not [p for p in os.listdir(tmp_path) if p.endswith((".png", ".jpg"))]


def test_plot_command_on_a_missing_database_exits_2(tmp_path, isolated_cli, capsys):
    code = main(["plot", "--database", "sqlite:///%s" % (tmp_path / "none.db"), "--out", str(tmp_path / "c.png")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_chain_of_many_streams_is_drawn_as_one_band_per_data_type(tmp_path):
    """40 option streams and 4 perpetual ones: a band each would be a picture nobody reads; a band per data type
    shows, per minute, the worst of its streams (an expired option's minutes after 08:00 do not count)."""
    from gapless.plot_groups import MAX_BANDS
    index = pd.date_range("2026-11-25T07:50Z", periods=20, freq="1min", name="minute")

    def frame(sources, periods=20):
        return pd.DataFrame({"source": sources, "missing": [s == "missing" for s in sources],
                             "mark_price": 0.01}, index=index[:periods])

    frames = {("BTC-25NOV26-%d-C" % (80000 + 1000 * i), "option_summary"): frame(["replay"] * 10, periods=10)
              for i in range(20)}  # expired at 08:00
    frames.update({("BTC-29JAN27-%d-C" % (80000 + 1000 * i), "option_summary"): frame(["replay"] * 20)
                   for i in range(20)})
    frames[("BTC-29JAN27-99500-C", "option_summary")] = frame(["replay"] * 12 + ["live"] * 4 + ["missing"] * 4)
    for symbol in ("BTC-PERPETUAL", "ETH-PERPETUAL"):
        frames[(symbol, "trade")] = frame(["replay"] * 15 + ["live"] * 5)
    assert len(frames) > MAX_BANDS
    gaps = [{"symbol": "BTC-29JAN27-99500-C", "data_type": "option_summary", "start": "2026-11-25T08:06:00Z",
             "end": "2026-11-25T08:10:00Z", "reason": "disconnect"}]
    picture = draw_coverage(frames, gaps, str(tmp_path / "chain.png"))
    assert set(picture.bands) == {("option_summary", "41 streams"), ("trade", "2 streams")}
    assert picture.height < 1000  # two bands, not 43
    image = imread(str(tmp_path / "chain.png"))
    chain, trades = ("option_summary", "41 streams"), ("trade", "2 streams")
    for key, minute, source in ((chain, "08:00", "replay"), (chain, "08:03", "live"), (chain, "08:07", "missing"),
                                (trades, "08:03", "replay"), (trades, "08:07", "live")):
        assert_colour(image, picture.minute_pixel(key, us("2026-11-25T%s" % minute)), source)
