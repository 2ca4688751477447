"""Settings: defaults < ``config/gapless.env`` < ``.env`` < real environment < command-line flags.

Every setting is a ``GAPLESS_*`` variable (documented in ``config/example.env``). Settings are
validated once, at startup: a bad value raises :class:`~gapless.exceptions.ConfigurationError`
naming the variable (or flag). Unknown ``GAPLESS_*`` keys are reported, because a typo in a key
silently falls back to a default otherwise.
"""
import difflib
import logging
import os
import re
import time
from dataclasses import dataclass, field, fields, replace

from .datatypes import parse_data_types
from .streams import StreamGroup, parse_exchange, parse_streams, parse_symbols  # noqa: F401 (re-exported)
from .exceptions import ConfigurationError, UsageError
from .healing import UPGRADE_MODES
from .urls import parse_host_port, redact_url, validate_http_url
from .timeutil import DAY_US, US, parse_duration_us

log = logging.getLogger(__name__)

MAX_LOOKBACK_US = 366 * DAY_US

# setting name -> (environment variable, default as text)
DEFAULTS = {
    "tardis_url": ("GAPLESS_TARDIS_URL", "http://localhost:8000"),
    "tardis_ws_url": ("GAPLESS_TARDIS_WS_URL", "ws://localhost:8001"),
    "database_url": ("GAPLESS_DATABASE_URL", "sqlite:///gapless.db"),
    "api_key": ("GAPLESS_TARDIS_API_KEY", ""),
    "streams": ("GAPLESS_STREAMS", ""),
    "exchange": ("GAPLESS_EXCHANGE", "deribit"),
    "symbols": ("GAPLESS_SYMBOLS", "BTC-PERPETUAL"),
    "data_types": ("GAPLESS_DATA_TYPES", "quote_1m,trade_bar_1m"),
    "lookback": ("GAPLESS_LOOKBACK", "1d"),
    "history_delay": ("GAPLESS_HISTORY_DELAY", "15m"),
    "rebuild_interval": ("GAPLESS_REBUILD_INTERVAL", "60s"),
    # when live minutes of book-derived types are upgraded to replay (gapless.healing): daily or hourly
    "upgrade": ("GAPLESS_UPGRADE", "daily"),
    "export": ("GAPLESS_EXPORT", ""),
    "workers": ("GAPLESS_WORKERS", "1"),
    "concurrency": ("GAPLESS_CONCURRENCY", "8"),
    "log_level": ("GAPLESS_LOG_LEVEL", "INFO"),
    # monitoring (gapless.monitor): a picture rewritten after each rebuild, and a metrics/health listener
    "plot": ("GAPLESS_PLOT", ""),
    "metrics_addr": ("GAPLESS_METRICS_ADDR", ""),
    # testing only: "<start epoch s>,<wall epoch s at start>,<speed>" runs the service on a shifted clock
    "test_clock": ("GAPLESS_TEST_CLOCK", ""),
}
KNOWN_KEYS = frozenset(env for env, _ in DEFAULTS.values())


@dataclass(frozen=True)
class Settings:
    """Validated settings. Durations are µs; lists are tuples. Build with :func:`load_settings`."""

    tardis_url: str
    tardis_ws_url: str
    database_url: str
    api_key: str
    exchange: str
    symbols: tuple
    data_types: tuple
    streams: tuple  # the StreamGroups: every exchange kept (exchange/symbols/data_types: the first one)
    lookback: int
    history_delay: int
    rebuild_interval: int
    export: str
    workers: int
    concurrency: int
    log_level: str
    test_clock: str
    plot: str = ""
    metrics_addr: str = ""
    upgrade: str = "daily"
    warnings: tuple = field(default=(), compare=False)

    def __repr__(self):
        # never print secrets, even by accident in a traceback or a log line
        shown = ", ".join("%s=%r" % (f.name, self._shown(f.name)) for f in fields(self) if f.name != "warnings")
        return "Settings(%s)" % shown

    def _shown(self, name):
        value = getattr(self, name)
        if name == "api_key":
            return "***" if value else ""
        if name == "database_url":
            return redact_url(value)
        return value

    def with_overrides(self, **overrides):
        """A copy with some already-validated values replaced."""
        return replace(self, **overrides)


def read_sources(environ=None, config_dir=None, dotenv_path=".env"):
    """Merge raw ``GAPLESS_*`` values: ``config/gapless.env`` < ``.env`` < the real environment."""
    from dotenv import dotenv_values

    merged = {}
    origins = {}
    files = []
    if config_dir:
        files.append(os.path.join(config_dir, "gapless.env"))
    if dotenv_path:
        files.append(dotenv_path)
    for path in files:
        if path and os.path.isfile(path):
            for key, value in dotenv_values(path).items():
                if value is not None:
                    merged[key] = value
                    origins[key] = path
    environ = os.environ if environ is None else environ
    for key, value in environ.items():
        if key.startswith("GAPLESS_"):
            merged[key] = value
            origins[key] = "environment"
    return merged, origins


def load_settings(environ=None, config_dir=None, dotenv_path=".env", **overrides):
    """Read, merge and validate settings. ``overrides`` (flag values; None = not given) win.

    Raises :class:`ConfigurationError` naming the first invalid setting.
    """
    raw, origins = read_sources(environ, config_dir, dotenv_path)
    warnings = []
    for key in sorted(k for k in raw if k.startswith("GAPLESS_") and k not in KNOWN_KEYS):
        hint = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
        warnings.append("unknown setting %s in %s%s (ignored)" % (
            key, origins.get(key, "?"), "; did you mean %s?" % hint[0] if hint else ""))
    values = {}
    for name, (env, default) in DEFAULTS.items():
        flag = overrides.get(name)
        label = "--database" if name == "database_url" else "--" + name.replace("_", "-")
        values[name] = (flag, label) if flag is not None else (raw.get(env, default), env)
    settings = _validate(values, tuple(warnings))
    return settings


def _validate(values, warnings):
    def text(name):
        return values[name][0]

    def label(name):
        return values[name][1]

    try:
        tardis_url = validate_http_url(str(text("tardis_url")).strip(), label("tardis_url"))
    except UsageError as exc:
        raise ConfigurationError(str(exc)) from None
    ws_url = str(text("tardis_ws_url")).strip().rstrip("/")
    if not re.match(r"^wss?://[^/\s:]+(:\d{1,5})?$", ws_url):
        raise ConfigurationError("%s: %r is not a ws://host:port URL" % (label("tardis_ws_url"), ws_url))
    database_url = str(text("database_url")).strip()
    if not re.match(r"^(sqlite:///.+|postgres(ql)?://.+)$", database_url):
        raise ConfigurationError("%s: %r is not sqlite:///path.db or postgresql://user:pass@host:port/db"
                                 % (label("database_url"), redact_url(database_url)))
    exchange = parse_exchange(text("exchange"), label("exchange"))
    symbols = parse_symbols(text("symbols"), label("symbols"))
    try:
        data_types = tuple(dt.name for dt in parse_data_types(text("data_types")))
    except UsageError as exc:
        raise ConfigurationError("%s: %s" % (label("data_types"), exc)) from None
    streams = (StreamGroup(exchange, symbols, data_types),)
    # GAPLESS_STREAMS names several exchanges; a single-exchange flag on the command line is more specific
    single_flags = any(values[n][1].startswith("--") for n in ("exchange", "symbols", "data_types"))
    if str(text("streams") or "").strip() and (values["streams"][1].startswith("--") or not single_flags):
        streams = parse_streams(str(text("streams")), label("streams"), series=False)
        exchange, symbols, data_types = streams[0].exchange, streams[0].symbols, streams[0].data_types
    lookback = parse_lookback(_duration(values, "lookback"), label("lookback"))
    history_delay = _duration(values, "history_delay")
    if history_delay > 7 * DAY_US:
        raise ConfigurationError("%s: a history delay of %s is more than a week" % (label("history_delay"),
                                                                                  text("history_delay")))
    rebuild_interval = _duration(values, "rebuild_interval")
    if rebuild_interval < US:
        raise ConfigurationError("%s: the rebuild interval must be at least 1s" % label("rebuild_interval"))
    export = str(text("export") or "").strip()
    if export and not export.lower().endswith((".csv", ".parquet")):
        raise ConfigurationError("%s: %r must end in .csv or .parquet" % (label("export"), export))
    try:
        workers = int(text("workers"))
    except (TypeError, ValueError):
        raise ConfigurationError("%s: %r is not a whole number" % (label("workers"), text("workers"))) from None
    if not 0 <= workers <= 32:
        raise ConfigurationError("%s: %d workers is outside 0..32" % (label("workers"), workers))
    try:
        concurrency = int(text("concurrency"))
    except (TypeError, ValueError):
        raise ConfigurationError("%s: %r is not a whole number" % (label("concurrency"), text("concurrency"))) \
            from None
    if not 1 <= concurrency <= 64:
        raise ConfigurationError("%s: %d concurrent requests is outside 1..64" % (label("concurrency"), concurrency))
    log_level = str(text("log_level")).strip().upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigurationError("%s: %r is not DEBUG, INFO, WARNING or ERROR" % (label("log_level"), log_level))
    test_clock = str(text("test_clock") or "").strip()
    if test_clock:
        try:
            make_clock(test_clock)
        except ValueError:
            raise ConfigurationError("%s: %r is not '<start epoch s>,<wall epoch s>,<speed>'"
                                     % (label("test_clock"), test_clock)) from None
    plot, metrics_addr = _monitoring(values)
    upgrade = parse_upgrade(text("upgrade"), label("upgrade"))
    return Settings(tardis_url=tardis_url, tardis_ws_url=ws_url, database_url=database_url,
                    api_key=str(text("api_key") or "").strip(), exchange=exchange, symbols=symbols,
                    data_types=data_types, streams=streams, lookback=lookback, history_delay=history_delay,
                    rebuild_interval=rebuild_interval, export=export, workers=workers, concurrency=concurrency,
                    log_level=log_level,
                    test_clock=test_clock, plot=plot, metrics_addr=metrics_addr, upgrade=upgrade, warnings=warnings)


def _monitoring(values):
    """``GAPLESS_PLOT`` (a .png path) and ``GAPLESS_METRICS_ADDR`` (host:port), both optional."""
    plot, plot_label = str(values["plot"][0] or "").strip(), values["plot"][1]
    if plot and not plot.lower().endswith(".png"):
        raise ConfigurationError("%s: %r must end in .png" % (plot_label, plot))
    address, address_label = str(values["metrics_addr"][0] or "").strip(), values["metrics_addr"][1]
    if address:
        try:
            host, port = parse_host_port(address, address_label)
        except UsageError as exc:
            raise ConfigurationError(str(exc)) from None
        address = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    return plot, address


def parse_upgrade(value, label="GAPLESS_UPGRADE"):
    """``daily`` or ``hourly`` (see :mod:`gapless.healing`); anything else raises :class:`ConfigurationError`
    naming ``label``."""
    text = str(value if value is not None else "").strip().lower()
    if text not in UPGRADE_MODES:
        raise ConfigurationError("%s: %r is not %s" % (label, value, " or ".join(UPGRADE_MODES)))
    return text


def make_clock(spec=""):
    """A ``now()`` returning µs since epoch: real time, or the testing clock ``start,wall,speed``."""
    if not spec:
        return lambda: int(time.time() * US)
    start, wall, speed = (float(part) for part in spec.split(","))
    if speed <= 0:
        raise ValueError("speed must be positive")
    return lambda: int((start + (time.time() - wall) * speed) * US)


def _duration(values, name):
    text, label = values[name]
    try:
        return parse_duration_us(text, label)
    except UsageError as exc:
        raise ConfigurationError(str(exc)) from None


def parse_lookback(lookback_us, label="--lookback"):
    """Check a lookback (µs) is longer than zero and at most a year."""
    if lookback_us <= 0:
        raise ConfigurationError("%s: the lookback must be longer than zero" % label)
    if lookback_us > MAX_LOOKBACK_US:
        raise ConfigurationError("%s: a lookback of %d days is more than a year; refusing"
                                 % (label, lookback_us // DAY_US))
    return lookback_us
