"""The gapless service and CLI as real processes (``python run.py ...``) against a fake tardis-machine.

Copied and generalised from tests/test_service.py (service_env / start_service / run_status) so the
fault, bad-input and security suites can share them without importing another test module.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ("BTC-PERPETUAL", "ETH-PERPETUAL")
TYPES = ("quote_1m", "trade_bar_1m", "trade")


def service_env(tardis, database_url, symbols=SYMBOLS, data_types=TYPES, **extra):
    """GAPLESS_* environment for a service on the double's clock (speed included), nothing inherited."""
    clock = tardis.clock
    start = clock.now_us() / 1e6
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPLESS_")}
    env.update({
        "GAPLESS_TARDIS_URL": tardis.http_url, "GAPLESS_TARDIS_WS_URL": tardis.ws_url,
        "GAPLESS_DATABASE_URL": database_url, "GAPLESS_EXCHANGE": "deribit",
        "GAPLESS_SYMBOLS": ",".join(symbols), "GAPLESS_DATA_TYPES": ",".join(data_types),
        "GAPLESS_LOOKBACK": "10m", "GAPLESS_HISTORY_DELAY": "10s", "GAPLESS_REBUILD_INTERVAL": "1s",
        "GAPLESS_WORKERS": "0", "GAPLESS_TEST_CLOCK": "%f,%f,%f" % (start, time.time(), clock.speed),
        "PYTHONUNBUFFERED": "1",
    })
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    for key in [k for k, v in extra.items() if v is None]:
        env.pop(key, None)
    return env


def start_service(tardis, database_url, cwd, args=(), argv=None, **extra):
    """Start ``python run.py [args]`` (the service); its stdout+stderr go to ``process.log_path``."""
    log = open(Path(cwd) / ("service-%d.log" % time.monotonic_ns()), "w")
    command = argv if argv is not None else [sys.executable, str(ROOT / "run.py"), *args]
    process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                               env=service_env(tardis, database_url, **extra))
    log.close()
    process.log_path = log.name
    return process


def service_log(process):
    """Everything the service printed so far."""
    return Path(process.log_path).read_text(errors="replace")


def stop_service(process, timeout=15.0):
    """SIGTERM, wait; SIGKILL if it does not stop. Returns (exit status, seconds it took)."""
    began = time.monotonic()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        code = None
    return code, time.monotonic() - began


def kill_service(process):
    """SIGKILL and reap."""
    if process.poll() is None:
        process.kill()
    process.wait(10)


def run_cli(cwd, *args, env=None, timeout=90):
    """``python run.py args...`` to completion; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def run_status(tardis, database_url, cwd, command="status", must_work=True, **extra):
    """``run.py status --json`` (or gaps) with the service's settings; the parsed document (None if it failed)."""
    result = run_cli(cwd, command, "--json", env=service_env(tardis, database_url, **extra))
    if not must_work and result.returncode != 0:
        return None
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def error_lines(text):
    """The ``gapless: error: ...`` lines of some output."""
    return [line for line in text.splitlines() if line.startswith("gapless: error")]
