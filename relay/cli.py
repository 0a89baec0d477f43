"""The ``relay`` command line.

Every ``Settings`` field is a ``relay serve`` flag and a ``RELAY_<NAME>``
environment variable; ``--config FILE`` reads a TOML file of the same names.
Precedence: flag, then environment, then file, then the built-in default.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tomllib
from pathlib import Path
from types import FrameType
from typing import Any

import click
import uvicorn
from starlette.applications import Starlette

from relay import __version__
from relay.app import create_app
from relay.hub import Hub
from relay.settings import Settings, describe
from relay.wsserver import RelayWebSocketProtocol

log = logging.getLogger("relay")


class RelayServer(uvicorn.Server):
    """uvicorn, with a drain on the first SIGTERM/SIGINT and a ready line."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub
        self._draining = False

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.servers and self.servers[0].sockets:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            scheme = "wss" if self.config.ssl_keyfile else "ws"
            shown = f"[{host}]" if ":" in host else host
            print(
                f"relay ready on {scheme}://{shown}:{port}{self.hub.settings.path}",
                file=sys.stderr,
                flush=True,
            )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # The first signal drains; uvicorn would otherwise close sockets with
        # 1012 and re-raise the signal, so the process would not exit 0.
        if self._draining:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        log.info("draining: closing sockets with 1001, flushing queues")
        await self.hub.drain(self.hub.settings.drain_seconds)
        self.should_exit = True


def uvicorn_config(app: Starlette, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration that serves ``app`` as ``settings`` say."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "ws": RelayWebSocketProtocol if settings.ws_impl == "relay" else settings.ws_impl,
        "ws_max_size": settings.max_frame_bytes,
        "ws_ping_interval": settings.ping_interval_seconds,
        "ws_ping_timeout": settings.ping_timeout_seconds,
        "ws_per_message_deflate": False,
        "lifespan": "on",
        "log_level": settings.log_level,
        "server_header": False,
        "proxy_headers": False,
        # After a drain only stragglers are left; don't wait on them forever.
        "timeout_graceful_shutdown": 5,
    }
    if settings.certfile or settings.keyfile:
        # TLS straight from uvicorn: wss:// and https:// on the same port.
        options["ssl_certfile"] = settings.certfile or None
        options["ssl_keyfile"] = settings.keyfile or None
    return uvicorn.Config(app, **{**options, **overrides})


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        data = tomllib.loads(Path(value).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(str(exc)) from exc
    known = {name for name, *_ in describe()}
    defaults = {key.replace("-", "_"): item for key, item in data.items()}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise click.BadParameter(f"unknown settings: {', '.join(unknown)}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def settings_options(command: Any) -> Any:
    """Decorate ``command`` with one option per ``Settings`` field."""
    for name, group, default, help_text in reversed(describe()):
        flag = "--" + name.replace("_", "-")
        envvar = "RELAY_" + name.upper()
        if isinstance(default, tuple):
            option = click.option(
                flag, name, multiple=True, envvar=envvar, show_envvar=True,
                help=f"{help_text} Repeatable; the env var is space-separated.",
            )  # fmt: skip
        else:
            option = click.option(
                flag, name, type=type(default), default=default, envvar=envvar,
                show_default=True, show_envvar=True, help=f"[{group}] {help_text}",
            )  # fmt: skip
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="relay")
def main() -> None:
    """relay: a self-hosted WebSocket relay hub.

    Peers connect to ws://HOST:PORT/v1/ws, register an id and exchange msgpack
    envelopes (protocol v1, see docs/protocol.md). Start one with `relay serve`.
    """


@main.command()
@click.option(
    "--config", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True,
    expose_value=False, help="TOML file of settings (names as below, e.g. rate_per_second = 50).",
)  # fmt: skip
@settings_options
def serve(**values: Any) -> None:
    """Run a relay node (WebSocket and HTTP on one port).

    SIGTERM or Ctrl-C drains: /readyz turns 503, new sockets are refused,
    queues are flushed and open sockets closed with 1001, then the process
    exits 0. A second signal exits at once.
    """
    values["origins"] = tuple(values["origins"])
    for name, _group, default, _help in describe():
        if isinstance(default, tuple):
            values[name] = tuple(values[name])
    settings = Settings(**values)
    if bool(settings.certfile) != bool(settings.keyfile):
        raise click.UsageError("TLS needs both --certfile and --keyfile")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.workers > 1:
        if settings.broker == "memory":
            raise click.UsageError(
                "--workers N > 1 needs a shared broker such as --broker redis://host:6379/0: "
                "with the memory broker each worker would be a separate relay"
            )
        from relay.workers import run_workers

        sys.exit(run_workers(settings))
    try:
        app = create_app(settings)
    except ValueError as exc:  # AuthConfigError, a bad trusted_proxies entry
        raise click.UsageError(str(exc)) from exc
    server = RelayServer(uvicorn_config(app, settings), app.state.hub)
    server.run()
    sys.exit(0 if server.started else 1)


@main.command("config")
@click.option("--markdown", is_flag=True, help="Print the table docs/configuration.md holds.")
def show_config(markdown: bool) -> None:
    """Print every setting with its default, flag and environment variable."""
    if markdown:
        click.echo("| setting | flag / environment | default | meaning |")
        click.echo("|---|---|---|---|")
    for name, group, default, help_text in describe():
        shown = " ".join(default) if isinstance(default, tuple) else str(default)
        flag = "--" + name.replace("_", "-")
        env = "RELAY_" + name.upper()
        if markdown:
            cell = f"`{shown}`" if shown else "(empty)"
            click.echo(f"| {name} | `{flag}` `{env}` | {cell} | [{group}] {help_text} |")
        else:
            click.echo(f"{flag:26} {env:30} {shown!s:20} {help_text}")


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
