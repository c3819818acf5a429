"""Command line: ``fastrelay serve | run | sim`` (also ``python -m fastrelay``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from fastrelay import __version__, logs, loops, roles
from fastrelay.config import (
    RELAY_OPTIONS,
    SIM_OPTIONS,
    ConfigError,
    RelayConfig,
    SimConfigFlags,
    add_options,
    build,
)
from fastrelay.workers import plan as workers_plan


class _Parser(argparse.ArgumentParser):
    """argparse, minus echoing unknown arguments: one may be the API key
    (``--api-keyy KEY``), and stderr ends up in the journal."""

    def error(self, message: str) -> NoReturn:
        head, found, rest = message.partition("unrecognized arguments:")
        if found:
            flags = [word.split("=", 1)[0] for word in rest.split() if word.startswith("-")]
            shown = f" {' '.join(flags)}" if flags else ""
            message = f"{head}unrecognized arguments{shown} (values are not shown: they may be secrets)"
        super().error(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastrelay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastrelay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the relay against Massive (or --upstream)")
    add_options(serve, RELAY_OPTIONS)
    run = commands.add_parser(
        "run", help="the main job: the relay, on the built-in simulator when MASSIVE_API_KEY is unset"
    )
    add_options(run, RELAY_OPTIONS)
    ingest = commands.add_parser(
        "ingest", help="scale-out: hold the upstreams and publish to NATS (= serve --role ingest)"
    )
    add_options(ingest, RELAY_OPTIONS)
    edge = commands.add_parser(
        "edge", help="scale-out: serve clients from an ingest over NATS (= serve --role edge)"
    )
    add_options(edge, RELAY_OPTIONS)
    sim = commands.add_parser("sim", help="a Massive-compatible simulated feed")
    add_options(sim, SIM_OPTIONS)
    check = commands.add_parser(
        "check-config", help="validate the relay's configuration (flags and environment) and exit"
    )
    add_options(check, RELAY_OPTIONS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "sim":
            flags = build(SimConfigFlags(), SIM_OPTIONS, args, os.environ)
            logs.configure(flags.log_level, flags.log_format)
            return _run_sim(flags)
        config = build(RelayConfig(), RELAY_OPTIONS, args, os.environ)
        if args.command in ("ingest", "edge"):
            if args.role is not None and args.role != args.command:
                raise ConfigError(f"--role={args.role} contradicts the command {args.command!r}")
            config.role = args.command
        roles.validate(config)
        workers_plan.validate(config)
        needs_key = roles.kind_of(config).needs_api_key  # an edge never talks to Massive
        simulated = args.command == "run"  # `run` without a key serves the simulator
        if needs_key and not config.api_key and not simulated:
            raise ConfigError("no API key: set MASSIVE_API_KEY or --api-key")
    except ConfigError as exc:
        print(f"fastrelay: configuration error: {exc}", file=sys.stderr)
        return 2
    tree = config.workers > 1  # a supervisor and its workers (docs/workers.md)
    if args.command == "check-config":
        if tree:
            from fastrelay.workers.supervisor import describe

            print(f"fastrelay: configuration OK: {describe(config)}")
        else:
            print(f"fastrelay: configuration OK: {roles.describe(config)}")
        return 0
    if tree:
        from fastrelay.workers import supervisor

        logs.configure(config.log_level, config.log_format, worker=workers_plan.SUPERVISOR)
        return supervisor.main(config, simulated=needs_key and not config.api_key)
    logs.configure(config.log_level, config.log_format)
    from fastrelay import app

    if needs_key and not config.api_key:
        loops.run(app.run_with_simulator(config))
    else:
        loops.run(app.serve(config))
    return 0


def _run_sim(flags: SimConfigFlags) -> int:
    from fastrelay.sim import SimulatorConfig, run_simulator

    config = SimulatorConfig(
        api_key=flags.sim_key,
        rate=flags.rate,
        events_per_frame=flags.events_per_frame,
        symbol_count=flags.symbol_count,
        stamp_ns=flags.stamp,
        markets=flags.markets,
        feed=flags.feed,
        plan=flags.plan,
        contract_cap=flags.contract_cap,
        one_connection_per_key=flags.one_connection_per_key,
    )
    from fastrelay.app import serve_until_signal

    loops.run(serve_until_signal(run_simulator(config, flags.host, flags.port)))
    return 0
