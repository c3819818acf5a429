"""Child processes of the supervisor: started so they never outlive it, watched without polling.

Each child, between fork and exec:

* asks the kernel for ``SIGKILL`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``): a
  supervisor killed with -9 (or by the OOM killer) leaves no relay holding the port and no
  nats-server behind. Then it checks that its parent is still the supervisor: one that died
  between the fork and the ``prctl`` would never send the signal;
* moves to a process group of its own, so that Ctrl-C in a terminal (SIGINT to the
  foreground group) reaches the supervisor alone, which then stops the tree in order.

The exit is watched through a pidfd (Linux 5.3+) on the event loop: readable once the child
has exited, no SIGCHLD handler and no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

_PR_SET_PDEATHSIG = 1
# Looked up once, here: between fork and exec the child only calls it (no dlopen there).
_prctl: Any = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def _prepare(parent: int) -> Callable[[], None]:
    def prepare() -> None:  # in the child, between fork and exec
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)  # the supervisor died before the prctl: nobody would stop us
        os.setpgid(0, 0)

    return prepare


def describe_status(returncode: int) -> str:
    """``exit status 1`` or ``killed by SIGKILL``, as an operator reads it."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit status {returncode}"


class Child:
    """One running child process; ``exited`` resolves with its return code."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = None,
        stderr: int | IO[bytes] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        loop = asyncio.get_running_loop()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            list(argv),
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            preexec_fn=_prepare(os.getpid()),
            close_fds=True,
        )
        self.pid = self.process.pid
        self.exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(self.pid)
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        returncode = self.process.poll()
        if returncode is None:
            return  # not yet (a spurious wake-up)
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self.exited.done():
            self.exited.set_result(returncode)

    @property
    def running(self) -> bool:
        return not self.exited.done()

    @property
    def ran_for(self) -> float:
        return time.monotonic() - self.started

    def signal(self, sig: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def wait(self, timeout: float) -> int | None:
        """The return code, or None if it is still running after ``timeout`` s."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.exited), max(0.0, timeout))
        except TimeoutError:
            return None

    async def kill(self) -> int:
        self.signal(signal.SIGKILL)
        return await self.exited
