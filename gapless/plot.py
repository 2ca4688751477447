"""The coverage picture: per stream, a timeline band coloured by source, gaps labelled by reason, and the price.

:func:`draw_coverage` takes the data the rest of gapless already produces: the minute frames (a
``source`` column per minute and the value columns, as :meth:`Gapless.series` returns them) and the
gaps (dicts with ``symbol``, ``data_type``, ``start``, ``end``, ``reason`` as ``Gapless.gaps()`` and
``status`` give them). For each stream it draws the price (``mid_close`` for quotes and snapshots,
``close`` for trades and bars, ``mark_price``/``last_price`` for tickers; the volume for liquidations) above
a band with one cell per minute in a fixed colour per source (beyond a dozen streams, one summary band per
data type: see :mod:`gapless.plot_groups`):

=========  ===========  =========
replay     green        ``#2ca02c``
live       blue         ``#1f77b4``
missing    red          ``#d62728``
=========  ===========  =========

Gaps are shaded in the price panel and labelled with their reason (the longest ones, when there are
many). The figure is wide enough for a minute to be several pixels wide (capped for long windows). The
PNG is written to a temporary file beside the target and renamed over it, so a reader never sees half a
picture. matplotlib is imported only when drawing, and only its object API with the Agg canvas is used:
no display is needed, no global backend is switched, and it is safe from a worker thread.
"""
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .exceptions import UsageError
from .plot_groups import grouped
from .timeutil import MINUTE_US, iso, parse_time_arg

COLOURS = {"replay": "#2ca02c", "live": "#1f77b4", "missing": "#d62728"}
CODES = {"replay": 0, "live": 1, "missing": 2}
# volume: liquidations; missing_streams: a summary band's panel (see gapless.plot_groups)
PRICE_COLUMNS = ("mid_close", "close", "mark_price", "last_price", "volume", "missing_streams")
DPI = 100
PIXELS_PER_MINUTE = 6
MIN_WIDTH, MAX_WIDTH = 1000, 3600
MAX_GAP_LABELS = 12
_DAY_US = 86_400_000_000
# layout in inches: header, per stream a price panel and a band, footer (tick labels)
_HEADER, _PRICE, _BAND, _SPACE, _FOOTER = 0.75, 1.35, 0.32, 0.45, 0.45
_LEFT_PX, _RIGHT_PX = 90, 30


@dataclass
class Picture:
    """Where things are in a written PNG (pixels, origin top-left, as image readers index them).

    ``bands`` maps ``(symbol, data_type)`` to the band's ``(left, top, right, bottom)``; the band spans
    minutes ``[start, end)`` (µs) linearly from ``left`` to ``right``.
    """

    path: str
    width: int
    height: int
    start: int
    end: int
    bands: dict = field(default_factory=dict)

    def minute_pixel(self, key, minute_us):
        """``(x, y)`` of the centre of a minute's cell in a stream's band."""
        left, top, right, bottom = self.bands[key]
        x = left + (minute_us + MINUTE_US / 2 - self.start) / (self.end - self.start) * (right - left)
        return int(x), int((top + bottom) / 2)


def check_png_path(path, label="--out"):
    """Raise :class:`~gapless.exceptions.UsageError` unless ``path`` ends in ``.png`` in an existing directory."""
    text = str(path)
    if not text.lower().endswith(".png"):
        raise UsageError("%s %r: must end in .png" % (label, text))
    directory = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(directory):
        raise UsageError("%s %r: directory %s does not exist" % (label, text, directory))
    return text


def price_column(frame):
    """The column drawn as the price of a frame, or None."""
    return next((c for c in PRICE_COLUMNS if c in frame.columns and frame[c].notna().any()), None)


def figure_width(minutes):
    """Figure width in pixels: ``PIXELS_PER_MINUTE`` per minute, within ``[MIN_WIDTH, MAX_WIDTH]``."""
    return int(min(MAX_WIDTH, max(MIN_WIDTH, minutes * PIXELS_PER_MINUTE + _LEFT_PX + _RIGHT_PX)))


def draw_coverage(frames, gaps, path, title="gapless coverage"):
    """Draw the picture of ``{(symbol, data_type): frame}`` (or ``{(exchange, symbol, data_type): frame}``
    with several exchanges) and ``gaps`` to ``path`` (PNG, atomically).

    Returns a :class:`Picture` with the bands' pixel positions.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    import matplotlib.dates as mdates

    frames, gaps = grouped(frames, gaps)  # beyond a dozen streams: one summary band per data type
    keys = list(frames)
    start, end = _span(frames)
    minutes = max(1, (end - start) // MINUTE_US)
    width = figure_width(minutes)
    height_in = _HEADER + max(1, len(keys)) * (_PRICE + _BAND + _SPACE) + _FOOTER - _SPACE
    height = int(round(height_in * DPI))
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    x0, x1 = _day_number(start), _day_number(end)
    left, right = _LEFT_PX / width, 1 - _RIGHT_PX / width
    cmap = ListedColormap([COLOURS["replay"], COLOURS["live"], COLOURS["missing"]])
    figure.suptitle("%s   %s .. %s (UTC)" % (title, iso(start), iso(end)), x=left, ha="left", y=1 - 0.12 / height_in,
                    fontsize=11)
    figure.legend(handles=[Patch(color=COLOURS[s], label=s) for s in CODES], loc="upper right", ncol=3,
                  frameon=False, fontsize=9, bbox_to_anchor=(right, 1 - 0.02 / height_in))
    gaps_by_key = {}
    for gap in gaps:
        for gap_key in ((gap["symbol"], gap["data_type"]), (gap.get("exchange"), gap["symbol"], gap["data_type"])):
            gaps_by_key.setdefault(gap_key, []).append(gap)
    band_axes = {}
    top = height_in - _HEADER
    for i, key in enumerate(keys):
        frame = frames[key]
        price_ax = figure.add_axes([left, (top - _PRICE) / height_in, right - left, _PRICE / height_in])
        band_ax = figure.add_axes([left, (top - _PRICE - _BAND) / height_in, right - left, _BAND / height_in],
                                  sharex=price_ax)
        top -= _PRICE + _BAND + _SPACE
        codes = _codes(frame, start, minutes)
        band_ax.imshow(codes[np.newaxis, :], aspect="auto", cmap=cmap, vmin=-0.5, vmax=2.5, interpolation="nearest",
                       extent=(x0, x1, 0, 1), origin="lower")
        band_ax.set_yticks([])
        band_ax.set_ylabel("source", rotation=0, ha="right", va="center", fontsize=8)
        _draw_price(price_ax, frame, start)
        _draw_gaps(price_ax, gaps_by_key.get(key, ()), x0, x1)
        counts = {s: int((frame["source"] == s).sum()) for s in CODES}
        price_ax.set_title(" ".join(key), loc="left", fontsize=10)
        price_ax.set_title("replay %d  live %d  missing %d" % (counts["replay"], counts["live"], counts["missing"]),
                           loc="right", fontsize=9, color=COLOURS["missing"] if counts["missing"] else "black")
        price_ax.set_xlim(x0, x1)
        price_ax.tick_params(labelbottom=False, labelsize=8)
        price_ax.grid(True, linewidth=0.3, alpha=0.5)
        locator = mdates.AutoDateLocator()
        band_ax.xaxis.set_major_locator(locator)
        band_ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        band_ax.tick_params(labelsize=8, labelbottom=(i == len(keys) - 1))
        band_axes[key] = band_ax
    if not keys:
        figure.text(0.5, 0.5, "no stream to draw", ha="center", va="center")
    _write_atomically(figure, path)
    bands = {}
    for key, ax in band_axes.items():
        box = ax.get_window_extent()  # display pixels, origin bottom-left
        bands[key] = (float(box.x0), float(height - box.y1), float(box.x1), float(height - box.y0))
    return Picture(path=str(path), width=width, height=height, start=start, end=end, bands=bands)


def _span(frames):
    starts, ends = [], []
    for frame in frames.values():
        if len(frame.index):
            minutes = frame.index.as_unit("us").asi8
            starts.append(int(minutes[0]))
            ends.append(int(minutes[-1]) + MINUTE_US)
    if not starts:
        return 0, MINUTE_US
    return min(starts), max(ends)


def _day_number(us):
    return us / _DAY_US  # matplotlib's date numbers: days since 1970-01-01 (its default epoch)


def _codes(frame, start, minutes):
    codes = np.full(minutes, CODES["missing"], dtype=float)
    if len(frame.index):
        position = (frame.index.as_unit("us").asi8 - start) // MINUTE_US
        keep = (position >= 0) & (position < minutes)
        codes[position[keep]] = [CODES.get(s, CODES["missing"]) for s in frame["source"].to_numpy()[keep]]
    return codes


def _draw_price(ax, frame, start):
    column = price_column(frame)
    if column is None:
        ax.text(0.5, 0.5, "no price", transform=ax.transAxes, ha="center", va="center", fontsize=9, color="grey")
        ax.set_yticks([])
        return
    # a row describes [minute, minute + 1): draw its value at the minute's middle
    x = (frame.index.as_unit("us").asi8 + MINUTE_US // 2) / _DAY_US
    ax.plot(x, frame[column].to_numpy(dtype=float), color="black", linewidth=0.9)
    ax.set_ylabel(column, fontsize=8)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def _draw_gaps(ax, gaps, x0, x1):
    gaps = sorted(gaps, key=lambda g: -_us(g["end"]) + _us(g["start"]))
    for n, gap in enumerate(gaps):
        a, b = _day_number(_us(gap["start"])), _day_number(_us(gap["end"]))
        ax.axvspan(a, b, color=COLOURS["missing"], alpha=0.15, linewidth=0)
        if n < MAX_GAP_LABELS:
            minutes = (_us(gap["end"]) - _us(gap["start"])) // MINUTE_US
            # centred on the gap, but kept inside the panel near its edges
            where = ((a + b) / 2 - x0) / (x1 - x0)
            x, align = ((a, "left") if where < 0.1 else (b, "right") if where > 0.9 else ((a + b) / 2, "center"))
            ax.text(x, 0.96, "%s (%d min)" % (gap.get("reason", "gap"), minutes), ha=align, va="top",
                    fontsize=7, color=COLOURS["missing"], transform=ax.get_xaxis_transform(), clip_on=True,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    if len(gaps) > MAX_GAP_LABELS:
        ax.text(0.995, 0.04, "+%d smaller gap(s)" % (len(gaps) - MAX_GAP_LABELS), ha="right", va="bottom",
                fontsize=7, color=COLOURS["missing"], transform=ax.transAxes)


def _us(value):
    """µs of a gap bound: int µs, a datetime, or ISO text (as status gives it)."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    return parse_time_arg(value, "gap bound")


def _write_atomically(figure, path):
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".png", dir=directory)
    os.close(fd)
    try:
        figure.savefig(tmp, format="png", dpi=DPI)
        # mkstemp makes the file private (0600); a picture is for others to look at: keep the old file's mode
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
