"""What `make run` installs: the relay's own dependencies, none of the tests', lint's or the bench's.

The Makefile's own rule builds a throw-away venv (``make install-run VENV=...``, the
prerequisite of ``make run``), so a Makefile that went back to installing the extras fails
here. The venv must then still hold everything ``fastrelay run`` imports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# Every fastrelay module, imported in the run venv (``__main__`` would run the command line).
IMPORT_ALL = """
import importlib, pkgutil, fastrelay
for module in pkgutil.walk_packages(fastrelay.__path__, "fastrelay."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
print("imported", fastrelay.__file__)
"""


def distribution_name(requirement: str) -> str:
    """``pytest-asyncio>=0.25`` -> ``pytest-asyncio`` (normalized as pip lists it)."""
    found = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert found, requirement
    return re.sub(r"[-_.]+", "-", found.group()).lower()


def clean_env() -> dict[str, str]:
    """No PYTHONPATH (the worktree must come from the editable install) and no venv of ours."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.mark.timeout(600)
def test_make_run_installs_no_test_dev_or_bench_package(tmp_path: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {distribution_name(r) for r in project["dependencies"]}
    extras = {distribution_name(r) for group in project["optional-dependencies"].values() for r in group}
    assert {"pytest", "playwright", "matplotlib"} <= extras, "the extras no longer name the test tools"

    venv = tmp_path / "venv"
    make = subprocess.run(
        ["make", "-C", str(REPO), f"VENV={venv}", f"PYTHON={sys.executable}", "install-run"],
        capture_output=True,
        text=True,
        timeout=540,
        env=clean_env(),
        check=False,
    )
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    python = venv / "bin" / "python"
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        check=True,
    ).stdout
    installed = {distribution_name(line.split("==")[0]) for line in listed.splitlines() if "==" in line}
    assert "fastrelay" in installed and runtime <= installed, sorted(runtime - installed)
    unwanted = (extras - runtime) & installed
    assert not unwanted, f"test, dev or bench packages in the run venv: {sorted(unwanted)}"

    imported = subprocess.run(
        [str(python), "-c", IMPORT_ALL],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        check=False,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert f"imported {REPO / 'fastrelay' / '__init__.py'}" in imported.stdout
    version = subprocess.run(
        [str(venv / "bin" / "fastrelay"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert version.returncode == 0 and version.stdout.startswith("fastrelay "), version
