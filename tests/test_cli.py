"""The command line as operators and service managers use it: a foreground process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.procs import free_port
from fastrelay.cli import _parser, main
from fastrelay.config import RELAY_OPTIONS, ConfigError, RelayConfig, build
from tests.utils import TIMEOUT


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


@contextmanager
def busy_port() -> Iterator[int]:
    """A port another socket listens on, for as long as the block runs."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--port", "{busy}"],
        ["serve", "--api-key", "k", "--port", "0", "--metrics-port", "{busy}"],
        ["edge", "--port", "{busy}"],
        ["sim", "--port", "{busy}"],
    ],
)
def test_a_port_in_use_is_one_error_line_and_exit_1(argv: list[str]) -> None:
    """Bound before the banner and before any upstream or NATS: one ERROR line naming the
    address and the cause, nothing else, exit status 1 (a run-time failure)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTRELAY_", "MASSIVE_"))}
    with busy_port() as port:
        result = subprocess.run(
            [sys.executable, "-m", "fastrelay", *(a.format(busy=port) for a in argv)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert "ERROR" in lines[0] and f"cannot listen on 127.0.0.1:{port}: address already in use" in lines[0]


def read_lines(path: Path, proc: subprocess.Popen[bytes], until: Callable[[list[str]], bool]) -> list[str]:
    """The lines written to ``path`` once ``until`` holds of them (bounded by TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        text = path.read_text()
        lines = text[: text.rfind("\n") + 1].splitlines()  # whole lines only: one may be half written
        if until(lines):
            return lines
        assert proc.poll() is None, "\n".join(lines)
        assert time.monotonic() < deadline, "\n".join(lines)
        time.sleep(0.05)


@contextmanager
def logging_process(
    tmp_path: Path, *args: str, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A fastrelay process whose stderr goes to a file; SIGTERM (then SIGKILL) at the end."""
    log = tmp_path / "stderr.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FASTRELAY_", "MASSIVE_"))}
    with (
        log.open("wb") as err,
        subprocess.Popen(
            [sys.executable, "-m", "fastrelay", *args],
            env={**clean, **env},
            stdout=subprocess.DEVNULL,
            stderr=err,
        ) as proc,
    ):
        try:
            yield proc, log
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def test_run_says_where_it_listens_and_that_the_feed_is_simulated(tmp_path: Path) -> None:
    """One line per address with URLs, the markets, "simulated feed" and no word of an API key;
    a misspelt variable and a placeholder token are warned about at start-up."""
    port, metrics = free_port(), free_port()
    env = {
        "FASTRELAY_PROT": "3002",
        "FASTRELAY_CLIENT_TOKENS": "replace-with-a-long-random-token",
        "NO_COLOR": "1",
    }
    argv = ["run", "--port", str(port), "--metrics-port", str(metrics), "--markets", "stocks,crypto"]
    with logging_process(tmp_path, *argv, env=env) as (proc, log):
        lines = read_lines(log, proc, lambda lines: any("metrics on" in line for line in lines))
    text = "\n".join(lines)
    warning = "WARNING  fastrelay: FASTRELAY_PROT is not a fastrelay setting: ignored"
    assert f"{warning} (did you mean FASTRELAY_PORT?)" in text
    assert "a client token (--client-tokens) looks like a placeholder" in text and "replace-with" not in text
    (what,) = [line for line in lines if "fastrelay 0." in line and "single" in line]
    assert "markets stocks,crypto from the built-in simulated feed" in what and "API key" not in what, what
    (listening,) = [line for line in lines if "listening on" in line]
    for url in (
        f"http://127.0.0.1:{port}/",
        f"ws://127.0.0.1:{port}/stocks",
        f"ws://127.0.0.1:{port}/crypto",
    ):
        assert f" {url}" in listening, (url, listening)
    (metrics_line,) = [line for line in lines if "metrics on" in line]
    assert f"http://127.0.0.1:{metrics}/metrics" in metrics_line
    assert "simulator listening" not in text and "\x1b[" not in text  # the embedded feed's own line is debug


def test_json_lines_carry_markets_clients_and_close_codes(tmp_path: Path) -> None:
    """--log-format json: the facts as keys (start-up URLs, each market's outcome, a client's
    address, path and close code at debug, the periodic summary's counts)."""
    port = free_port()
    argv = ["run", "--port", str(port), "--log-format", "json", "--log-level", "debug"]
    argv += ["--summary-interval", "0.2", "--markets", "stocks"]
    with logging_process(tmp_path, *argv, env={}) as (proc, log):
        entries: list[dict[str, Any]] = []

        def seen(lines: list[str]) -> list[dict[str, Any]]:
            entries[:] = [orjson.loads(line) for line in lines]
            return entries

        read_lines(log, proc, lambda lines: any("markets" in e and "upstreams" in e for e in seen(lines)))
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            client.sendall(
                f"GET /stocks HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            assert client.recv(4096).startswith(b"HTTP/1.1 101")
        read_lines(log, proc, lambda lines: any(e.get("close_code") is not None for e in seen(lines)))
        read_lines(log, proc, lambda lines: any("events_in_per_second" in e for e in seen(lines)))
    listening = next(e for e in entries if e["message"].startswith("listening on"))
    assert (
        f"ws://127.0.0.1:{port}/stocks" in listening["urls"] and listening["address"] == f"127.0.0.1:{port}"
    )
    markets = next(e for e in entries if "upstreams" in e)
    assert markets["markets"] == {"stocks": "live"}
    authenticated = next(e for e in entries if e["message"] == "upstream stocks: authenticated")
    assert authenticated["market"] == "stocks"
    connected = next(e for e in entries if e["message"].startswith("client connected"))
    assert (connected["client"], connected["path"], connected["level"]) == ("127.0.0.1", "/stocks", "debug")
    gone = next(e for e in entries if e["message"].startswith("client disconnected"))
    assert gone["client"] == "127.0.0.1" and gone["reason"] and isinstance(gone["close_code"], int)
    summary = next(e for e in entries if "events_in_per_second" in e)
    assert summary["level"] == "info" and {"clients", "events_out_per_second"} <= set(summary)


def test_sim_says_it_serves_every_market(tmp_path: Path) -> None:
    """`fastrelay sim`: one line for its address, with a URL per market, not only /stocks."""
    port = free_port()
    with logging_process(tmp_path, "sim", "--port", str(port), "--markets", "stocks", env={}) as (proc, log):
        lines = read_lines(log, proc, lambda lines: any("listening on" in line for line in lines))
    (line,) = [line for line in lines if "listening on" in line]
    assert all(f"ws://127.0.0.1:{port}/{market} " in line for market in ("stocks", "crypto", "futures/cme"))
    assert "(every market)" in line and "generating data for stocks" in line, line
