"""Shared pieces of the benchmarks: the fake tardis-machine process and a fresh database."""
import json
import os
import subprocess
import sys
import tempfile
from urllib.parse import quote

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def start_double(*arguments):
    """Start ``python -m tests.fake_tardis`` with extra arguments; returns (process, {"http_url", "ws_url"})."""
    process = subprocess.Popen([sys.executable, "-m", "tests.fake_tardis", *arguments], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    return process, json.loads(process.stdout.readline())


def fresh_database(kind, label, pg_url=PG_URL):
    """A URL of a new, empty database: an SQLite file in a temp directory, or a new PostgreSQL schema."""
    if kind == "sqlite":
        return "sqlite:///%s" % os.path.join(tempfile.mkdtemp(prefix="gapless-bench-"), label + ".db")
    import psycopg
    schema = "bench_%s_%d" % (label, os.getpid())
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % schema)
        connection.execute('CREATE SCHEMA "%s"' % schema)
    return "%s?options=%s" % (pg_url, quote("-csearch_path=%s" % schema, safe=""))


def watch_tree(pid, seconds):
    """Watch a process and its children for ``seconds``: ``(cpu seconds, wall seconds, peak RSS MB sampled every
    second, VmHWM MB of the largest)``."""
    import time

    import psutil
    process = psutil.Process(pid)

    def tree():
        return [process] + process.children(recursive=True)

    cpu0 = sum(sum(p.cpu_times()[:2]) for p in tree())
    wall0, peak = time.monotonic(), 0
    while time.monotonic() - wall0 < seconds:
        peak = max(peak, sum(p.memory_info().rss for p in tree()))
        time.sleep(1)
    cpu = sum(sum(p.cpu_times()[:2]) for p in tree()) - cpu0
    return cpu, time.monotonic() - wall0, peak / 2 ** 20, max(hwm_mb(p.pid) for p in tree())


def hwm_mb(pid):
    """The high-water mark of a process's own memory map (VmHWM), MB."""
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0
