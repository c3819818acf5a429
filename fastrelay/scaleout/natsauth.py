"""How a scale-out role's NATS connection proves who it is and whom it trusts.

Five settings, for the ingest and the edge alike (docs/scaleout.md, "Security:
TLS, NKeys, credentials"):

* ``--nats-tls-ca FILE``: trust this CA (PEM) for the servers' certificates,
  instead of the system store;
* ``--nats-tls-cert FILE`` and ``--nats-tls-key FILE``: a client certificate,
  for servers that verify clients (both or neither);
* ``--nats-nkey-seed FILE``: an NKey user seed (``SU...``): the connection
  signs the server's nonce with it, and the server knows only its public key;
* ``--nats-creds FILE``: a ``.creds`` file (a user JWT and its NKey seed), for
  servers in operator mode (``nsc``).

``check`` reads every file at start-up (``validate``, check-config): a missing
or unreadable file, a certificate without its key or a file that is not what
its flag says stops the process with a ``ConfigError`` naming the flag and the
path, never the contents. ``connect_options`` turns the settings into
``nats.connect`` keyword arguments; nats-py reads the seed again from its file
for each signature, so it is held in memory only while signing.

TLS is all or nothing: with any TLS setting every ``--nats`` server must be
``tls://``, because a ``nats://`` URL is upgraded only when the server asks for
it, and a server that does not ask (an impostor) would get the connection in
the clear.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any

from fastrelay.config import ConfigError, RelayConfig, redact

# nats-py's markers in a .creds file (nsc writes them): the line after each is the value.
_CREDS_JWT = re.compile(rb"-----BEGIN NATS USER JWT-----\r?\n([^\r\n]*)")
_CREDS_SEED = re.compile(rb"-----BEGIN USER NKEY SEED-----\r?\n([^\r\n]*)")
_MAX_FILE = 1024 * 1024  # a certificate bundle, a seed or a .creds file is far smaller


@dataclass(frozen=True)
class NatsAuth:
    """The security settings of a role's NATS connection; empty strings (a blank line in an
    env file) mean unset."""

    servers: tuple[str, ...]
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    nkey_seed: str | None = None
    creds: str | None = None

    @classmethod
    def of(cls, config: RelayConfig) -> NatsAuth:
        return cls(
            tuple(s.strip() for s in config.nats.split(",") if s.strip()),
            config.nats_tls_ca or None,
            config.nats_tls_cert or None,
            config.nats_tls_key or None,
            config.nats_nkey_seed or None,
            config.nats_creds or None,
        )

    @property
    def tls_options(self) -> bool:
        return bool(self.tls_ca or self.tls_cert or self.tls_key)

    @property
    def tls(self) -> bool:
        """Whether the connection is TLS: a TLS setting, or a ``tls://`` server."""
        return self.tls_options or any(s.startswith("tls://") for s in self.servers)


def _read(flag: str, path: str) -> bytes:
    """The file's bytes, or a ConfigError that names the flag and the path, not the contents."""
    try:
        with open(path, "rb") as file:
            return file.read(_MAX_FILE)
    except FileNotFoundError:
        raise ConfigError(f"--{flag}={path!r}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--{flag}={path!r}: a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"--{flag}={path!r}: not readable by this process (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"--{flag}={path!r}: cannot be read ({exc.strerror})") from None


def _reason(exc: ssl.SSLError) -> str:
    # OpenSSL's reason code (e.g. KEY_VALUES_MISMATCH): names the problem, never the contents.
    return str(exc.reason or exc.strerror or type(exc).__name__)


def _no_password() -> bytes:
    return b""  # never a prompt on the terminal for an encrypted key: it fails instead


def ssl_context(auth: NatsAuth) -> ssl.SSLContext | None:
    """The TLS context of the connection (None: plain ``nats://``); raises ``ConfigError``."""
    if not auth.tls:
        return None
    if auth.tls_ca:
        _read("nats-tls-ca", auth.tls_ca)
        try:
            # A cafile alone: only this CA is trusted, not the system store.
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=auth.tls_ca)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"--nats-tls-ca={auth.tls_ca!r}: no PEM CA certificate in it ({_reason(exc)})"
            ) from None
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if auth.tls_cert and auth.tls_key:
        _read("nats-tls-cert", auth.tls_cert)
        key = _read("nats-tls-key", auth.tls_key)
        if b"ENCRYPTED" in key:
            raise ConfigError(
                f"--nats-tls-key={auth.tls_key!r}: an encrypted key is not supported "
                "(store it decrypted, readable only by the service)"
            )
        try:
            context.load_cert_chain(auth.tls_cert, auth.tls_key, password=_no_password)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"--nats-tls-cert={auth.tls_cert!r} with --nats-tls-key={auth.tls_key!r}: "
                f"not a PEM certificate and its private key ({_reason(exc)})"
            ) from None
    return context


def _check_seed(flag: str, path: str, seed: bytes) -> None:
    """``seed`` decodes as an NKey user seed (as nats-py will decode it)."""
    try:
        import nkeys
    except ImportError:  # pragma: no cover - a dependency; this says what is missing
        raise ConfigError(f"--{flag} needs the nkeys package (pip install 'nats-py[nkeys]')") from None
    try:
        prefix, _raw = nkeys.decode_seed(bytearray(seed.strip()))
    except Exception:
        raise ConfigError(f"--{flag}={path!r}: no NKey seed in it (expected one line SU...)") from None
    if prefix != nkeys.PREFIX_BYTE_USER:
        raise ConfigError(f"--{flag}={path!r}: an NKey seed, but not a user's (expected SU...)")


def check(config: RelayConfig) -> None:
    """Every NATS security setting of ``config``, its files read once (``ConfigError``)."""
    auth = NatsAuth.of(config)
    if bool(auth.tls_cert) != bool(auth.tls_key):
        given, missing = ("cert", "key") if auth.tls_cert else ("key", "cert")
        raise ConfigError(f"--nats-tls-{given} needs --nats-tls-{missing}: a client certificate is both")
    if auth.tls_options:
        plain = [s for s in auth.servers if not s.startswith("tls://")]
        if plain:
            raise ConfigError(
                f"--nats={redact(','.join(plain))!r}: with --nats-tls-* every server must be tls://"
                " (nats:// would go unencrypted to a server that does not ask for TLS)"
            )
    ssl_context(auth)
    if auth.creds and auth.nkey_seed:
        raise ConfigError("--nats-creds and --nats-nkey-seed: give one (a .creds file holds its own seed)")
    if auth.nkey_seed:
        _check_seed("nats-nkey-seed", auth.nkey_seed, _read("nats-nkey-seed", auth.nkey_seed))
    if auth.creds:
        text = _read("nats-creds", auth.creds)
        jwt, seed = _CREDS_JWT.search(text), _CREDS_SEED.search(text)
        if jwt is None or not jwt.group(1).strip() or seed is None:
            raise ConfigError(
                f"--nats-creds={auth.creds!r}: not a .creds file (a NATS USER JWT and a USER NKEY SEED)"
            )
        _check_seed("nats-creds", auth.creds, seed.group(1))


def connect_options(config: RelayConfig) -> dict[str, Any]:
    """``nats.connect`` keyword arguments for the settings (``check`` has passed)."""
    auth = NatsAuth.of(config)
    options: dict[str, Any] = {}
    context = ssl_context(auth)
    if context is not None:
        options["tls"] = context
    if auth.creds:
        options["user_credentials"] = auth.creds
    elif auth.nkey_seed:
        options["nkeys_seed"] = auth.nkey_seed
    return options


def summary(config: RelayConfig) -> str:
    """How the connection is secured, for the start-up log and check-config: paths, never contents."""
    auth = NatsAuth.of(config)
    parts = []
    if auth.tls:
        trust = f"CA {auth.tls_ca}" if auth.tls_ca else "system CAs"
        client = f", client cert {auth.tls_cert}" if auth.tls_cert else ""
        parts.append(f"TLS ({trust}{client})")
    if auth.creds:
        parts.append(f"creds {auth.creds}")
    elif auth.nkey_seed:
        parts.append(f"NKey seed {auth.nkey_seed}")
    return ", ".join(parts) or "no TLS"
