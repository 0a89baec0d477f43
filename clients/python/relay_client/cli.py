"""``relay-peer``: talk to a relay from the terminal.

::

    relay-peer listen --id bob [--room lobby]       # print what arrives
    relay-peer send --id alice bob 'hello'          # send to bob
    relay-peer send --id alice --room lobby 'hi'    # publish to a room
    relay-peer request --id alice bob --ev time     # send a request, print the reply
    relay-peer shell --id alice                     # interactive prompt

``--url`` defaults to ``$RELAY_URL``, else ``ws://127.0.0.1:8080/v1/ws``;
``--token`` to ``$RELAY_TOKEN``; ``--transport http`` talks over the HTTP
transport only (the default tries the WebSocket, then HTTP). Options may come anywhere among the
arguments. Exit status: 0 done, 1 a runtime failure (relay unreachable,
refused, closed, a request failed), 2 a usage error, 130 interrupted, 143
terminated (SIGTERM ends the session as cleanly as Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import click
import msgpack

from ._options import TRANSPORTS
from .errors import RelayError
from .peer import DEFAULT_URL, Peer, connect
from .types import Ack, Message, Presence, State

__all__ = ["format_message", "format_payload", "main"]

PROG = "relay-peer"
_BYTES_SHOWN = 64

SHELL_HELP = """\
commands:
  send [-j] TO[,TO...] TEXT   send TEXT to one or several peers (-j: TEXT is JSON)
  pub [-j] ROOM TEXT          publish TEXT to ROOM
  join ROOM [presence]        join ROOM (with presence events)
  leave ROOM                  leave ROOM
  ping                        round trip to the relay
  rooms                       rooms joined
  help                        this text
  quit                        leave the shell (also Ctrl-D)"""


# --------------------------------------------------------------------------- #
# Formatting
# --------------------------------------------------------------------------- #


def _bytes(value: bytes) -> str:
    shown = value[:_BYTES_SHOWN].hex()
    more = "..." if len(value) > _BYTES_SHOWN else ""
    return f"<{len(value)} bytes> {shown}{more}".rstrip()


def _jsonish(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes | bytearray):
        return _bytes(bytes(value))
    if isinstance(value, msgpack.ExtType):
        return f"<ext {value.code}: {_bytes(value.data)}>"
    if isinstance(value, msgpack.Timestamp):
        return str(value.to_datetime().isoformat())
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_jsonish(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_jsonish(k)}: {_jsonish(v)}" for k, v in value.items()) + "}"
    return repr(value)


def format_payload(data: Any) -> str:
    """Render a payload on one line: str as is (escaped if not printable),
    bytes as hex with their length, maps and lists as JSON-ish text."""
    if isinstance(data, str):
        return data if data.isprintable() else json.dumps(data, ensure_ascii=False)[1:-1]
    if isinstance(data, bytes | bytearray):
        return _bytes(bytes(data))
    return _jsonish(data)


def format_message(msg: Message) -> str:
    """One line per message: ``from=alice room=lobby ev=chat: hello``."""
    parts = [f"from={msg.sender}"]
    if msg.room is not None:
        parts.append(f"room={msg.room}")
    if msg.ev is not None:
        parts.append(f"ev={msg.ev}")
    if msg.rid is not None:
        parts.append(f"rid={msg.rid}")
    return " ".join(parts) + ": " + format_payload(msg.data)


def _format_presence(presence: Presence) -> str:
    verb = {"join": "joined", "leave": "left"}.get(presence.event, presence.event)
    line = f"presence room={presence.room}: {presence.peer} {verb}"
    if presence.members is not None:
        line += f" (members: {', '.join(presence.members) or '-'})"
    return line


def _out(line: str) -> None:
    print(line, flush=True)


def _err(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def _payload(text: str, *, as_json: bool = False, as_hex: bool = False) -> Any:
    if as_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON payload: {exc}") from None
    if as_hex:
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError("invalid hex payload") from None
    return text


# --------------------------------------------------------------------------- #
# Commands
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class _Link:
    """Where and as whom to connect (the options every command shares)."""

    url: str
    token: str | None
    id: str | None
    timeout: float
    transports: tuple[str, ...]

    def connect(self, *, reconnect: bool = True) -> Any:
        return connect(
            self.url,
            id=self.id,
            token=self.token,
            reconnect=reconnect,
            open_timeout=self.timeout,
            transports=self.transports or TRANSPORTS,
        )


def _watch(peer: Peer) -> None:
    def state(s: State) -> None:
        if s is State.RECONNECTING:
            _err("connection lost, reconnecting...")
        elif s is State.CONNECTED:
            _err(f"reconnected as {peer.id}")

    peer.on_state(state)
    peer.on_presence(lambda p: _out(_format_presence(p)))
    peer.on_error(lambda e: _err(f"error: {e}"))


async def _listen(link: _Link, rooms: Sequence[str], presence: bool, count: int) -> int:
    async with link.connect() as peer:
        _watch(peer)
        for room in rooms:
            await peer.join(room, presence=presence)
        where = f" in {', '.join(rooms)}" if rooms else ""
        _err(f"listening as {peer.id} on {link.url}{where} (Ctrl-C to stop)")
        seen = 0
        async for msg in peer:
            _out(format_message(msg))
            seen += 1
            if count and seen >= count:
                break
    return 0


async def _deliver(link: _Link, deliver: Callable[[Peer], Awaitable[Ack]]) -> int:
    async with link.connect(reconnect=False) as peer:
        ack = await deliver(peer)
        _out("ok (queued for a resuming peer)" if ack.queued else "ok")
    return 0


async def _request(link: _Link, target: str, data: Any, ev: str | None, wait: float) -> int:
    async with link.connect(reconnect=False) as peer:
        reply = await peer.request(target, data, ev=ev, timeout=wait)
        _out(format_payload(reply))
    return 0


def _stdin_lines(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]
) -> threading.Event:
    """Read stdin in a daemon thread (it never blocks exit); one line per ``ready``."""
    ready = threading.Event()
    prompt = "relay> " if sys.stdin.isatty() else ""

    def read() -> None:
        while True:
            ready.wait()
            ready.clear()
            try:
                line: str | None = input(prompt)
            except (EOFError, OSError):
                line = None
            loop.call_soon_threadsafe(queue.put_nowait, line)
            if line is None:
                return

    threading.Thread(target=read, name="relay-peer-stdin", daemon=True).start()
    ready.set()
    return ready


async def _shell_command(peer: Peer, line: str) -> bool:
    """Run one shell command; False to quit."""
    command, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    as_json = rest.startswith("-j ")
    if as_json:
        rest = rest[3:].strip()
    if command in ("", "#"):
        return True
    if command in ("quit", "exit"):
        return False
    if command in ("help", "?"):
        _out(SHELL_HELP)
    elif command == "send":
        target, _, text = rest.partition(" ")
        if not target or not text:
            _out("usage: send [-j] TO[,TO...] TEXT")
            return True
        ids = [t for t in target.split(",") if t]
        ack = await peer.send(ids[0] if len(ids) == 1 else ids, _payload(text, as_json=as_json))
        _out("ok (queued)" if ack.queued else "ok")
    elif command == "pub":
        room, _, text = rest.partition(" ")
        if not room or not text:
            _out("usage: pub [-j] ROOM TEXT")
            return True
        await peer.publish(room, _payload(text, as_json=as_json))
        _out("ok")
    elif command == "join":
        words = rest.split()
        if not words:
            _out("usage: join ROOM [presence]")
            return True
        await peer.join(words[0], presence="presence" in words[1:])
        _out(f"joined {words[0]}")
    elif command == "leave":
        if not rest:
            _out("usage: leave ROOM")
            return True
        await peer.leave(rest)
        _out(f"left {rest}")
    elif command == "ping":
        _out(f"pong in {await peer.ping() * 1000:.1f} ms")
    elif command == "rooms":
        _out(", ".join(sorted(peer.rooms)) or "(none)")
    else:
        _out(f"unknown command {command!r}; try help")
    return True


async def _shell(link: _Link) -> int:
    async with link.connect() as peer:
        _watch(peer)
        _err(f"connected as {peer.id} to {link.url}; type help for commands")

        async def show() -> None:
            async for msg in peer:
                _out(format_message(msg))

        printer = asyncio.create_task(show())
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        ready = _stdin_lines(asyncio.get_running_loop(), queue)
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, printer}, return_when=asyncio.FIRST_COMPLETED)
                if printer in done:
                    getter.cancel()
                    printer.result()  # raises the terminal error, if any
                    return 0
                line = getter.result()
                if line is None:
                    return 0
                try:
                    if not await _shell_command(peer, line):
                        return 0
                except (RelayError, ValueError) as exc:
                    _out(f"error: {exc}")
                ready.set()
        finally:
            printer.cancel()


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #

EXIT_STATUS = """\
\b
Exit status:
  0    done
  1    a runtime failure: the relay could not be reached, refused or closed
       the connection, or a request failed
  2    a usage error: unknown option, missing argument, bad JSON or hex
  130  interrupted (Ctrl-C)
  143  terminated (SIGTERM), the session ended as with Ctrl-C"""


class _Terminated(Exception):
    """SIGTERM arrived: the command was cancelled, and its peer closed."""


async def _until_sigterm(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main``; SIGTERM cancels it as Ctrl-C does, so its peer closes cleanly.

    Left to the default action, SIGTERM would kill the process with its socket
    open: the relay would then hold the id for its resume window (a restarted
    ``listen`` would get ``id-taken``). Cancelled, ``async with connect()``
    closes the peer with 1000 and the relay forgets it at once.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    handled = threading.current_thread() is threading.main_thread()
    if handled:
        loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await main
    except asyncio.CancelledError:
        if terminated:
            raise _Terminated from None
        raise
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine; runtime failures are one line on stderr and exit 1."""
    try:
        return asyncio.run(_until_sigterm(main))
    except KeyboardInterrupt:
        return 130
    except _Terminated:
        return 143  # 128 + SIGTERM, as a shell reports a process it ended
    except RelayError as exc:
        _err(str(exc))
    except OSError as exc:  # BrokenPipeError on a closed stdout, among others
        _err(str(exc) or type(exc).__name__)
    return 1


def _link_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command takes: where and as whom to connect."""
    options = [
        click.option(
            "--url", default=DEFAULT_URL, envvar="RELAY_URL", show_default=True,
            show_envvar=True, help="Relay WebSocket URL.",
        ),
        click.option(
            "--token", envvar="RELAY_TOKEN", show_envvar=True,
            help="JWT, when the relay has auth on.",
        ),
        click.option(
            "--id", "peer_id", help="Peer id to register as (default: the relay picks one)."
        ),
        click.option(
            "--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
            show_default=True, help="Connect timeout, seconds.",
        ),
        click.option("-v", "--verbose", is_flag=True, help="Log what the client does."),
        click.option(
            "--transport", "transports", type=click.Choice(TRANSPORTS), multiple=True,
            help="websocket or http; repeated, the order to try them in "
            "[default: websocket, then http].",
        ),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def _payload_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """How to read the MESSAGE argument, and its event name."""
    options = [
        click.option("--json", "as_json", is_flag=True, help="MESSAGE is JSON; send it parsed."),
        click.option("--hex", "as_hex", is_flag=True, help="MESSAGE is hex; send it as bytes."),
        click.option("--ev", help="Event name."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _link(
    url: str,
    token: str | None,
    peer_id: str | None,
    timeout: float,
    verbose: bool,
    transports: tuple[str, ...],
) -> _Link:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.CRITICAL, format=f"{PROG}: %(message)s"
    )
    return _Link(url, token, peer_id, timeout, transports)


def _parse_payload(text: str, as_json: bool, as_hex: bool) -> Any:
    if as_json and as_hex:
        raise click.UsageError("give --json or --hex, not both")
    try:
        return _payload(text, as_json=as_json, as_hex=as_hex)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_STATUS,
)
def cli() -> None:
    """Talk to a relay from the terminal.

    \b
      relay-peer listen --id bob --room lobby    print what arrives
      relay-peer send --id alice bob 'hello'     send to bob
      relay-peer send --room lobby 'hi'          publish to a room
      relay-peer request bob --ev time           send a request, print the reply
      relay-peer shell --id alice                interactive prompt

    Options may come before, between or after the arguments; put a MESSAGE
    that starts with '-' after '--'. Runtime errors are one line on stderr.
    """


@cli.command(epilog=EXIT_STATUS)
@_link_options
@click.option("--room", "rooms", multiple=True, help="Join ROOM (repeatable).")
@click.option("--presence", is_flag=True, help="Show presence events in those rooms.")
@click.option("-n", "--count", type=click.IntRange(min=0), default=0, help="Exit after N messages.")
def listen(
    url: str, token: str | None, peer_id: str | None, timeout: float, verbose: bool,
    transports: tuple[str, ...],
    rooms: tuple[str, ...], presence: bool, count: int,
) -> int:  # fmt: skip
    """Print the messages that arrive (reconnects on its own)."""
    return _run(
        _listen(_link(url, token, peer_id, timeout, verbose, transports), rooms, presence, count)
    )


@cli.command(epilog=EXIT_STATUS, short_help="Send a message to peers, or publish it to a room.")
@_link_options
@_payload_options
@click.option("--room", help="Publish to ROOM instead of sending to peers.")
@click.argument("words", nargs=-1, required=True, metavar="TO... MESSAGE")
def send(
    url: str, token: str | None, peer_id: str | None, timeout: float, verbose: bool,
    transports: tuple[str, ...],
    as_json: bool, as_hex: bool, ev: str | None, room: str | None, words: tuple[str, ...],
) -> int:  # fmt: skip
    """Send MESSAGE to one or several peers, or with --room publish it to ROOM.

    \b
      relay-peer send --id alice bob 'hello'
      relay-peer send --id alice bob carol --json '{"n": 1}'
      relay-peer send --room lobby 'to the room'
    """
    if room is not None and len(words) != 1:
        raise click.UsageError("with --room give only the message")
    if room is None and len(words) < 2:
        raise click.UsageError("give a target id and a message (or --room ROOM and a message)")
    data = _parse_payload(words[-1], as_json, as_hex)
    to = words[0] if len(words) == 2 else list(words[:-1])

    def deliver(peer: Peer) -> Awaitable[Ack]:
        if room is not None:
            return peer.publish(room, data, ev=ev, echo=False)
        return peer.send(to, data, ev=ev)

    return _run(_deliver(_link(url, token, peer_id, timeout, verbose, transports), deliver))


@cli.command(epilog=EXIT_STATUS)
@_link_options
@_payload_options
@click.option(
    "--wait", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
    help="Reply timeout, seconds.",
)  # fmt: skip
@click.argument("target", metavar="TO")
@click.argument("message", required=False, metavar="[MESSAGE]")
def request(
    url: str, token: str | None, peer_id: str | None, timeout: float, verbose: bool,
    transports: tuple[str, ...],
    as_json: bool, as_hex: bool, ev: str | None, wait: float, target: str, message: str | None,
) -> int:  # fmt: skip
    """Send a request to peer TO and print its reply."""
    data = _parse_payload(message, as_json, as_hex) if message else None
    return _run(
        _request(_link(url, token, peer_id, timeout, verbose, transports), target, data, ev, wait)
    )


@cli.command(epilog=EXIT_STATUS)
@_link_options
def shell(
    url: str,
    token: str | None,
    peer_id: str | None,
    timeout: float,
    verbose: bool,
    transports: tuple[str, ...],
) -> int:
    """Interactive prompt (type help for its commands)."""
    return _run(_shell(_link(url, token, peer_id, timeout, verbose, transports)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``relay-peer``; return the exit status (see ``relay-peer --help``)."""
    try:
        code = cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # no command given: the help is the hint
        print(exc.format_message(), file=sys.stderr, flush=True)
        return exc.exit_code
    except click.UsageError as exc:
        _err(exc.format_message())
        if exc.ctx is not None:
            print(f"Try '{exc.ctx.command_path} --help'.", file=sys.stderr, flush=True)
        return exc.exit_code
    except click.ClickException as exc:
        _err(exc.format_message())
        return exc.exit_code
    except click.Abort:
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
