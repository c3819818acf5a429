"""Command line: ``fastrelay COMMAND`` (also ``python -m fastrelay``); COMMANDS lists them.

Exit status: 0 after a clean stop, 1 when the process fails at run time (a port it
cannot listen on), 2 for a configuration error found before anything starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from fastrelay import __version__, logs, loops, roles
from fastrelay.config import (
    SIZE_HELP,
    ConfigError,
    RelayConfig,
    SimConfigFlags,
    accepted_by,
    add_options,
    build,
    closest,
    options_for,
    placeholder_warnings,
    size,
    unknown_variables,
    unused_settings,
)
from fastrelay.front import ListenError, check_host, host_port
from fastrelay.workers import plan as workers_plan

log = logging.getLogger("fastrelay")
T = TypeVar("T")

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
EXIT_RUNTIME, EXIT_CONFIG = 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, with one line per error and no values echoed.

    The usage is not repeated on every error: one line, and where the help is.
    Unknown arguments are reported by ``main`` (flags named, values never).
    """

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument COMMAND: invalid choice:"):
            # The word may be a key given where the command goes (`fastrelay KEY`): not shown.
            word = message.split("'")[1] if message.count("'") >= 2 else ""
            close = closest(word, list(COMMANDS))
            hint = f"did you mean {close}? " if close else ""
            message = f"unknown command ({hint}the commands: {', '.join(COMMANDS)})"
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastrelay",
        description=DESCRIPTION,
        epilog=f"{EPILOG} Help of a command: fastrelay COMMAND --help.",
    )
    parser.add_argument("--version", action="version", version=f"fastrelay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for command, summary in COMMANDS.items():
        sizes = any(option.parse is size for option in options_for(command))
        sub = commands.add_parser(
            command,
            help=summary,
            description=summary,
            epilog=EPILOG + (f" SIZE: {SIZE_HELP}." if sizes else ""),
            usage=f"fastrelay {command} [OPTIONS]",
        )
        defaults = SimConfigFlags() if command == "sim" else RelayConfig(instance_name="HOST-PID")
        add_options(sub, command, defaults)
    return parser


def _unknown(command: str | None, unknown: list[str]) -> str:
    """One line naming unknown flags (never a value: ``--api-keyy KEY`` holds a secret),
    with the closest real flag."""
    flags = [word.split("=", 1)[0] for word in unknown if word.startswith("-")]
    known = [option.flag for option in accepted_by(command)] if command else []
    named = []
    for flag in flags:
        close = closest(flag.lstrip("-"), known)
        named.append(f"{flag} (did you mean --{close}?)" if close else flag)
    what = f": {', '.join(named)}" if named else ""
    prog = f"fastrelay {command}" if command else "fastrelay"
    return (
        f"{prog}: unrecognized arguments{what}; values are not shown, they may be secrets (see {prog} --help)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args, unknown = _parser().parse_known_args(argv)
    if unknown:
        print(_unknown(args.command, unknown), file=sys.stderr)
        return EXIT_CONFIG
    command: str = args.command
    try:
        if command == "sim":
            flags = build(SimConfigFlags(), accepted_by(command), args, os.environ)
            problem = check_host("--host", flags.host)
            if problem:
                raise ConfigError(problem)
        else:
            config = _relay_config(command, args)
    except ConfigError as exc:
        print(f"fastrelay: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    warnings = unknown_variables(os.environ)
    notes = unused_settings(args, os.environ, command)
    if command == "sim":
        logs.configure(flags.log_level, flags.log_format)
        _tell(warnings, notes)
        return _started(_run_sim, flags)
    warnings += placeholder_warnings(config, command)
    tree = config.workers > 1  # a supervisor and its workers (docs/workers.md)
    if command == "check-config":
        for kind, lines in (("warning", warnings), ("note", notes)):
            for line in lines:
                print(f"fastrelay: {kind}: {line}", file=sys.stderr)
        where = host_port(config.host, config.port)
        if tree:
            from fastrelay.workers.supervisor import describe

            print(f"fastrelay: configuration OK: {describe(config)}; listening on {where}")
        else:
            print(f"fastrelay: configuration OK: {roles.describe(config)}; listening on {where}")
        return 0
    if tree:
        from fastrelay.workers import supervisor

        logs.configure(config.log_level, config.log_format, worker=workers_plan.SUPERVISOR)
        _tell(warnings, notes)
        simulated = roles.kind_of(config).needs_api_key and not config.api_key
        return supervisor.main(config, simulated=simulated)
    logs.configure(config.log_level, config.log_format)
    _tell(warnings, notes)
    return _started(_run_relay, config)


def _relay_config(command: str, args: argparse.Namespace) -> RelayConfig:
    config: RelayConfig = build(RelayConfig(), accepted_by(command), args, os.environ)
    if command in ("ingest", "edge"):
        if config.role not in ("single", command):  # --role or FASTRELAY_ROLE
            raise ConfigError(f"--role={config.role} contradicts the command {command!r}")
        config.role = command
    elif command == "run":
        config.role = "single"  # `run` is the one-process relay; scale-out is `serve --role`
    roles.validate(config)
    workers_plan.validate(config)
    for flag, host in (("--host", config.host), ("--metrics-host", config.metrics_host)):
        problem = host and check_host(flag, host)
        if problem:
            raise ConfigError(problem)
    needs_key = roles.kind_of(config).needs_api_key  # an edge never talks to Massive
    if needs_key and not config.api_key and command != "run":  # `run` plays its simulator
        raise ConfigError("no API key: set MASSIVE_API_KEY or --api-key")
    return config


def _tell(warnings: list[str], notes: list[str]) -> None:
    for warning in warnings:
        log.warning("%s", warning, extra={"reason": "configuration"})
    for note in notes:
        log.info("%s", note, extra={"reason": "configuration"})


def _started(run: Callable[[T], None], settings: T) -> int:
    """Run until stopped: 0, or 1 with one ERROR line when it cannot start (a port taken)."""
    try:
        run(settings)
    except ListenError as exc:
        log.error("%s", exc, extra={"reason": "listen"})
        return EXIT_RUNTIME
    return 0


def _run_relay(config: RelayConfig) -> None:
    from fastrelay import app

    if roles.kind_of(config).needs_api_key and not config.api_key:
        loops.run(app.run_with_simulator(config))
    else:
        loops.run(app.serve(config))


def _run_sim(flags: SimConfigFlags) -> None:
    from fastrelay.sim import SimulatorConfig, run_simulator

    config = SimulatorConfig(
        api_key=flags.sim_key,
        rate=flags.rate,
        events_per_frame=flags.events_per_frame,
        trade_share=flags.trade_share,
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
