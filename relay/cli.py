"""The ``relay`` command line.

Every ``Settings`` field is a ``relay serve`` flag and a ``RELAY_<NAME>``
environment variable; ``--config FILE`` reads a TOML file of the same names.
Precedence: flag, then environment, then file, then the built-in default.
A bad value is one line on stderr naming the setting, its source and what it
accepts, and exit status 2; so is a host that does not resolve or a port that
cannot be bound. ``relay check`` reads and checks the settings as ``serve``
does and prints them with their sources; ``relay config`` prints the defaults.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shlex
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from relay import __version__
from relay.app import create_app
from relay.auth import load_verifier
from relay.fdlimit import fit_open_files
from relay.listen import ListenError, bind, bind_admin, resolve
from relay.server import RelayServer, uvicorn_config
from relay.settings import SettingError, Settings, describe, is_secret, parse, split_host_port

log = logging.getLogger("relay")


# --- settings from flags, environment and a TOML file ---------------------------
#
# A bad setting stops the command with one line on stderr and exit status 2
# (click's status for usage errors), naming where the value came from:
#   Error: --port 70000: expected an integer 0-65535
#   Error: RELAY_PORT=8113x: expected an integer 0-65535
#   Error: relay.toml: port = "8113x": expected an integer 0-65535

_CONFIG_FILE = "relay.config_file"  # ctx.meta key: the --config path


class BadSetting(click.ClickException):
    """A bad setting or configuration file: one line on stderr, exit status 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


_HIDDEN = "(hidden)"


def _number(value: object) -> str | None:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # as typed: -5, not -5.0
    return str(value) if isinstance(value, int | float) else None


def _shell(name: str, value: object) -> str:
    if is_secret(name):
        return _HIDDEN
    return _number(value) or shlex.quote(str(value))


def _toml(name: str, value: object) -> str:
    if is_secret(name):
        return _HIDDEN
    return _number(value) or json.dumps(value)


def _where(ctx: click.Context, name: str, value: object) -> str:
    """Setting ``name`` with ``value`` as its source spells it: flag, variable or file key."""
    source = ctx.get_parameter_source(name)
    if source is ParameterSource.COMMANDLINE:
        return f"--{name.replace('_', '-')} {_shell(name, value)}"
    if source is ParameterSource.ENVIRONMENT:
        return f"RELAY_{name.upper()}={_shell(name, value)}"
    if source is ParameterSource.DEFAULT_MAP:
        return f"{ctx.meta[_CONFIG_FILE]}: {name} = {_toml(name, value)}"
    return f"{name} = {_toml(name, value)} (the default)"


def _bad(ctx: click.Context, exc: SettingError) -> BadSetting:
    return BadSetting(f"{_where(ctx, exc.name, exc.value)}: {exc.problem}")


# Not subscripted: ParamType is generic only in recent click releases.
class _SettingType(click.ParamType):  # type: ignore[type-arg]
    """Converts text (flag, environment) or a TOML value to one setting's type."""

    def __init__(self, setting: str, kind: type) -> None:
        self.setting = setting
        self.name = {int: "integer", float: "number", bool: "boolean"}.get(kind, "text")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse(self.setting, value)
        except SettingError as exc:
            if ctx is None:
                raise click.BadParameter(exc.problem) from None
            raise _bad(ctx, exc) from None


class _ListOption(click.Option):
    """A list setting, whose environment variable set but empty means the empty list."""

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        if isinstance(self.envvar, str) and self.envvar in os.environ:
            return os.environ[self.envvar]
        return super().resolve_envvar_value(ctx)


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        with open(value, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise BadSetting(
            f"--config {shlex.quote(value)}: cannot read it ({exc.strerror})"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadSetting(f"{value}: not valid TOML: {exc}") from None
    defaults = {info.name: info.default for info in describe()}
    values: dict[str, Any] = {}
    for key, item in data.items():
        name = key.replace("-", "_")
        if name not in defaults:
            close = difflib.get_close_matches(name, defaults, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise BadSetting(f"{value}: unknown setting {key}{hint}")
        try:
            if isinstance(defaults[name], tuple) and not isinstance(item, list):
                raise SettingError(name, item, "expected an array of strings")
            values[name] = parse(name, item)
        except SettingError as exc:
            raise BadSetting(f"{value}: {name} = {_toml(name, item)}: {exc.problem}") from None
    ctx.meta[_CONFIG_FILE] = value
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


def settings_options(command: Any) -> Any:
    """Decorate ``command`` with one option per ``Settings`` field."""
    for info in reversed(describe()):
        flag = "--" + info.name.replace("_", "-")
        envvar = "RELAY_" + info.name.upper()
        kind = type(info.default)
        text = f"[{info.group}] {info.help}" + (f" Accepts {info.accepts}." if info.accepts else "")
        if kind is tuple:
            option = click.option(
                flag, info.name, cls=_ListOption, multiple=True, envvar=envvar,
                type=_SettingType(info.name, kind), default=info.default,
                show_default=" ".join(info.default) or "empty", show_envvar=True,
                help=f"{text} Repeatable; the env var is space-separated; '' for none.",
            )  # fmt: skip
        else:
            option = click.option(
                flag, info.name, type=_SettingType(info.name, kind), default=info.default,
                envvar=envvar, show_default=not info.secret, show_envvar=True, help=text,
            )  # fmt: skip
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="relay")
def main() -> None:
    """relay: a self-hosted WebSocket relay hub.

    Peers connect to ws://HOST:PORT/v1/ws, register an id and exchange msgpack
    envelopes (protocol v1, see docs/protocol.md). Start one with `relay serve`;
    `relay check` with the same options says what it would run with.
    """


def settings_command(command: Any) -> Any:
    """Decorate ``command`` with ``--config`` and one option per setting, as ``serve`` has."""
    command = settings_options(command)
    return click.option(
        "--config", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True,
        expose_value=False,
        help="TOML file of settings (names as below, e.g. rate_per_second = 50).",
    )(command)  # fmt: skip


@main.command()
@settings_command
@click.pass_context
def serve(ctx: click.Context, /, **values: Any) -> None:
    """Run a relay node (WebSocket and HTTP on one port).

    Every setting is a flag, a RELAY_* environment variable and a key of the
    --config file; the flag wins over the variable, the variable over the file.
    A bad value stops the relay with one line naming it and exit status 2, and
    so does a host that does not resolve or a port already in use. `relay
    check` takes the same options and prints what serve would run with.

    SIGTERM or Ctrl-C drains: /readyz turns 503, new sockets are refused,
    queues are flushed and open sockets closed with 1001, then the process
    exits 0. A second signal exits at once. SIGHUP re-reads the JWT key file.
    """
    settings = settings_from(ctx, values)
    if (too_few_files := fit_open_files(settings)) is not None:
        raise BadSetting(too_few_files)
    sockets, settings = listening_sockets(ctx, settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.workers > 1:
        from relay.workers import run_workers

        sys.exit(run_workers(settings, sockets))
    app = create_app(settings)
    server = RelayServer(uvicorn_config(app, settings, inherited_send_buffer=True), app.state.hub)
    server.run(sockets=sockets)
    sys.exit(0 if server.started else 1)


def settings_from(ctx: click.Context, values: dict[str, Any]) -> Settings:
    """The checked ``Settings`` of ``serve``'s parsed ``values``, or ``BadSetting``."""
    values = dict(values)
    for info in describe():
        if isinstance(info.default, tuple):  # an empty item (--origins '') means none
            values[info.name] = tuple(item for item in values[info.name] if item.strip())
    try:
        settings = Settings(**values)
        settings.check_files()
        # The workers build their apps themselves: check the keys here, once.
        load_verifier(settings)
    except SettingError as exc:
        raise _bad(ctx, exc) from None
    return settings


def _unservable(ctx: click.Context, settings: Settings, exc: ListenError) -> BadSetting:
    return BadSetting(f"{_where(ctx, exc.name, getattr(settings, exc.name))}: {exc.problem}")


def listening_sockets(
    ctx: click.Context, settings: Settings
) -> tuple[list[socket.socket], Settings]:
    """The sockets ``serve`` listens on, bound now; ``BadSetting`` when they cannot be.

    With ``admin_listen`` its sockets come last, and the settings returned
    name its port as bound (a port 0 picked one), for the app to tell the
    listeners apart (the workers' apps too).
    """
    try:
        sockets = bind(settings.host, settings.port, send_buffer_bytes=settings.send_buffer_bytes)
    except ListenError as exc:
        raise _unservable(ctx, settings, exc) from None
    if not settings.admin_listen:
        return sockets, settings
    try:
        admin, address = bind_admin(
            settings.admin_listen, sockets, send_buffer_bytes=settings.send_buffer_bytes
        )
    except ListenError as exc:
        for sock in sockets:
            sock.close()
        raise _unservable(ctx, settings, exc) from None
    return [*sockets, *admin], settings.replace(admin_listen=address)


# RELAY_* variables that are not settings but are expected in a relay's
# terminal: relay-peer (the Python client) reads its URL and token from them.
CLIENT_VARIABLES = frozenset({"RELAY_URL", "RELAY_TOKEN"})


def _shown_value(name: str, value: object) -> str:
    """``value`` as a TOML value, a secret that is set as (hidden)."""
    if is_secret(name) and value:
        return _HIDDEN
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return _number(value) or json.dumps(value)


def _source(ctx: click.Context, name: str) -> str:
    source = ctx.get_parameter_source(name)
    if source is ParameterSource.COMMANDLINE:
        return "--" + name.replace("_", "-")
    if source is ParameterSource.ENVIRONMENT:
        return "RELAY_" + name.upper()
    if source is ParameterSource.DEFAULT_MAP:
        return str(ctx.meta[_CONFIG_FILE])
    return "default"


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    """``rows`` as lines of left-aligned columns, each as wide as its widest cell."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]


def _stray_variables() -> list[str]:
    """Warnings for RELAY_* variables that are no setting (a typo serve would ignore)."""
    known = ["RELAY_" + info.name.upper() for info in describe()]
    warnings = []
    for name in sorted(os.environ):
        if name.startswith("RELAY_") and name not in known and name not in CLIENT_VARIABLES:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.append(f"Warning: {name} is not a setting; relay serve ignores it{hint}")
    return warnings


@main.command()
@settings_command
@click.pass_context
def check(ctx: click.Context, /, **values: Any) -> None:
    """Check serve's settings; print each value and its source.

    Takes the options of `relay serve` and reads flags, RELAY_* variables and
    the --config file exactly as it does. Every value is checked as serve
    checks it (files and keys are read, the host is resolved); a bad one is one
    line naming it and exit status 2. Otherwise every setting is printed with
    its effective value (secrets as (hidden)) and where it came from: a flag,
    a variable, the config file, or the default. RELAY_* variables that are no
    setting get a warning on stderr (relay-peer's RELAY_URL and RELAY_TOKEN
    excepted). Nothing is started, and the port is not tried.
    """
    settings = settings_from(ctx, values)
    try:
        addresses = [address for _, address in resolve(settings.host, settings.port)]
        if settings.admin_listen:
            admin_host, admin_port = split_host_port(settings.admin_listen)
            try:
                resolve(admin_host, admin_port)
            except ListenError as exc:
                raise ListenError("admin_listen", exc.problem) from None
    except ListenError as exc:
        raise _unservable(ctx, settings, exc) from None
    for warning in _stray_variables():
        click.echo(warning, err=True)
    rows: list[tuple[str, ...]] = [("setting", "value", "from")]
    rows += [
        (info.name, _shown_value(info.name, getattr(settings, info.name)), _source(ctx, info.name))
        for info in describe()
    ]
    for line in _columns(rows):
        click.echo(line.rstrip())
    port = settings.port or "a free port"
    where = ", ".join(f"[{a}]" if ":" in a else a for a in addresses)
    admin = f"; /admin only on {settings.admin_listen}" if settings.admin_listen else ""
    click.echo(f"The settings are valid: relay serve would listen on {where}, port {port}{admin}.")


@main.command("config")
@click.option("--markdown", is_flag=True, help="Print the table docs/configuration.md holds.")
def show_config(markdown: bool) -> None:
    """Print every setting's default, flag and environment variable.

    These are the built-in defaults, whatever the environment holds: `relay
    check` prints the values serve would use, and where each came from.
    """
    if markdown:
        click.echo("| setting | flag / environment | default | meaning | accepts |")
        click.echo("|---|---|---|---|---|")
    rows: list[tuple[str, ...]] = []
    for info in describe():
        default = info.default
        shown = " ".join(default) if isinstance(default, tuple) else str(default)
        flag = "--" + info.name.replace("_", "-")
        env = "RELAY_" + info.name.upper()
        if markdown:
            cell = f"`{shown}`" if shown else "(empty)"
            click.echo(
                f"| {info.name} | `{flag}` `{env}` | {cell} | [{info.group}] {info.help} "
                f"| {info.accepts or 'any text'} |"
            )
        else:
            rows.append((flag, env, shown or "(empty)", info.help))
    if rows:
        for line in _columns([("flag", "environment", "default", "meaning"), *rows]):
            click.echo(line)


_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_ttl(ctx: click.Context, param: click.Parameter, value: str) -> float:
    text = value.strip().lower()
    unit = _TTL_UNITS.get(text[-1:])
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise click.BadParameter("use a number of seconds or e.g. 90s, 30m, 1h, 7d") from None
    if not 0 < seconds < 10 * 365 * 86400:
        raise click.BadParameter("must be positive (and under ten years)")
    return seconds


@main.command("token")
@click.option(
    "--config", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True,
    expose_value=False, help="TOML settings file (jwt_secret, jwt_audience... are read from it).",
)  # fmt: skip
@click.option("--sub", required=True, help="Peer id the token is for (its sub claim).")
@click.option(
    "--rooms", multiple=True,
    help="Room or glob pattern the peer may join/publish to; repeatable or comma-separated. "
    "Without it the token allows every room.",
)  # fmt: skip
@click.option("--ttl", default="1h", show_default=True, callback=_parse_ttl,
              help="Lifetime: seconds, or 90s, 30m, 1h, 7d.")  # fmt: skip
@click.option("--jwt-secret", "jwt_secret", default="", envvar="RELAY_JWT_SECRET",
              show_envvar=True, help="HS256 shared secret to sign with.")  # fmt: skip
@click.option(
    "--private-key-file", type=click.Path(dir_okay=False, exists=True), default=None,
    envvar="RELAY_JWT_PRIVATE_KEY_FILE", show_envvar=True,
    help="PEM private key (RSA or EC) to sign RS256/ES256 tokens with.",
)  # fmt: skip
@click.option("--algorithm", default="", help="HS256, RS256, ES256... (default: from the key).")
@click.option("--kid", default="", help="Key id to put in the header (for a JWKS).")
@click.option("--jwt-audience", "jwt_audience", default="", envvar="RELAY_JWT_AUDIENCE",
              show_envvar=True, help="aud claim.")  # fmt: skip
@click.option("--jwt-issuer", "jwt_issuer", default="", envvar="RELAY_JWT_ISSUER",
              show_envvar=True, help="iss claim.")  # fmt: skip
@click.option("--jwt-rooms-claim", "jwt_rooms_claim", default="rooms",
              envvar="RELAY_JWT_ROOMS_CLAIM", show_envvar=True, show_default=True,
              help="Name of the rooms claim.")  # fmt: skip
def token(
    sub: str,
    rooms: tuple[str, ...],
    ttl: float,
    jwt_secret: str,
    private_key_file: str | None,
    algorithm: str,
    kid: str,
    jwt_audience: str,
    jwt_issuer: str,
    jwt_rooms_claim: str,
) -> None:
    """Mint a token for a peer and print it.

    Signs with the configured HS256 secret (--jwt-secret / RELAY_JWT_SECRET,
    or jwt_secret in --config), or with --private-key-file for RS256/ES256.

        relay token --sub alice --rooms 'chat-*' --ttl 1h
    """
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from relay.auth import mint

    try:
        Settings().codec_limits().check_peer_id(sub, "--sub")
    except Exception as exc:
        raise click.BadParameter(str(exc), param_hint="--sub") from None
    key: Any
    if private_key_file:
        try:
            key = load_pem_private_key(Path(private_key_file).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise click.UsageError(f"cannot load --private-key-file: {exc}") from None
        if isinstance(key, rsa.RSAPrivateKey):
            algorithm = algorithm or "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            algorithm = algorithm or {384: "ES384", 521: "ES512"}.get(key.curve.key_size, "ES256")
        else:
            raise click.UsageError("--private-key-file must hold an RSA or EC private key")
    elif jwt_secret:
        from relay.auth import MIN_SECRET_BYTES

        if len(jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise click.UsageError(f"the HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
        key = jwt_secret
        algorithm = algorithm or "HS256"
    else:
        raise click.UsageError(
            "no signing key configured: set --jwt-secret (or RELAY_JWT_SECRET, or jwt_secret "
            "in --config) for HS256, or --private-key-file for RS256/ES256"
        )
    listed = [room.strip() for entry in rooms for room in entry.split(",") if room.strip()]
    try:
        minted = mint(
            sub=sub, ttl_seconds=ttl, key=key, algorithm=algorithm.upper(),
            rooms=listed or None, rooms_claim=jwt_rooms_claim, audience=jwt_audience or None,
            issuer=jwt_issuer or None, kid=kid or None,
        )  # fmt: skip
    except Exception as exc:  # a wrong --algorithm for the key
        raise click.UsageError(f"cannot sign: {exc}") from None
    click.echo(minted)
