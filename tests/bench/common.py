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
