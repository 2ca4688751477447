"""Packaging: ``pip install .`` gives the ``gapless`` package and command; the pins match requirements.txt."""
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import gapless

ROOT = Path(__file__).resolve().parent.parent


def requirement_lines(section):
    """Lines of one ``# <section>`` block of requirements.txt."""
    lines, current = [], None
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith("#"):
            current = line[1:].split()[0] if line[1:].split() else None
            continue
        if line.strip() and current == section:
            lines.append(line.strip())
    return lines


def test_pyproject_pins_are_the_runtime_pins_of_requirements_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == requirement_lines("runtime")
    assert project["dynamic"] == ["version"]
    assert project["scripts"] == {"gapless": "gapless.cli:main_entry"}
    assert requirement_lines("tests")  # test-only pins stay in requirements.txt only


def test_pip_install_gives_the_package_and_the_command(tmp_path):
    # build from a copy, so the checkout gets no build/ or egg-info
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "run.py"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "gapless", source / "gapless", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # offline: the new venv reaches this interpreter's site-packages (pip, the setuptools build backend and the
    # runtime dependencies) through a .pth file; the package itself goes into the new venv
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                              "--quiet", str(source)], capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = tmp_path / "elsewhere"  # not the checkout: the import must come from the installed package
    elsewhere.mkdir()
    version = subprocess.run([str(python), "-c", "import gapless, sys; print(gapless.__version__, gapless.__file__)"],
                             cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    printed_version, location = version.stdout.split()
    assert printed_version == gapless.__version__
    assert Path(location).is_relative_to(venv)
    command = venv / "bin" / "gapless"
    helped = subprocess.run([str(command), "--help"], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    for name in ("download", "series", "serve", "status", "gaps", "plot"):
        assert name in helped.stdout
    # the same command as python run.py: a bad input is exit 2 with a one-line error
    bad = subprocess.run([str(command), "plot", "--out", "x.jpg"], cwd=elsewhere, capture_output=True, text=True,
                         timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("GAPLESS_")})
    assert bad.returncode == 2 and bad.stderr.startswith("gapless: error: --out 'x.jpg': must end in .png")
    # an installed package has no checkout: settings come from ./config/gapless.env of the working directory
    (elsewhere / "config").mkdir()
    (elsewhere / "config" / "gapless.env").write_text("GAPLESS_DATABASE_URL=sqlite:///from-config.db\n")
    status = subprocess.run([str(command), "status"], cwd=elsewhere, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith("GAPLESS_")})
    assert status.returncode == 2 and "from-config.db does not exist" in status.stderr, status.stderr
