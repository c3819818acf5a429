"""When the supervisor starts a worker again after it exited; pure.

A worker that exits is started again after a delay that doubles with each exit in a row
(0.5, 1, 2, 4 s...), so a worker that cannot start does not spin. A run that lasted
``healthy_after`` counts as healthy: the next exit starts from the first delay again. The
``give_up_after``-th exit in a row, each within ``healthy_after`` of its start, means the
tree cannot be kept up: the supervisor stops every worker and exits non-zero, so that its
own supervisor (systemd's ``Restart=``, Kubernetes) sees the failure.

No jitter: one supervisor restarts one worker, there is no crowd to spread out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RestartPolicy:
    first_delay: float = 0.5
    max_delay: float = 10.0
    healthy_after: float = 10.0
    give_up_after: int = 5
    failures: int = 0  # exits in a row, each soon after its start

    def exited(self, ran_for: float) -> float | None:
        """A worker exited after running ``ran_for`` s: the delay before it starts again,
        or None when it should not (the tree cannot be kept up)."""
        if ran_for >= self.healthy_after:
            self.failures = 0
        self.failures += 1
        if self.failures >= self.give_up_after:
            return None
        return min(self.max_delay, self.first_delay * 2.0 ** (self.failures - 1))
