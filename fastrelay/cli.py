"""Command line: ``fastrelay COMMAND`` (also ``python -m fastrelay``); COMMANDS lists them."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from fastrelay import __version__, logs, loops, roles
from fastrelay.config import (
    SIZE_HELP,
    ConfigError,
    RelayConfig,
    SimConfigFlags,
    add_options,
    build,
    options_for,
    size,
)

# Every command, with its line in `fastrelay --help`; its options: config.options_for.
COMMANDS: dict[str, str] = {
    "run": "the relay, on a built-in simulated feed when MASSIVE_API_KEY is unset (start here)",
    "serve": "the relay against Massive (or --upstream), as --role single, ingest or edge",
    "sim": "a Massive-compatible simulated feed, for tests and demos",
    "ingest": "scale-out: hold the Massive connections and publish to NATS (= serve --role ingest)",
    "edge": "scale-out: serve clients from an ingest over NATS (= serve --role edge)",
    "check-config": "validate the relay's flags and FASTRELAY_* variables, and exit",
}
DESCRIPTION = "fastrelay: one Massive.com connection per market, fanned out to many WebSocket clients."
EPILOG = (
    "Every --flag has an environment twin FASTRELAY_FLAG; the flag wins. "
    "Exit status: 0 stopped cleanly, 1 failed at run time (e.g. the port is taken), "
    "2 configuration error."
)


class _Parser(argparse.ArgumentParser):
    """argparse, with one line per error and no values echoed.

    An unknown argument may be the API key (``--api-keyy KEY``), and stderr ends
    up in the journal: flags are named, values never. The usage is not repeated
    on every error: one line, and where the help is.
    """

    def error(self, message: str) -> NoReturn:
        head, found, rest = message.partition("unrecognized arguments:")
        if found:
            flags = [word.split("=", 1)[0] for word in rest.split() if word.startswith("-")]
            shown = f" {' '.join(flags)}" if flags else ""
            message = f"{head}unrecognized arguments{shown} (values are not shown: they may be secrets)"
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastrelay",
        description=DESCRIPTION,
        epilog=f"{EPILOG} Help of a command: fastrelay COMMAND --help.",
    )
    parser.add_argument("--version", action="version", version=f"fastrelay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for command, summary in COMMANDS.items():
        options = options_for(command)
        sizes = f" SIZE: {SIZE_HELP}." if any(option.parse is size for option in options) else ""
        sub = commands.add_parser(
            command,
            help=summary,
            description=summary,
            epilog=EPILOG + sizes,
            usage=f"fastrelay {command} [OPTIONS]",
        )
        defaults = SimConfigFlags() if command == "sim" else RelayConfig(instance_name="HOST-PID")
        add_options(sub, options, defaults)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "sim":
            flags = build(SimConfigFlags(), options_for("sim"), args, os.environ)
            logs.configure(flags.log_level, flags.log_format)
            return _run_sim(flags)
        config = build(RelayConfig(), options_for(args.command), args, os.environ)
        if args.command in ("ingest", "edge"):
            if config.role not in ("single", args.command):  # --role or FASTRELAY_ROLE
                raise ConfigError(f"--role={config.role} contradicts the command {args.command!r}")
            config.role = args.command
        roles.validate(config)
        needs_key = roles.kind_of(config).needs_api_key  # an edge never talks to Massive
        simulated = args.command == "run"  # `run` without a key serves the simulator
        if needs_key and not config.api_key and not simulated:
            raise ConfigError("no API key: set MASSIVE_API_KEY or --api-key")
    except ConfigError as exc:
        print(f"fastrelay: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"fastrelay: configuration OK: {roles.describe(config)}")
        return 0
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
