"""gapless: a gapless, up-to-now minute series of crypto market data from tardis-machine.

History comes from tardis-machine's replay API, the newest minutes from its live stream recorded
into a database; both are stitched into one minute series with every minute's source known.
"""
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# heavy imports (pandas) stay lazy: download worker processes import this package too
_LAZY = {
    "get_data_without_gap": (".api", "get_data_without_gap"),
    "GapWarning": (".api", "GapWarning"),
    "follow": (".follower", "follow"),
    "MinuteEvent": (".follower", "MinuteEvent"),
    "CaughtUp": (".follower", "CaughtUp"),
    "Gapless": (".service", "Gapless"),
    "Recorder": (".recorder", "Recorder"),
    "Downloader": (".download", "Downloader"),
    "Storage": (".storage", "Storage"),
    "load_settings": (".config", "load_settings"),
    "GaplessError": (".exceptions", "GaplessError"),
    "UsageError": (".exceptions", "UsageError"),
}
__all__ = ["__version__"] + sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        import importlib
        return getattr(importlib.import_module(module_name, __name__), attribute)
    raise AttributeError("module 'gapless' has no attribute %r" % (name,))
