"""`fastrelay --help` and each command's: every command on one line, options grouped with their
defaults, only those the command uses; one-line errors; values checked before anything starts."""

from __future__ import annotations

import re

import pytest

from fastrelay.cli import COMMANDS, _parser, main
from fastrelay.config import (
    GROUPS,
    KIB,
    MIB,
    RELAY_COMMANDS,
    RELAY_OPTIONS,
    SIM_OPTIONS,
    ConfigError,
    RelayConfig,
    SimConfigFlags,
    build,
    default_text,
    env_name,
    options_for,
    placeholder_warnings,
    unknown_variables,
    unused_settings,
)


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The help text, its line wrapping undone."""
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def raw_help(command: str) -> str:
    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return str(commands.choices[command].format_help())  # type: ignore[index]


def shows(text: str, flag: str) -> bool:
    return re.search(rf"--{re.escape(flag)}(?![\w-])", text) is not None


def test_every_command_is_listed_with_one_line_and_no_markup(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "{serve" not in out
    flat = " ".join(out.split())
    for command, summary in COMMANDS.items():
        assert f"{command} {summary}" in flat, command
    assert set(COMMANDS) == {*RELAY_COMMANDS, "sim"}
    assert "Exit status: 0" in flat and "2 configuration error" in flat


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_shows_its_options_with_defaults_and_hides_the_rest(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of([command], capsys)
    defaults = SimConfigFlags() if command == "sim" else RelayConfig(instance_name="HOST-PID")
    used = options_for(command)
    assert used, command
    for option in used:
        assert shows(text, option.flag), option.flag
        default = default_text(option, defaults)
        shown = (
            f"[env {env_name(option.flag)}; default {default}]"
            if default
            else f"[env {env_name(option.flag)}]"
        )
        assert shown in text, (option.flag, shown)
        if not default:  # a secret, or a default the help text spells out
            assert option.flag in ("api-key", "api-key-for", "client-tokens") or "default" in option.help
    for option in (*RELAY_OPTIONS, *SIM_OPTIONS):
        if option not in used and option.flag not in {o.flag for o in used}:
            assert not shows(text, option.flag), (command, option.flag)
    headings = [line[:-1] for line in raw_help(command).splitlines() if line.endswith(":") and line[0] != " "]
    assert headings[0] == "options"  # -h
    assert headings[1:] == [g for g in GROUPS if any(o.group == g for o in used)]  # in GROUPS order


def test_the_commands_show_what_their_role_uses(capsys: pytest.CaptureFixture[str]) -> None:
    edge = help_of(["edge"], capsys)
    assert not any(shows(edge, f) for f in ("api-key", "upstream", "api-key-for", "rest-url", "backoff-base"))
    assert all(shows(edge, f) for f in ("nats", "client-tokens", "max-event-age", "port"))
    ingest = help_of(["ingest"], capsys)
    assert not any(shows(ingest, f) for f in ("max-connections", "allowed-origins", "max-event-age"))
    assert all(shows(ingest, f) for f in ("api-key", "upstream", "nats-window", "lease-ttl"))
    run = help_of(["run"], capsys)
    assert not any(shows(run, f) for f in ("nats", "role", "lease-ttl"))
    sim = help_of(["sim"], capsys)
    assert not any(shows(sim, f) for f in ("client-tokens", "api-key", "upstream"))
    assert "SIZE: bytes, or with a unit" in help_of(["serve"], capsys)


def test_serve_and_check_config_take_every_relay_option() -> None:
    """They take --role, so every relay option is theirs; every option sits in a group."""
    for command in ("serve", "check-config"):
        assert options_for(command) == RELAY_OPTIONS
    for option in (*RELAY_OPTIONS, *SIM_OPTIONS):
        assert option.group in GROUPS, option.flag
        assert option.commands, option.flag


def test_a_missing_value_is_one_line_and_a_pointer_to_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage" not in err, err
    assert "--port: expected one argument" in err and "see fastrelay serve --help" in err


def test_an_unknown_flag_is_named_with_the_closest_and_its_value_never(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--api-keyy", "hunter2-secret", "--prot=3002"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "--api-keyy (did you mean --api-key?)" in err and "--prot (did you mean --port?)" in err
    assert "hunter2" not in err and "3002" not in err


def relay_config(*argv: str, env: dict[str, str] | None = None) -> RelayConfig:
    args = _parser().parse_args(["serve", *argv])
    config: RelayConfig = build(RelayConfig(), RELAY_OPTIONS, args, env or {})
    return config


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--port", "70000"], "port 70000 out of range (0-65535)"),
        (["--port", "-1"], "out of range"),
        (["--port", "http"], "'http' is not a port number"),
        (["--metrics-port", "0"], "port 0 out of range (1-65535)"),
        (["--max-client-buffer", "4 megs"], "KiB, MiB, GiB (1024s) or KB, MB, GB (1000s)"),
        (["--max-frame-size", "1.5MiB"], "is not a size"),
    ],
)
def test_ports_and_sizes_out_of_range_are_refused(argv: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        relay_config(*argv)


def test_sizes_take_units() -> None:
    config = relay_config("--max-client-buffer", "4MiB", "--max-frame-size", "256KiB", "--byte-burst", "4MB")
    assert (config.max_client_buffer, config.max_frame_size, config.byte_burst) == (
        4 * MIB,
        256 * KIB,
        4_000_000,
    )
    env = {"FASTRELAY_HISTORY_MAX_BYTES": "2 mib", "FASTRELAY_REST_CACHE_BYTES": "1000"}
    config = relay_config(env=env)
    assert (config.history_max_bytes, config.rest_cache_bytes) == (2 * MIB, 1000)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--port", "70000"], "out of range"),
        (["--host", "no-such-host.invalid"], "--host='no-such-host.invalid': not an address nor a name"),
        (["--metrics-host", "no-such-host.invalid", "--metrics-port", "9101"], "--metrics-host="),
        (["--port", "3001", "--metrics-port", "3001"], "--metrics-port=3001 is --port's"),
        (["--host", ""], "--host must not be empty"),
    ],
)
def test_check_config_refuses_what_would_fail_at_start(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--api-key", "k", *argv]) == 2
    assert fragment in capsys.readouterr().err


def test_placeholder_secrets_are_named_never_shown() -> None:
    config = relay_config(
        "--api-key",
        "replace-with-your-massive-key",
        "--client-tokens",
        "a-real-looking-token-0123456789,replace-with-a-long-random-token",
        "--api-key-for",
        "options=YOUR_KEY_HERE",
        "--markets",
        "stocks,options",
    )
    warnings = placeholder_warnings(config, "serve")
    assert len(warnings) == 3 and all("placeholder" in w for w in warnings), warnings
    assert not any("replace-with" in w or "YOUR_KEY" in w for w in warnings)
    real = relay_config("--api-key", "AbCdEf0123456789xyz", "--client-tokens", "q8Xr2-Lm0vT7s9Wd1Zp4")
    assert placeholder_warnings(real, "serve") == []
    assert placeholder_warnings(config, "edge")[0].startswith("a client token")  # edges hold no key


def test_misspelt_variables_are_reported_with_the_closest_name() -> None:
    env = {"FASTRELAY_PROT": "3002", "FASTRELAY_PORT": "1", "FASTRELAY_LOGLEVEL": "x", "PATH": "/bin"}
    env["FASTRELAY_WHATEVER"] = "secret-value"
    warnings = unknown_variables(env)
    assert "FASTRELAY_PROT is not a fastrelay setting: ignored (did you mean FASTRELAY_PORT?)" in warnings
    assert any(w.startswith("FASTRELAY_LOGLEVEL") and "FASTRELAY_LOG_LEVEL" in w for w in warnings)
    assert "FASTRELAY_WHATEVER is not a fastrelay setting: ignored" in warnings
    assert len(warnings) == 3 and not any("secret-value" in w for w in warnings)
    assert unknown_variables({"FASTRELAY_TEST_TIMEOUT_SCALE": "2"}) == []


def test_settings_a_command_does_not_use_are_noted() -> None:
    args = _parser().parse_args(["edge", "--upstream", "wss://x", "--port", "3001"])
    notes = unused_settings(args, {"FASTRELAY_API_KEY_FOR": "stocks=k", "FASTRELAY_SIM_KEY": "s"}, "edge")
    assert notes == [
        "--upstream has no effect on `fastrelay edge`",
        "FASTRELAY_API_KEY_FOR has no effect on `fastrelay edge`",
        "FASTRELAY_SIM_KEY has no effect on `fastrelay edge`",
    ]
    assert unused_settings(_parser().parse_args(["serve", "--upstream", "wss://x"]), {}, "serve") == []


def test_an_unknown_command_is_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    """`fastrelay KEY` (the key where the command goes) must not print the key."""
    for argv, hint in ((["hunter2-secret-key"], ""), (["serv"], "did you mean serve? ")):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.count("\n") == 1, err
        assert f"unknown command ({hint}the commands: run, serve, sim" in err and "hunter2" not in err
