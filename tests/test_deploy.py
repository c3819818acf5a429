"""The deployment files: the systemd unit, the environment examples, the hardening they ask for.

The unit is checked for the settings operators rely on and verified with
``systemd-analyze``; the examples must pass ``fastrelay check-config``; and the
relay is run under the kernel's equivalent of ``MemoryDenyWriteExecute=yes``.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fastrelay.config import RELAY_OPTIONS, RelayConfig, env_name
from tests.utils import TIMEOUT, Client, close_raw

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (comments and sections skipped), every value kept."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"not VAR=value: {line!r}"
            values[key] = value
    return values


def test_systemd_unit_has_the_required_settings() -> None:
    """The unit restarts on failure, drains on SIGTERM within TimeoutStopSec, runs hardened."""
    unit = unit_settings((DEPLOY / "fastrelay.service").read_text())
    single = {key: values[-1] for key, values in unit.items()}
    expected = {
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "DynamicUser": "yes",
        "EnvironmentFile": "/etc/fastrelay/fastrelay.env",
        "PrivateUsers": "yes",
        "ProcSubset": "pid",
    }
    for key, value in expected.items():
        assert single.get(key) == value, key
    assert "@system-service" in unit["SystemCallFilter"]
    assert set(single["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert int(single["LimitNOFILE"]) >= 65536
    # Bounded memory and tasks: a leak or a fork bomb stops at the unit.
    assert single["MemoryHigh"].endswith("G") and single["MemoryMax"].endswith("G")
    assert int(single["MemoryHigh"][:-1]) < int(single["MemoryMax"][:-1])
    assert 16 <= int(single["TasksMax"]) <= 256
    assert single["ExecStartPre"].endswith("fastrelay check-config")
    assert single["ExecStart"].endswith("fastrelay serve")
    # systemd must not SIGKILL a relay that is still draining within its own deadline.
    example = env_file(DEPLOY / "fastrelay.env.example")
    shutdown = float(example.get("FASTRELAY_SHUTDOWN_TIMEOUT", RelayConfig().shutdown_timeout))
    assert float(single["TimeoutStopSec"]) >= shutdown + 5


def test_documented_install_puts_the_docs_the_unit_and_the_alerts_point_to(tmp_path: Path) -> None:
    """The install line of docs/operations.md (and of the unit's own comment), run with
    /opt/fastrelay moved to a temporary directory, leaves there every file the unit's
    Documentation= and grafana/alerts.yml's runbook_url name."""
    unit_text = (DEPLOY / "fastrelay.service").read_text()
    operations = (REPO / "docs" / "operations.md").read_text()
    documented = [
        line.split("  #")[0].strip()
        for line in operations.splitlines()
        if line.startswith("install -d /opt/")
    ]
    in_unit = [
        line.lstrip("#").strip()
        for line in unit_text.splitlines()
        if line.lstrip("# ").startswith("install -d /opt/")
    ]
    assert len(documented) == 1 and in_unit == documented, (documented, in_unit)
    prefix = tmp_path / "opt-fastrelay"
    subprocess.run(
        ["bash", "-euc", documented[0].replace("/opt/fastrelay", str(prefix))],
        cwd=REPO,
        check=True,
        timeout=60,
    )
    rules = yaml.safe_load((REPO / "grafana" / "alerts.yml").read_text())["groups"]
    runbooks = [r["annotations"]["runbook_url"] for g in rules for r in g["rules"] if "alert" in r]
    documentation = unit_settings(unit_text)["Documentation"][-1].split()
    assert documentation and runbooks
    missing = []
    for url in [*documentation, *runbooks]:
        assert url.startswith("file:///opt/fastrelay/"), url
        path = prefix / url.removeprefix("file:///opt/fastrelay/").partition("#")[0]
        if not path.is_file():
            missing.append(url)
    assert not missing, f"not installed by {documented[0]!r}: {missing}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a warning (paths pointed at this venv)."""
    fastrelay = Path(sys.executable).with_name("fastrelay")
    text = (DEPLOY / "fastrelay.service").read_text()
    assert "/opt/fastrelay/.venv/bin/fastrelay" in text
    unit = tmp_path / "fastrelay.service"
    unit.write_text(text.replace("/opt/fastrelay/.venv/bin/fastrelay", str(fastrelay)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    # The check can fail: a misspelt key is reported.
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    broken = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert "ProtectHomes" in broken.stderr


def check_config(values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`fastrelay check-config` with these variables and no other FASTRELAY_/MASSIVE_ ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTRELAY_", "MASSIVE_"))}
    return subprocess.run(
        [sys.executable, "-m", "fastrelay", "check-config"],
        env={**env, **values},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_env_example_names_only_real_flags_and_passes_check_config() -> None:
    """Every FASTRELAY_* variable of the example is a flag's twin; the file passes check-config."""
    values = env_file(DEPLOY / "fastrelay.env.example")
    twins = {env_name(option.flag) for option in RELAY_OPTIONS}
    names = {key for key in values if key.startswith("FASTRELAY_")}
    assert names <= twins, sorted(names - twins)
    assert set(values) - names == {"MASSIVE_API_KEY"}
    assert {"FASTRELAY_CLIENT_TOKENS", "FASTRELAY_LOG_FORMAT"} <= names
    assert values["FASTRELAY_TRUSTED_PROXIES"] == "127.0.0.1"
    assert values["FASTRELAY_LOG_FORMAT"] == "json"
    assert "replace" in values["MASSIVE_API_KEY"]  # a placeholder, never a real key
    result = check_config(values)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout and "2 client token(s)" in result.stdout
    # Its placeholders pass, with a warning for each kind of secret (its value never shown).
    warnings = result.stderr.splitlines()
    assert any("warning: the API key" in w and "placeholder" in w for w in warnings), result.stderr
    assert any("warning: a client token" in w and "placeholder" in w for w in warnings), result.stderr
    assert "replace-with" not in result.stderr
    # With real-looking secrets, nothing to warn about.
    real = {
        **values,
        "MASSIVE_API_KEY": "Zq81xLm0T7v2Wd9Pk4Rb",
        "FASTRELAY_CLIENT_TOKENS": "q8Xr2-Lm0vT7s9Wd1Zp4",
    }
    assert check_config(real).stderr == ""


@pytest.mark.parametrize("example", ["ingest.env.example", "edge.env.example"])
def test_scaleout_env_examples_name_real_flags_and_pass_check_config(example: str) -> None:
    """The ingest's and an edge's examples: real flags, their role, check-config passes; the
    key is on the ingest only."""
    values = env_file(DEPLOY / example)
    twins = {env_name(option.flag) for option in RELAY_OPTIONS}
    names = {key for key in values if key.startswith("FASTRELAY_")}
    assert names <= twins, sorted(names - twins)
    role = example.split(".")[0]
    assert values["FASTRELAY_ROLE"] == role
    assert (set(values) - names == {"MASSIVE_API_KEY"}) == (role == "ingest")
    result = check_config(values)
    assert result.returncode == 0, result.stderr
    assert f"configuration OK: {role} {values['FASTRELAY_INSTANCE_NAME']}" in result.stdout


_PR_GET_MDWE = 66


def _mdwe_supported() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_GET_MDWE, 0, 0, 0, 0) >= 0)


# Run in the child before exec: prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), what
# MemoryDenyWriteExecute=yes asks of the kernel; it is inherited and survives exec.
_MDWE_LAUNCHER = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(f"PR_SET_MDWE failed: errno {ctypes.get_errno()}")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("PR_SET_MDWE set but a W+X mapping was allowed")
except PermissionError:
    pass
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


@pytest.mark.skipif(not _mdwe_supported(), reason="no prctl(PR_SET_MDWE) (Linux >= 6.3)")
async def test_relay_runs_with_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes does not break CPython, uvloop, picows, msgspec or orjson: the
    relay (with its embedded simulator) serves data and /metrics while W+X mappings are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASSIVE_API_KEY": "", "FASTRELAY_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _MDWE_LAUNCHER, "-m", "fastrelay", "run",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        client = None
        deadline = time.monotonic() + TIMEOUT * 2
        while client is None:
            assert proc.returncode is None, await proc.stderr.read() if proc.stderr else b""
            try:
                client = await Client.connect(f"ws://127.0.0.1:{port}/stocks")
            except OSError:
                assert time.monotonic() < deadline, "relay never listened"
                await asyncio.sleep(0.05)
        await client.subscribe("T.*")
        await client.wait_events(5, timeout=TIMEOUT * 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"fastrelay_upstream_connected" in await asyncio.wait_for(reader.read(), TIMEOUT)
        await close_raw(writer)
        await client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
