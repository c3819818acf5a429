"""NATS security of the scale-out roles (docs/scaleout.md, "Security: TLS, NKeys, credentials").

The settings are checked at start-up (``natsauth.check`` through check-config) with errors
that name the flag and the path, never a file's contents. Then, against a real nats-server on
127.0.0.1, an ingest and an edge run as child processes on the simulator at
``--log-level debug --log-format json``: over TLS (a trustme CA; the server verifying client
certificates in the second case), with an NKey user, with a ``.creds`` file (operator mode,
the JWTs made here), and under the per-role permissions that the docs' three-machine config
gives. Each time a client receives data through the edge, a role missing the key piece is
refused and says why in its log, and no secret (seed, private key) shows in any log,
/metrics, /readyz or check-config output.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
import trustme

from fastrelay.config import ConfigError, RelayConfig
from fastrelay.scaleout import natsauth
from fastrelay.scaleout.validation import validate_scaleout
from fastrelay.sim import Simulator
from tests.conftest import sim_config
from tests.natskeys import NKey, Operator
from tests.natsserver import documented_authorization, running_nats
from tests.test_secrets import assert_secret_free
from tests.utils import TIMEOUT, Client, wait_until
from tests.webtools import REPO, RelayProcess, free_port, http_request, stopping

COMMON = ("--log-level", "debug", "--log-format", "json", "--heartbeat-interval", "0.2")


class Certificates:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    def __init__(self, where: Path) -> None:
        where.mkdir(exist_ok=True)
        self.authority = trustme.CA()
        server = self.authority.issue_cert("127.0.0.1")
        client = self.authority.issue_cert("fastrelay-role")
        self.ca = where / "ca.pem"
        self.authority.cert_pem.write_to_path(str(self.ca))
        self.server_cert, self.server_key = where / "server.pem", where / "server-key.pem"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        self.client_cert, self.client_key = where / "client.pem", where / "client-key.pem"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        self.secrets = [pem_body(client.private_key_pem.bytes()), pem_body(server.private_key_pem.bytes())]

    def server_flags(self, verify_clients: bool) -> list[str]:
        flags = ["--tls", "--tlscert", str(self.server_cert), "--tlskey", str(self.server_key)]
        if verify_clients:
            flags += ["--tlsverify", "--tlscacert", str(self.ca)]
        return flags

    @property
    def client_flags(self) -> list[str]:
        return ["--nats-tls-cert", str(self.client_cert), "--nats-tls-key", str(self.client_key)]


def pem_body(pem: bytes) -> str:
    """The base64 of a PEM block: the secret part of a private key file."""
    return "".join(line for line in pem.decode().splitlines() if not line.startswith("-----"))


def config(**overrides: Any) -> RelayConfig:
    return replace(RelayConfig(), role="edge", **overrides)


# --- the settings, checked at start-up ---------------------------------------------------------


def test_no_settings_connect_as_before() -> None:
    assert natsauth.connect_options(config()) == {}
    assert natsauth.summary(config()) == "no TLS"
    validate_scaleout(config())


def test_options_reach_nats_connect(tmp_path: Path) -> None:
    """Each flag becomes its nats.connect argument: a TLS context trusting the CA (only it) and
    holding the client certificate, the seed or creds file by path (nats-py reads it to sign)."""
    certs = Certificates(tmp_path)
    seed = NKey.new().write_seed(tmp_path / "user.nk")
    settings = config(
        nats="tls://127.0.0.1:4222,tls://127.0.0.1:4223",
        nats_tls_ca=str(certs.ca),
        nats_tls_cert=str(certs.client_cert),
        nats_tls_key=str(certs.client_key),
        nats_nkey_seed=str(seed),
    )
    validate_scaleout(settings)
    options = natsauth.connect_options(settings)
    assert set(options) == {"tls", "nkeys_seed"} and options["nkeys_seed"] == str(seed)
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # this CA only, not the system store
    operator = Operator.new()
    creds = operator.creds(NKey.new(), "edge", tmp_path / "edge.creds")
    options = natsauth.connect_options(config(nats_creds=str(creds)))
    assert options == {"user_credentials": str(creds)}
    # A tls:// server alone: TLS with the system's CAs.
    options = natsauth.connect_options(config(nats="tls://127.0.0.1:4222"))
    assert isinstance(options["tls"], ssl.SSLContext) and options["tls"].verify_mode == ssl.CERT_REQUIRED
    summary = natsauth.summary(settings)
    assert summary == f"TLS (CA {certs.ca}, client cert {certs.client_cert}), NKey seed {seed}"


def test_bad_settings_are_refused_at_start_naming_the_flag_never_the_contents(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    user = NKey.new()
    seed = user.write_seed(tmp_path / "user.nk")
    account_seed = NKey.new(nkeys.PREFIX_BYTE_ACCOUNT).write_seed(tmp_path / "account.nk")
    unreadable = tmp_path / "unreadable.nk"
    unreadable.write_text(user.seed)
    unreadable.chmod(0o000)
    tls = "tls://127.0.0.1:4222"
    other = trustme.CA().issue_cert("127.0.0.1")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    missing = str(tmp_path / "missing.pem")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"nats_tls_ca": missing, "nats": tls}, f"--nats-tls-ca={missing!r}: no such file"),
        ({"nats_tls_ca": str(tmp_path), "nats": tls}, "--nats-tls-ca=.*: a directory"),
        ({"nats_tls_ca": str(seed), "nats": tls}, "--nats-tls-ca=.*: no PEM CA certificate"),
        ({"nats_tls_cert": str(certs.client_cert), "nats": tls}, "--nats-tls-cert needs --nats-tls-key"),
        ({"nats_tls_key": str(certs.client_key), "nats": tls}, "--nats-tls-key needs --nats-tls-cert"),
        (
            {"nats_tls_cert": str(certs.client_cert), "nats_tls_key": str(other_key), "nats": tls},
            "--nats-tls-cert=.* with --nats-tls-key=.*: not a PEM certificate and its private key",
        ),
        (
            {"nats_tls_cert": str(certs.client_cert), "nats_tls_key": str(seed), "nats": tls},
            "--nats-tls-cert=.* with --nats-tls-key=.*: not a PEM certificate",
        ),
        ({"nats_tls_ca": str(certs.ca)}, "with --nats-tls-\\* every server must be tls://"),
        ({"nats_nkey_seed": missing}, "--nats-nkey-seed=.*: no such file"),
        ({"nats_nkey_seed": str(certs.client_key)}, "--nats-nkey-seed=.*: no NKey seed in it"),
        ({"nats_nkey_seed": str(account_seed)}, "--nats-nkey-seed=.*: an NKey seed, but not a user's"),
        ({"nats_creds": str(seed)}, "--nats-creds=.*: not a .creds file"),
        ({"nats_creds": str(seed), "nats_nkey_seed": str(seed)}, "--nats-creds and --nats-nkey-seed"),
    ]
    if os.geteuid() != 0:  # root reads any file
        cases.append(({"nats_nkey_seed": str(unreadable)}, "--nats-nkey-seed=.*: not readable"))
    for overrides, expected in cases:
        with pytest.raises(ConfigError) as raised:
            validate_scaleout(config(**overrides))
        message = str(raised.value)
        assert re.search(expected, message), (overrides, message)
        assert_secret_free(message, message.encode(), user.seed, *certs.secrets)


def check_config(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastrelay", "check-config", "--role", "edge", *flags],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 6,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_config_shows_paths_never_secrets(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    user = NKey.new()
    seed = user.write_seed(tmp_path / "user.nk")
    tls = ["--nats", "tls://127.0.0.1:4222", "--nats-tls-ca", str(certs.ca), *certs.client_flags]
    good = check_config(*tls, "--nats-nkey-seed", str(seed))
    summary = f"TLS (CA {certs.ca}, client cert {certs.client_cert}), NKey seed {seed}"
    assert good.returncode == 0 and summary in good.stdout, good
    bad = check_config(*tls, "--nats-nkey-seed", str(certs.client_key))  # the key as a seed
    assert bad.returncode == 2 and f"--nats-nkey-seed={str(certs.client_key)!r}" in bad.stderr
    # The environment twins, as an env file under systemd gives them.
    twins = {
        "FASTRELAY_NATS": "tls://127.0.0.1:4222",
        "FASTRELAY_NATS_TLS_CA": str(certs.ca),
        "FASTRELAY_NATS_TLS_CERT": str(certs.client_cert),
        "FASTRELAY_NATS_TLS_KEY": str(certs.client_key),
        "FASTRELAY_NATS_NKEY_SEED": str(seed),
    }
    from_env = check_config(env=twins)
    assert from_env.returncode == 0 and summary in from_env.stdout, from_env
    creds = Operator.new().creds(user, "edge", tmp_path / "edge.creds")
    both = check_config(env={**twins, "FASTRELAY_NATS_CREDS": str(creds)})
    assert both.returncode == 2 and "--nats-creds and --nats-nkey-seed" in both.stderr
    for result in (good, bad, from_env, both):
        output = (result.stdout + result.stderr).encode()
        assert_secret_free("check-config", output, user.seed, *certs.secrets)


# --- real servers ------------------------------------------------------------------------------


def roles(tmp_path: Path, sim: Simulator, *flags: str) -> tuple[RelayProcess, RelayProcess]:
    """An ingest on the simulator and an edge, both with ``flags`` (logging at debug, in JSON)."""
    ingest = RelayProcess(
        free_port(), sim.base_url, tmp_path / "ingest.log", *COMMON, *flags, command="ingest"
    )
    return ingest, edge_process(tmp_path, "edge", *flags)


def edge_process(tmp_path: Path, name: str, *flags: str) -> RelayProcess:
    return RelayProcess(free_port(), "", tmp_path / f"{name}.log", *COMMON, *flags, command="edge")


async def data_reaches_a_client(edge: RelayProcess) -> Client:
    """A client of the edge gets trades and quotes (through the ingest, NATS and the edge)."""
    client = await Client.connect(f"ws://127.0.0.1:{edge.port}/stocks")
    await client.subscribe("T.AAPL,Q.MSFT")
    await client.wait_events(10)
    return client


async def refused(process: RelayProcess, *evidence: str, timeout: float = TIMEOUT * 2) -> None:
    """``process`` starts but never connects to NATS: its log says why (one of ``evidence``),
    its /readyz is 503 for NATS."""
    await process.start(ready=False)
    log = process.log

    def said() -> bool:
        text = log.read_text(errors="replace")
        return any(e in text for e in evidence)

    await wait_until(said, timeout=timeout, what=f"{log.name} to log one of {evidence}")
    readyz = await http_request(process.port, "/readyz")
    assert readyz.status == 503 and b"not connected" in readyz.body, readyz


async def shown(*processes: RelayProcess) -> list[tuple[str, bytes]]:
    """Everything the roles showed: /metrics, /readyz, /healthz (call while running)."""
    return [
        (f"{process.log.name} {path}", (await http_request(process.port, path)).body)
        for process in processes
        for path in ("/metrics", "/readyz", "/healthz")
    ]


def logs(*processes: RelayProcess) -> list[tuple[str, bytes]]:
    return [(process.log.name, process.log.read_bytes()) for process in processes]


@pytest.mark.parametrize("verify_clients", [False, True], ids=["server-tls", "mutual-tls"])
async def test_tls_end_to_end_and_a_role_that_cannot_verify_is_refused(
    tmp_path: Path, verify_clients: bool
) -> None:
    """nats-server requires TLS (and, mutual, a client certificate of the CA): the roles with
    --nats-tls-ca (and the client certificate) carry data to a client; an edge without the CA
    (server TLS) or without a client certificate (mutual) never connects and logs why."""
    certs = Certificates(tmp_path / "certs")
    async with (
        running_nats(tmp_path / "nats.log", *certs.server_flags(verify_clients), scheme="tls") as server,
        Simulator(sim_config()) as sim,
    ):
        flags = ["--nats", server.url, "--nats-tls-ca", str(certs.ca)]
        if verify_clients:
            flags += certs.client_flags
            # The first failure reads "Connection lost"; OpenSSL's alert comes with the next
            # report, 10 s later (the link's log throttle).
            bad_flags = ["--nats", server.url, "--nats-tls-ca", str(certs.ca)]
            evidence, wait = ("TLSV13_ALERT_CERTIFICATE_REQUIRED",), 10.0 + TIMEOUT * 2
        else:
            bad_flags, evidence = ["--nats", server.url], ("CERTIFICATE_VERIFY_FAILED",)
            wait = TIMEOUT * 2
        ingest, edge = roles(tmp_path, sim, *flags)
        locked_out = edge_process(tmp_path, "locked-out", *bad_flags)
        with stopping(ingest, edge, locked_out):
            await ingest.start()
            await edge.start()
            client = await data_reaches_a_client(edge)
            await refused(locked_out, *evidence, timeout=wait)
            seen = await shown(ingest, edge, locked_out)
            await client.close()
        assert "TLS (CA" in ingest.log.read_text() and "TLS (CA" in edge.log.read_text()
        if verify_clients:
            assert "TLS handshake error: tls: client didn't provide a certificate" in server.log_text()
    for what, data in [*seen, *logs(ingest, edge, locked_out)]:
        assert_secret_free(what, data, *certs.secrets)


async def test_nkey_user_connects_and_a_role_without_the_seed_is_refused(tmp_path: Path) -> None:
    """The server knows one user by its NKey's public key: roles with --nats-nkey-seed carry data;
    an edge without a seed, and one with another user's seed, are refused (Authorization
    Violation in their logs). The seeds never show."""
    user, stranger = NKey.new(), NKey.new()
    seed = user.write_seed(tmp_path / "fastrelay.nk")
    strangers_seed = stranger.write_seed(tmp_path / "stranger.nk")
    server_config = f"authorization {{\n  users = [ {{ nkey: {user.public} }} ]\n}}\n"
    async with (
        running_nats(tmp_path / "nats.log", config=server_config) as server,
        Simulator(sim_config()) as sim,
    ):
        ingest, edge = roles(tmp_path, sim, "--nats", server.url, "--nats-nkey-seed", str(seed))
        anonymous = edge_process(tmp_path, "anonymous", "--nats", server.url)
        impostor = edge_process(
            tmp_path, "impostor", "--nats", server.url, "--nats-nkey-seed", str(strangers_seed)
        )
        with stopping(ingest, edge, anonymous, impostor):
            await ingest.start()
            await edge.start()
            client = await data_reaches_a_client(edge)
            await refused(anonymous, "Authorization Violation")
            await refused(impostor, "Authorization Violation")
            seen = await shown(ingest, edge, anonymous, impostor)
            await client.close()
        assert f"NKey seed {seed}" in ingest.log.read_text()
    for what, data in [*seen, *logs(ingest, edge, anonymous, impostor)]:
        assert_secret_free(what, data, user.seed, stranger.seed)


async def test_creds_file_connects_in_operator_mode_and_a_foreign_one_is_refused(tmp_path: Path) -> None:
    """Operator mode (JWTs made here, no nsc): roles with --nats-creds carry data (the ingest's
    JetStream lease included: the account has JetStream); a .creds of a user the server's
    operator never signed is refused. The creds' seeds never show."""
    operator, foreign = Operator.new(), Operator.new()
    user, outsider = NKey.new(), NKey.new()
    creds = operator.creds(user, "fastrelay", tmp_path / "fastrelay.creds")
    foreign_creds = foreign.creds(outsider, "outsider", tmp_path / "outsider.creds")
    async with (
        running_nats(tmp_path / "nats.log", config=operator.server_config()) as server,
        Simulator(sim_config()) as sim,
    ):
        ingest, edge = roles(tmp_path, sim, "--nats", server.url, "--nats-creds", str(creds))
        outsider_edge = edge_process(
            tmp_path, "outsider", "--nats", server.url, "--nats-creds", str(foreign_creds)
        )
        with stopping(ingest, edge, outsider_edge):
            await ingest.start()
            await edge.start()
            client = await data_reaches_a_client(edge)
            await refused(outsider_edge, "Authorization Violation")
            seen = await shown(ingest, edge, outsider_edge)
            await client.close()
        assert f"creds {creds}" in edge.log.read_text()
    for what, data in [*seen, *logs(ingest, edge, outsider_edge)]:
        assert_secret_free(what, data, user.seed, outsider.seed)


async def metric(process: RelayProcess, sample: str) -> float:
    """The value of one sample (``name{labels}`` as rendered) of ``process``'s /metrics."""
    text = (await http_request(process.port, "/metrics")).body.decode()
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{sample} not in /metrics"
    return float(found.group(1))


async def test_documented_permissions_carry_the_roles_and_keep_each_to_its_subjects(tmp_path: Path) -> None:
    """The per-role permissions of docs/scaleout.md ("A three-machine deployment"), cut from
    its config as written: two ingests (a leader that resigns, a standby that takes over) and
    two edges under the two users carry data, snapshot requests and the lease without a single
    permissions violation; the edge's user cannot publish market data, write the lease or
    read the edges' interest, and the ingest's cannot publish interest."""
    ingest_key, edge_key = NKey.new(), NKey.new()
    ingest_seed = ingest_key.write_seed(tmp_path / "ingest.nk")
    edge_seed = edge_key.write_seed(tmp_path / "edge.nk")
    authorization = documented_authorization(ingest_key.public, edge_key.public)
    async with (
        running_nats(tmp_path / "nats.log", config=authorization) as server,
        Simulator(sim_config()) as sim,
    ):
        fast = ["--nats", server.url, "--metrics-interval", "0.1", "--lease-ttl", "1"]
        ingest_flags = [*COMMON, *fast, "--nats-nkey-seed", str(ingest_seed)]
        leader = RelayProcess(free_port(), sim.base_url, tmp_path / "a.log", *ingest_flags, command="ingest")
        standby = RelayProcess(free_port(), sim.base_url, tmp_path / "b.log", *ingest_flags, command="ingest")
        edge = edge_process(tmp_path, "edge", *fast, "--nats-nkey-seed", str(edge_seed))
        second_edge = edge_process(tmp_path, "edge-2", *fast, "--nats-nkey-seed", str(edge_seed))
        with stopping(leader, standby, edge, second_edge):
            await leader.start()
            await standby.start()  # a standby is ready once on NATS, watching the lease
            await edge.start()
            client = await Client.connect(f"ws://127.0.0.1:{edge.port}/stocks")
            await client.subscribe("T.AAPL,Q.MSFT,AM.AAPL")
            await client.wait_events(10)
            assert await metric(leader, "fastrelay_ingest_leader") == 1
            assert await metric(standby, "fastrelay_ingest_leader") == 0
            # A fresh edge asks the ingest for the values it lacks (snapshot request and reply).
            await second_edge.start()
            late = await Client.connect(f"ws://127.0.0.1:{second_edge.port}/stocks")
            await late.subscribe("Q.MSFT,AM.AAPL")
            await late.wait_events(3)
            requested = 'fastrelay_edge_last_value_fills_total{result="requested"}'
            await wait_metric(second_edge, requested, lambda n: n >= 1)
            # The leader resigns (deletes the key); the standby's watch sees it and takes over.
            leader.stop()
            await wait_metric(standby, "fastrelay_ingest_leader", lambda n: n == 1, timeout=TIMEOUT * 2)
            seen = len(client.events)
            await client.wait_events(seen + 10, timeout=TIMEOUT * 2)
            failed = 'fastrelay_edge_last_value_fills_total{result="failed"}'
            assert await metric(second_edge, failed) == 0
            await client.close()
            await late.close()
        violations = [line for line in server.log_text().splitlines() if " Violation - " in line]
        assert violations == [], violations[:5]

        # From the other side: what each user must not do, nats-server refuses and logs.
        as_edge = await nats.connect(server.url, nkeys_seed=str(edge_seed), error_cb=ignore)
        as_ingest = await nats.connect(server.url, nkeys_seed=str(ingest_seed), error_cb=ignore)
        try:
            for subject in ("fastrelay.data.stocks.T", "$KV.fastrelay_leader.leader"):
                await as_edge.publish(subject, b"[]")
            await as_edge.subscribe("fastrelay.interest")
            await as_ingest.publish("fastrelay.interest", b"{}")
            for connection in (as_edge, as_ingest):
                await connection.flush(timeout=TIMEOUT)
            refusals = {
                f'"$G/nkey:{edge_key.public}" - Publish Violation - Subject "fastrelay.data.stocks.T"',
                f'"$G/nkey:{edge_key.public}" - Publish Violation - Subject "$KV.fastrelay_leader.leader"',
                f'"$G/nkey:{edge_key.public}" - Subscription Violation - Subject "fastrelay.interest"',
                f'"$G/nkey:{ingest_key.public}" - Publish Violation - Subject "fastrelay.interest"',
            }
            await wait_until(
                lambda: all(refusal in server.log_text() for refusal in refusals),
                what=f"nats-server to log {refusals}",
            )
        finally:
            await as_edge.close()
            await as_ingest.close()
    for what, data in logs(leader, standby, edge, second_edge):
        assert_secret_free(what, data, ingest_key.seed, edge_key.seed)


async def ignore(exc: Exception) -> None:
    """nats-py's error callback: the violations are read from nats-server's log instead."""


async def wait_metric(
    process: RelayProcess, sample: str, condition: Callable[[float], bool], timeout: float = TIMEOUT
) -> float:
    """Poll ``sample`` of ``process``'s /metrics (bounded) until ``condition`` holds of it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition(value := await metric(process, sample)):
        assert asyncio.get_running_loop().time() < deadline, f"{process.log.name}: {sample} stayed {value}"
        await asyncio.sleep(0.05)
    return value
