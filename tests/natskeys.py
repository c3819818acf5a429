"""NATS identities made in the test, without ``nsc``: NKeys (the ``nkeys`` package over
random ed25519 seeds) and the JWTs of operator mode (operator, accounts, users) behind a
``.creds`` file.

A NATS JWT is ``base64url(header).base64url(claims).base64url(ed25519 signature)``, the
header ``{"typ":"JWT","alg":"ed25519-nkey"}``, signed with the issuer's NKey; ``jti`` is
the base32 SHA-512/256 of the claims serialized without it (nats-io/jwt, v2 claims).
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
import orjson


@dataclass(frozen=True)
class NKey:
    seed: str  # S...: the secret
    public: str  # U... (user), A... (account), O... (operator): what a server is told

    @classmethod
    def new(cls, prefix: int = nkeys.PREFIX_BYTE_USER) -> NKey:
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return cls(seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed.encode())).sign(data))

    def write_seed(self, path: Path) -> Path:
        path.write_text(self.seed + "\n")
        path.chmod(0o600)
        return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(issuer: NKey, subject: str, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject}
    claims["nats"] = {**nats, "version": 2}
    digest = hashlib.new("sha512_256", orjson.dumps(claims, option=orjson.OPT_SORT_KEYS)).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(orjson.dumps({"typ": "JWT", "alg": "ed25519-nkey"}))
    body = f"{header}.{_b64(orjson.dumps(claims))}"
    return f"{body}.{_b64(issuer.sign(body.encode()))}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
# An account with JetStream (the lease bucket of the ingests' election).
ACCOUNT_LIMITS = {
    **UNLIMITED,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


@dataclass
class Operator:
    """An operator, its system account and one application account, as a server config."""

    operator: NKey
    system: NKey
    account: NKey

    @classmethod
    def new(cls) -> Operator:
        return cls(
            NKey.new(nkeys.PREFIX_BYTE_OPERATOR),
            NKey.new(nkeys.PREFIX_BYTE_ACCOUNT),
            NKey.new(nkeys.PREFIX_BYTE_ACCOUNT),
        )

    def server_config(self) -> str:
        """nats-server settings for operator mode, the accounts preloaded (no resolver service)."""
        operator = jwt(
            self.operator,
            self.operator.public,
            "test-operator",
            {"type": "operator", "system_account": self.system.public},
        )
        system = jwt(self.operator, self.system.public, "SYS", {"type": "account", "limits": UNLIMITED})
        account = jwt(
            self.operator, self.account.public, "fastrelay", {"type": "account", "limits": ACCOUNT_LIMITS}
        )
        preload = f"  {self.system.public}: {system}\n  {self.account.public}: {account}\n"
        return (
            f"operator: {operator}\n"
            f"system_account: {self.system.public}\n"
            "resolver: MEMORY\n"
            f"resolver_preload: {{\n{preload}}}\n"
        )

    def creds(self, user: NKey, name: str, path: Path) -> Path:
        """A ``.creds`` file for ``user`` in the application account, as nsc writes it."""
        token = jwt(self.account, user.public, name, {"type": "user", "pub": {}, "sub": {}, **UNLIMITED})
        path.write_text(
            "-----BEGIN NATS USER JWT-----\n"
            f"{token}\n"
            "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{user.seed}\n"
            "------END USER NKEY SEED------\n\n"
            "*************************************************************\n"
        )
        path.chmod(0o600)
        return path
