"""Which ingest leads: a lease on a NATS JetStream key-value bucket.

Any number of ingests may run for one account and ``--nats-prefix``; exactly
one of them, the *leader*, holds the Massive connections and publishes. The
others (standbys) stay on NATS, keep the edges' interest warm and take over
when the leader is gone (docs/scaleout.md, "High availability").

Theory of operation
-------------------
The bucket ``<prefix>_leader`` holds one key, ``leader``, and has a maximum age
(the lease TTL): a value not rewritten within the TTL disappears on the server.

* A standby tries ``create`` (succeeds only if the key does not exist) every
  ``retry`` seconds (a sixth of the TTL), and at once when it sees the key
  deleted (a watch: a graceful handover). Expiry markers (nats-server 2.11+)
  are not used: nats-py's ``create`` mistakes them for a live key.
* The winner's *term* is the revision ``create`` returned: JetStream's
  sequence only grows, so a later leader always has a higher term. The term
  travels in every data and state message, and edges drop messages of an older
  term (fencing on the receiving side).
* The leader rewrites the key every ``ttl / 3`` with compare-and-set on the
  last revision. A refused CAS means another ingest holds the key: deposed at
  once. A renewal that cannot be made (NATS down, the loop stalled) leaves the
  lease to run out.
* The leader's own deadline is measured from when it *asked* for the last
  renewal that succeeded, minus a margin, so it always ends before the
  server's copy of the lease does: a deposed or partitioned leader stops
  publishing and closes its Massive connections before anyone else can win
  (fencing on the sending side). ``Lease.held`` is checked before every
  publish, so a leader that wakes from a freeze (SIGSTOP, a VM pause) longer
  than its lease never publishes again as leader.
* A leader that stops resigns: it closes its upstreams first, then deletes the
  key (CAS on its revision), and a watching standby wins at once.

``Lease`` is the pure part; ``Election`` drives it over a ``LeaseStore``
(``JetStreamLeaseStore``, or a fake in unit tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from fastrelay.ratelimit import LogThrottle

log = logging.getLogger("fastrelay.election")

LEASE_KEY: Final = "leader"

# Why leadership changed (the ``reason`` label of fastrelay_ingest_leader_changes_total).
ELECTED: Final = "elected"
LEASE_EXPIRED: Final = "lease_expired"  # renewals failed until the deadline (NATS down, a stall)
LEASE_TAKEN: Final = "lease_taken"  # the CAS was refused: another ingest holds the key
RESIGNED: Final = "resigned"  # a graceful stop
CHANGE_REASONS: Final = (ELECTED, LEASE_EXPIRED, LEASE_TAKEN, RESIGNED)


def bucket_name(prefix: str) -> str:
    """The lease bucket of a deployment: ``fastrelay.prod`` -> ``fastrelay_prod_leader``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix) + "_leader"


@dataclass
class Lease:
    """The leader's lease as this ingest knows it; pure."""

    ttl: float
    margin: float
    term: int = 0  # 0: not leading
    revision: int = 0
    deadline: float = -math.inf

    def won(self, revision: int, asked_at: float) -> None:
        self.term = self.revision = revision
        self.deadline = asked_at + self.ttl - self.margin

    def renewed(self, revision: int, asked_at: float) -> None:
        self.revision = revision
        self.deadline = asked_at + self.ttl - self.margin

    def held(self, now: float) -> bool:
        return self.term > 0 and now < self.deadline

    def lose(self) -> int:
        """Give the lease up; returns the revision to delete (0: none)."""
        revision, self.term, self.revision, self.deadline = self.revision, 0, 0, -math.inf
        return revision


class LeaseTaken(Exception):
    """The key exists (``create``) or moved on (``update``): another ingest holds the lease."""


class LeaseStore(Protocol):
    """The lease's key on the server (``JetStreamLeaseStore``)."""

    ttl: float

    async def create(self, value: bytes) -> int: ...
    async def update(self, value: bytes, last: int) -> int: ...
    async def delete(self, last: int) -> None: ...
    async def watch(self, on_gone: Callable[[], None]) -> None: ...
    async def close(self) -> None: ...


class JetStreamLeaseStore:
    """The lease on a JetStream key-value bucket (``nats-py``)."""

    def __init__(self, client: Any, bucket: str, ttl: float, replicas: int = 1) -> None:
        self._client = client
        self.bucket = bucket
        self.ttl = ttl
        self._replicas = replicas
        self._kv: Any = None
        self._watcher: Any = None
        self._watch_task: asyncio.Task[None] | None = None

    async def _open(self) -> Any:
        if self._kv is not None:
            return self._kv
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BucketNotFoundError

        js = self._client.jetstream(timeout=2.0)
        try:
            kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            config = KeyValueConfig(
                bucket=self.bucket,
                history=1,
                ttl=self.ttl,
                # File storage: the sequence (and so the terms) survives a server restart.
                storage=StorageType.FILE,
                replicas=self._replicas,
                # No limit_marker_ttl: nats-server 2.11+ would leave a marker where an expired
                # lease was, and nats-py 2.16's create() takes it for a live key until the
                # marker itself expires (nats-server#6712): a second more of failover. The
                # standbys' retries (TTL/6) notice an expiry soon enough.
            )
            kv = await js.create_key_value(config)
        status = await kv.status()
        if status.ttl and abs(status.ttl - self.ttl) > 1e-3:
            # The bucket is the one truth all ingests share: follow it.
            log.warning(
                "lease bucket %s has a TTL of %g s, not %g s: following the bucket (all ingests must agree)",
                self.bucket,
                status.ttl,
                self.ttl,
            )
            self.ttl = float(status.ttl)
        self._kv = kv
        return kv

    async def create(self, value: bytes) -> int:
        return await self._write(value, None)

    async def update(self, value: bytes, last: int) -> int:
        return await self._write(value, last)

    async def _write(self, value: bytes, last: int | None) -> int:
        from nats.js.errors import KeyWrongLastSequenceError

        kv = await self._open()
        try:
            if last is None:
                return int(await kv.create(LEASE_KEY, value))
            return int(await kv.update(LEASE_KEY, value, last=last))
        except KeyWrongLastSequenceError:
            raise LeaseTaken from None
        except Exception:
            # The bucket may be gone (a wiped server): open (and create) it again next time.
            self._kv = None
            raise

    async def delete(self, last: int) -> None:
        kv = await self._open()
        await kv.delete(LEASE_KEY, last=last)

    async def watch(self, on_gone: Callable[[], None]) -> None:
        kv = await self._open()
        self._watcher = watcher = await kv.watch(LEASE_KEY)

        async def follow() -> None:
            async for entry in watcher:
                if entry is not None and entry.operation in ("DEL", "PURGE"):
                    on_gone()

        self._watch_task = asyncio.get_running_loop().create_task(follow(), name="lease-watch")

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self._watcher is not None:
            # Bounded: with NATS down, nats-py's unsubscribe can wait for a server that is gone.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._watcher.stop(), 1.0)
        self._kv = self._watcher = self._watch_task = None


class Election:
    """Campaign for the lease, keep it while possible, and say when it changes hands.

    ``on_elected(term)`` runs when this ingest wins; ``on_deposed(reason)`` when it
    has stopped leading (the caller closes its upstreams in it). Publishing stops
    before that, at the very moment the deadline passes: every publish asks
    ``leading()``, which reads the clock, not a flag a callback has yet to set.
    """

    def __init__(
        self,
        identity: bytes,
        ttl: float,
        clock: Callable[[], float],
        on_elected: Callable[[int], None],
        on_deposed: Callable[[str], Awaitable[None]],
    ) -> None:
        self.identity = identity
        self.lease = Lease(ttl, margin=min(0.25, ttl / 5))
        self._clock = clock
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._store: LeaseStore | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deposing: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.renewals_failed = 0
        self._throttle = LogThrottle(log, interval=30.0)
        self.changes: dict[str, int] = dict.fromkeys(CHANGE_REASONS, 0)

    @property
    def retry(self) -> float:
        """How often a standby tries for the lease (a watch wakes it sooner)."""
        return self.lease.ttl / 6

    @property
    def renew_every(self) -> float:
        return self.lease.ttl / 3

    def leading(self) -> bool:
        """Whether this ingest may publish now: checked before every publish."""
        return self.lease.held(self._clock())

    @property
    def term(self) -> int:
        return self.lease.term

    def attach(self, store: LeaseStore) -> None:
        """Campaign on ``store`` (called when NATS is up, again after each reconnection)."""
        previous, self._store = self._store, store
        if previous is not None and previous is not store:
            self._closing = asyncio.get_running_loop().create_task(previous.close())
        self.lease.ttl = store.ttl
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._campaign(), name="election")

    def gone(self) -> None:
        """The key was deleted or expired: try now, not at the next retry."""
        self._wake.set()

    async def _campaign(self) -> None:
        watched: LeaseStore | None = None  # a new store after a NATS reconnection is watched anew
        while True:
            store = self._store
            if store is None:
                return
            try:
                if store is not watched:
                    await store.watch(self.gone)
                    self.lease.ttl = store.ttl  # the bucket's, if it differs
                    watched = store
                if self.lease.term:
                    await self._renew(store)
                else:
                    await self._try_to_win(store)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # NATS down or JetStream unavailable: keep trying; the deadline
                # timer deposes a leader whose renewals stop getting through.
                if self.lease.term:
                    self.renewals_failed += 1
                    if not self.leading():
                        await self._depose(LEASE_EXPIRED)
                # Said once per interval: an ingest that can never reach the lease (NATS
                # without JetStream, missing permissions) must not stand by in silence.
                self._throttle.log(
                    logging.WARNING,
                    "the leader lease on JetStream is out of reach (%s: %s): is JetStream "
                    "enabled and this user allowed $JS.API and $KV? No ingest can lead without it",
                    type(exc).__name__,
                    str(exc)[:200],
                )
            await self._pause()

    async def _pause(self) -> None:
        wait = self.renew_every if self.lease.term else self.retry
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait)

    async def _try_to_win(self, store: LeaseStore) -> None:
        asked_at = self._clock()
        try:
            revision = await store.create(self.identity)
        except LeaseTaken:
            return
        self.lease.won(revision, asked_at)
        if not self.lease.held(self._clock()):  # the answer took longer than the lease
            self.lease.lose()
            return
        self.changes[ELECTED] += 1
        self._arm_deadline()
        log.info("elected leader (term %d, lease %g s)", revision, self.lease.ttl, extra={"term": revision})
        self._on_elected(revision)

    async def _renew(self, store: LeaseStore) -> None:
        asked_at = self._clock()
        try:
            revision = await store.update(self.identity, self.lease.revision)
        except LeaseTaken:
            await self._depose(LEASE_TAKEN)
            return
        if self.lease.term:
            self.lease.renewed(revision, asked_at)
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        delay = max(0.0, self.lease.deadline - self._clock())
        self._deadline_timer = asyncio.get_running_loop().call_later(delay, self._check_deadline)

    def _check_deadline(self) -> None:
        self._deadline_timer = None
        if not self.lease.term:
            return
        if self.leading():  # the loop's clock runs a little behind: not yet
            self._arm_deadline()
            return
        self._deposing = asyncio.get_running_loop().create_task(self._depose(LEASE_EXPIRED))

    async def _depose(self, reason: str) -> None:
        if not self.lease.term:
            return
        term = self.lease.term
        self.lease.lose()
        self.changes[reason] += 1
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        log.warning(
            "no longer leader (term %d): %s",
            term,
            reason.replace("_", " "),
            extra={"term": term, "reason": reason},
        )
        await self._on_deposed(reason)

    async def resign(self) -> None:
        """Stop campaigning; a leader closes its upstreams (``on_deposed``), then frees the key."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        revision = self.lease.revision if self.leading() else 0
        if self.lease.term:
            term = self.lease.term
            self.lease.lose()
            self.changes[RESIGNED] += 1
            log.info("resigning as leader (term %d)", term)
            await self._on_deposed(RESIGNED)
        store, self._store = self._store, None
        if store is not None:
            if revision:
                with contextlib.suppress(Exception):  # a standby takes over at the TTL anyway
                    await asyncio.wait_for(store.delete(revision), 1.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.close(), 2.0)
