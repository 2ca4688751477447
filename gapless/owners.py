"""Who wrote an open live segment, and whether that process is gone (so its segment can be closed)."""
import os
import socket

OWNER = "%s:%d" % (socket.gethostname()[:100], os.getpid())


def owner_is_gone(owner):
    """True when ``owner`` ("host:pid") is a process of this host that no longer runs."""
    if not owner or ":" not in owner:
        return False
    host, pid = owner.rsplit(":", 1)
    if host != socket.gethostname()[:100] or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # a pid can be reused: a zombie or another program counts as gone only if it is not a python gapless
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as handle:
            return b"python" not in handle.read()
    except OSError:
        return False
