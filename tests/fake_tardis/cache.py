"""Bounded on-disk cache of rendered replay responses (chunk-framed, ready to sendfile)."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["ResponseCache", "CachedBody"]


@dataclass(frozen=True)
class CachedBody:
    """A complete chunked response body on disk."""

    path: str
    lines: int
    nbytes: int


class _Writer:
    """Collects a body while it is being sent; nothing is kept unless committed."""

    def __init__(self, cache: "ResponseCache", key: str):
        self._cache, self._key = cache, key
        os.makedirs(cache.directory, exist_ok=True)  # close() may have removed it (stop/start)
        fd, self._tmp = tempfile.mkstemp(dir=cache.directory, suffix=".part")
        self._f = os.fdopen(fd, "wb")
        self.nbytes = 0

    def write(self, data) -> None:
        """Append bytes that were just sent."""
        self._f.write(data)
        self.nbytes += len(data)

    def commit(self, lines: int) -> None:
        """The response completed: keep it under its key."""
        self._f.close()
        self._cache._add(self._key, self._tmp, lines, self.nbytes)

    def abort(self) -> None:
        """The response did not complete: drop what was written."""
        self._f.close()
        try:
            os.unlink(self._tmp)
        except OSError:
            pass


class ResponseCache:
    """LRU of response bodies in a private temp directory, bounded by total bytes.

    Bodies are immutable once committed, so a request being served from a file that
    is evicted meanwhile keeps reading its open descriptor.
    """

    def __init__(self, max_bytes: int = 4 << 30, directory: str | None = None):
        self.max_bytes = max_bytes
        self._own = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="fake-tardis-cache-")
        os.makedirs(self.directory, exist_ok=True)
        self._entries: OrderedDict[str, CachedBody] = OrderedDict()
        self._lock = threading.Lock()
        self._total = 0

    @staticmethod
    def key(*parts) -> str:
        """Stable key from any repr-able parts."""
        return hashlib.sha1(repr(parts).encode()).hexdigest()

    def get(self, key: str) -> CachedBody | None:
        """The cached body for ``key``, marking it recently used."""
        with self._lock:
            body = self._entries.get(key)
            if body is not None:
                self._entries.move_to_end(key)
            return body

    def writer(self, key: str) -> _Writer:
        """Start writing a body for ``key``."""
        return _Writer(self, key)

    def _add(self, key: str, tmp: str, lines: int, nbytes: int) -> None:
        path = os.path.join(self.directory, key)
        os.replace(tmp, path)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._total -= old.nbytes
            self._entries[key] = CachedBody(path, lines, nbytes)
            self._total += nbytes
            while self._total > self.max_bytes and len(self._entries) > 1:
                _, victim = self._entries.popitem(last=False)
                self._total -= victim.nbytes
                try:
                    os.unlink(victim.path)
                except OSError:
                    pass

    def close(self) -> None:
        """Forget everything and remove the directory if it was ours."""
        with self._lock:
            self._entries.clear()
            self._total = 0
        if self._own:
            shutil.rmtree(self.directory, ignore_errors=True)
