"""Saturation rate and CPU per delivery of each server of a ladder scenario (``saturation=True``,
the ``workers`` scenario); pure, from the bench's per-step medians.

* **Saturation rate**: the highest step of the ladder the server delivered in full
  (``FULL_DELIVERY``, 100 % within the table's rounding) with its p99 under
  ``SATURATION_P99_MS``, every lower step too. A ladder that passes on every step has not
  found the saturation: its rate is reported as at least the top step (``+``).
* **CPU per delivery**: the server's CPU (every process of it: for ``--workers N`` the
  supervisor, nats-server, the ingest and the edges) per event delivered to a client, at
  that step, in microseconds; and the cores it used there.
"""

from __future__ import annotations

from typing import Any

from bench.scenarios import FULL_DELIVERY, SATURATION_P99_MS, Scenario


def passes(step: dict[str, Any]) -> bool:
    """Delivered in full, on time, nothing lost."""
    return (
        bool(step.get("server_alive", True))
        and not step.get("saturated")
        and step["delivery_ratio"] >= FULL_DELIVERY
        and step["latency_ms"]["p99"] < SATURATION_P99_MS
        and not step.get("disconnects_total", 0)
    )


def points(summaries: list[dict[str, Any]], scenarios: list[Scenario]) -> list[dict[str, Any]]:
    """One line per server of each saturation scenario, in the scenario's server order."""
    found: list[dict[str, Any]] = []
    for scenario in (s for s in scenarios if s.saturation):
        for server in scenario.servers:
            steps = sorted(
                (s for s in summaries if s["scenario"] == scenario.key and s["server"] == server.label),
                key=lambda s: s["t_rate"],
            )
            if not steps:
                continue
            passing = _passing(steps)
            held = passing[-1] if passing else None
            found.append(
                {
                    "scenario": scenario.key,
                    "server": server.label,
                    "saturation_t_rate": held["t_rate"] if held else None,
                    "saturation_deliveries_per_s": held["delivered_per_s"] if held else None,
                    # Every step of the whole ladder passed: it did not reach the saturation.
                    "beyond_ladder": len(passing) == len(scenario.t_rates),
                    "us_per_delivery": held["server_us_per_event"] if held else None,
                    "cores": held["server_cpu"] if held else None,
                    "p99_ms": held["latency_ms"]["p99"] if held else None,
                    "failed_at": _why(steps[len(passing)]) if len(passing) < len(steps) else None,
                    "steps": [
                        {
                            "t_rate": s["t_rate"],
                            "deliveries_per_s": s["delivered_per_s"],
                            "us_per_delivery": s["server_us_per_event"],
                            "cores": s["server_cpu"],
                            "passes": passes(s),
                        }
                        for s in steps
                    ],
                }
            )
    return found


def _passing(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps from the bottom of the ladder up to the first that does not pass."""
    held = []
    for step in steps:
        if not passes(step):
            break
        held.append(step)
    return held


def _why(step: dict[str, Any]) -> str:
    if step["delivery_ratio"] < FULL_DELIVERY:
        return f"{step['step']}: delivered {100 * step['delivery_ratio']:.2f} %"
    if step["latency_ms"]["p99"] >= SATURATION_P99_MS:
        return f"{step['step']}: p99 {step['latency_ms']['p99']:.1f} ms"
    return f"{step['step']}: {step.get('saturated') or 'clients lost'}"


def render(found: list[dict[str, Any]]) -> str:
    """The table printed after the bench's own."""
    lines = [
        f"Saturation: the highest step delivered at 100 % with p99 < {SATURATION_P99_MS:g} ms (every lower "
        "step too); CPU over the server's whole process tree",
        f"{'scenario':<10} {'server':<10} {'T ev/s':>8} {'deliv/s':>10} {'us/deliv':>9} {'cores':>6} "
        f"{'p99 ms':>7}  next step",
    ]
    for point in found:
        rate = point["saturation_t_rate"]
        shown = "-" if rate is None else f"{rate:,.0f}{'+' if point['beyond_ladder'] else ''}"

        def number(key: str, spec: str, point: dict[str, Any] = point) -> str:
            value = point[key]
            return "-" if value is None else format(value, spec)

        lines.append(
            f"{point['scenario']:<10} {point['server']:<10} {shown:>8} "
            f"{number('saturation_deliveries_per_s', ',.0f'):>10} {number('us_per_delivery', '.2f'):>9} "
            f"{number('cores', '.2f'):>6} {number('p99_ms', '.1f'):>7}  {point['failed_at'] or '-'}"
        )
    return "\n".join(lines)
