"""The command line as operators and service managers use it: a foreground process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fastrelay.cli import _parser, main
from fastrelay.config import RELAY_OPTIONS, ConfigError, RelayConfig, build
from tests.utils import TIMEOUT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def process(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A fastrelay process, stopped (SIGTERM, then SIGKILL) whatever happens."""
    with subprocess.Popen(
        [sys.executable, "-m", "fastrelay", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listening on {port}")


def test_run_serves_the_simulated_feed_and_exits_cleanly_on_sigterm() -> None:
    """`fastrelay run` without MASSIVE_API_KEY: relay + embedded simulator, ready, exits 0 on SIGTERM."""
    port = free_port()
    env = {"MASSIVE_API_KEY": "", "FASTRELAY_PORT": str(port)}
    with process("run", env=env) as proc:
        wait_listening(port, proc)
        deadline = time.monotonic() + TIMEOUT
        while get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0


def test_serve_without_a_key_is_a_clear_error() -> None:
    """`fastrelay serve` with no key exits 2 and says which variable to set."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASSIVE_API_KEY", "FASTRELAY_API_KEY")}
    result = subprocess.run(
        [sys.executable, "-m", "fastrelay", "serve"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "MASSIVE_API_KEY" in result.stderr


def test_flag_wins_over_environment_twin() -> None:
    """Each flag has a FASTRELAY_ twin; the command line wins."""
    args = _parser().parse_args(["serve", "--port", "4000"])
    env = {"FASTRELAY_PORT": "5000", "FASTRELAY_LINGER": "2.5", "FASTRELAY_LOG_LEVEL": "DEBUG"}
    config = build(RelayConfig(), RELAY_OPTIONS, args, env)
    assert (config.port, config.linger, config.log_level) == (4000, 2.5, "debug")


def test_api_key_from_massive_env_and_never_echoed() -> None:
    """MASSIVE_API_KEY is read; a bad secret value is never printed back."""
    args = _parser().parse_args(["serve"])
    assert build(RelayConfig(), RELAY_OPTIONS, args, {"MASSIVE_API_KEY": "abc"}).api_key == "abc"
    assert "abc" not in repr(build(RelayConfig(), RELAY_OPTIONS, args, {"MASSIVE_API_KEY": "abc"}))


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FASTRELAY_PORT": "-1"}, "FASTRELAY_PORT"),
        ({"FASTRELAY_MARKETS": "stocks,bonds"}, "unknown market(s) bonds"),
        ({"FASTRELAY_LOG_LEVEL": "loud"}, "debug, info, warning, error"),
        ({"FASTRELAY_FLUSH_INTERVAL": "soon"}, "FASTRELAY_FLUSH_INTERVAL"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], fragment: str) -> None:
    """A bad value raises ConfigError naming the flag or variable and the problem."""
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        build(RelayConfig(), RELAY_OPTIONS, _parser().parse_args(["serve"]), env)


def test_empty_fastrelay_api_key_does_not_hide_massive_api_key() -> None:
    """A blank FASTRELAY_API_KEY (an env file line left empty) falls back to MASSIVE_API_KEY."""
    args = _parser().parse_args(["serve"])
    env = {"FASTRELAY_API_KEY": "", "MASSIVE_API_KEY": "abc"}
    assert build(RelayConfig(), RELAY_OPTIONS, args, env).api_key == "abc"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["serve", "--keep-channels", "AAPL"], "--keep-channels: invalid channel 'AAPL'"),
        (["serve", "--keep-channels", "crypto:XT.X:BTC-USD"], "not in --markets"),
        (["edge", "--nats", "http://x:4222"], "expected nats://HOST:PORT"),
        (["edge", "--nats", "nats://u:hunter2@x:1", "--nats-prefix", "a.*"], "invalid NATS subject prefix"),
        (["edge", "--heartbeat-interval", "3", "--peer-timeout", "5"], "at least twice --heartbeat-interval"),
        (["edge", "--role", "ingest"], "contradicts the command 'edge'"),
    ],
)
def test_bad_combinations_are_refused_with_the_flag_named(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "hunter2" not in err, err


def test_edges_need_no_key_and_check_config_says_their_role(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--role", "edge", "--nats", "nats://u:hunter2@h:4222"]) == 0
    out = capsys.readouterr().out
    assert "edge " in out and "nats://***@h:4222" in out and "hunter2" not in out


def test_check_config_shows_each_markets_host_and_never_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    """Delayed stocks plus crypto on another account (docs/operations.md, "Readiness")."""
    argv = ["check-config", "--api-key", "stocks-secret-1", "--markets", "stocks,crypto"]
    argv += ["--upstream-for", "stocks=wss://delayed.massive.com", "--api-key-for", "crypto=crypto-secret-2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "stocks from wss://delayed.massive.com" in out, out
    assert "crypto from wss://socket.massive.com" in out and "crypto: its own" in out, out
    assert "secret" not in out, out
