"""systemd notifications (``Type=notify``) over the ``NOTIFY_SOCKET`` datagram socket, standard library only.

:class:`Notifier` sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1`` and ``STOPPING=1`` the way
``sd_notify(3)`` does: one datagram per message to the unix socket named by ``NOTIFY_SOCKET`` (a path,
or an abstract name written with a leading ``@``). Without ``NOTIFY_SOCKET`` (not under systemd, or a
unit that is not ``Type=notify``) every method does nothing. ``WATCHDOG_USEC`` (set by systemd from
``WatchdogSec=``) gives the watchdog period; :meth:`Notifier.watchdog` sends at most once per half of it.
A notification that cannot be sent is logged once and never raises: the service must not die because
the service manager went away.
"""
import logging
import os
import socket
import threading
import time

log = logging.getLogger(__name__)


class Notifier:
    """Talks to the service manager through ``NOTIFY_SOCKET`` (a no-op without it).

    ``environ`` defaults to ``os.environ``. ``watchdog_interval`` is the number of seconds between two
    ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or None when the watchdog is off (then :meth:`watchdog`
    sends nothing).
    """

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        self.address = _address(environ.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(environ)
        self._socket = None
        self._lock = threading.Lock()
        self._last_watchdog = None
        self._failed = False

    @property
    def enabled(self):
        """True when there is a service manager to notify."""
        return self.address is not None

    def ready(self, status=None):
        """``READY=1`` (and a first ``STATUS=``): start-up is complete."""
        return self.send("READY=1" + ("\nSTATUS=%s" % _one_line(status) if status else ""))

    def status(self, text):
        """``STATUS=<one line>``, shown by ``systemctl status``."""
        return self.send("STATUS=%s" % _one_line(text))

    def watchdog(self, force=False):
        """``WATCHDOG=1`` if the watchdog is on and half its period passed since the last one."""
        if self.watchdog_interval is None or not self.enabled:
            return False
        now = time.monotonic()
        if not force and self._last_watchdog is not None and now - self._last_watchdog < self.watchdog_interval:
            return False
        self._last_watchdog = now
        return self.send("WATCHDOG=1")

    def stopping(self, status=None):
        """``STOPPING=1``: a graceful stop began."""
        return self.send("STOPPING=1" + ("\nSTATUS=%s" % _one_line(status) if status else ""))

    def send(self, message):
        """Send one raw notification; True if it was sent."""
        if not self.enabled:
            return False
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.sendto(message.encode("utf-8", "replace"), self.address)
                return True
            except OSError as exc:
                if not self._failed:  # once: a vanished service manager must not flood the log
                    log.warning("cannot notify the service manager at %s: %s", _shown(self.address), exc)
                    self._failed = True
                return False

    def close(self):
        """Close the socket (a later :meth:`send` opens a new one)."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _address(text):
    if not text:
        return None
    if text.startswith("@"):
        return "\0" + text[1:]  # an abstract socket name
    if text.startswith("/"):
        return text
    log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name; not notifying", text)
    return None


def _watchdog_interval(environ):
    text = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not text:
        return None
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process (sd_watchdog_enabled does the same)
    try:
        usec = int(text)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; watchdog off", text)
        return None
    return usec / 2e6 if usec > 0 else None


def _one_line(text):
    return " ".join(str(text).split())[:400]


def _shown(address):
    return "@" + address[1:] if address.startswith("\0") else address
