"""Shared fixtures: the fake tardis-machine, clocks, and databases (SQLite files and a real PostgreSQL)."""
import logging
import os
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from glob import glob
from urllib.parse import quote

import pytest

from gapless.storage import Storage
from tests.fake_tardis import FakeClock, FakeTardisMachine, MarketConfig

PG_HOST, PG_PORT, PG_USER, PG_ADMIN_DB = "127.0.0.1", 5432, "postgres", "test"


def pytest_collection_modifyitems(config, items):
    """The fast lane (``pytest -m "not slow"``) runs on SQLite: every test that needs PostgreSQL (the
    ``postgresql`` variant of ``database_url``, or ``pg_database`` itself) is slow. Service processes, fault
    loops and other long tests carry ``@pytest.mark.slow`` themselves."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("database_url") == "postgresql" or "pg_database" in item.fixturenames:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def clock():
    """The double's clock, twenty minutes into a UTC day (so replays from 00:00 stay short)."""
    return FakeClock(start=datetime(2026, 11, 25, 0, 20, tzinfo=timezone.utc))


@pytest.fixture
def tardis(clock):
    """A running fake tardis-machine with a 5 s availability delay."""
    with FakeTardisMachine(clock=clock, market=MarketConfig(book_rate=2.0, trade_rate=1.0),
                           availability_delay=timedelta(seconds=5)) as machine:
        yield machine


# -- PostgreSQL ------------------------------------------------------------------------------------
def _pg_connect(dbname):
    import psycopg
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=3,
                           autocommit=True)


def ensure_postgres():
    """Make sure the local PostgreSQL answers; start it if it does not; fail (never skip) if it cannot."""
    try:
        _pg_connect(PG_ADMIN_DB).close()
        return
    except Exception:
        pass
    versions = sorted(p.rsplit("/", 1)[-1] for p in glob("/etc/postgresql/*"))
    if versions:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
                       capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    last = None
    while time.monotonic() < deadline:
        try:
            _pg_connect(PG_ADMIN_DB).close()
            return
        except Exception as exc:
            last = exc
            time.sleep(0.5)
    pytest.fail("PostgreSQL is not running on %s:%d and could not be started: %s" % (PG_HOST, PG_PORT, last))


@pytest.fixture(scope="session")
def pg_database():
    """A database of its own for this test run (dropped afterwards), as a URL."""
    ensure_postgres()
    name = "gapless_test_%s" % uuid.uuid4().hex[:12]
    with _pg_connect(PG_ADMIN_DB) as admin:
        admin.execute('CREATE DATABASE "%s"' % name)
    try:
        yield "postgresql://%s@%s:%d/%s" % (PG_USER, PG_HOST, PG_PORT, name)
    finally:
        with _pg_connect(PG_ADMIN_DB) as admin:
            admin.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)


def pg_schema_url(pg_database):
    """A fresh schema in the run's database, and the URL that uses it."""
    schema = "t_%s" % uuid.uuid4().hex[:12]
    with _pg_connect(pg_database.rsplit("/", 1)[1]) as connection:
        connection.execute('CREATE SCHEMA "%s"' % schema)
    return schema, "%s?options=%s" % (pg_database, quote("-csearch_path=%s" % schema, safe=""))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A database URL for each backend: a new SQLite file, or a new schema in the run's PostgreSQL database."""
    if request.param == "sqlite":
        yield "sqlite:///%s" % (tmp_path / "gapless.db")
        return
    pg_database = request.getfixturevalue("pg_database")
    schema, url = pg_schema_url(pg_database)
    try:
        yield url
    finally:
        with _pg_connect(pg_database.rsplit("/", 1)[1]) as connection:
            connection.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % schema)


@pytest.fixture
def store(database_url):
    """A Storage on each backend."""
    storage = Storage(database_url)
    try:
        yield storage
    finally:
        storage.close()


@pytest.fixture
def isolated_cli(monkeypatch, tmp_path):
    """For command-line tests: no GAPLESS_* from the developer's environment, a working directory without
    a .env, and the root logger's handlers and level restored afterwards (``main`` reconfigures them)."""
    for key in list(os.environ):
        if key.startswith("GAPLESS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
