"""``relay-peer``: talk to a relay from the terminal.

::

    relay-peer listen --id bob [--room lobby]       # print what arrives
    relay-peer send --id alice bob 'hello'          # send to bob
    relay-peer send --id alice --room lobby 'hi'    # publish to a room
    relay-peer request --id alice bob --ev time     # send a request, print the reply
    relay-peer shell --id alice                     # interactive prompt

``--url`` defaults to ``$RELAY_URL``, else ``ws://127.0.0.1:8080/v1/ws``;
``--token`` to ``$RELAY_TOKEN``. Errors are one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from .errors import RelayError
from .peer import DEFAULT_URL, Peer, connect
from .types import Message, Presence, State

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


def _peer(args: argparse.Namespace, *, reconnect: bool = True) -> Any:
    return connect(
        args.url,
        id=args.id,
        token=args.token,
        reconnect=reconnect,
        open_timeout=args.timeout,
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


async def _listen(args: argparse.Namespace) -> int:
    async with _peer(args) as peer:
        _watch(peer)
        for room in args.room:
            await peer.join(room, presence=args.presence)
        where = f" in {', '.join(args.room)}" if args.room else ""
        _err(f"listening as {peer.id} on {args.url}{where} (Ctrl-C to stop)")
        seen = 0
        async for msg in peer:
            _out(format_message(msg))
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


async def _send(args: argparse.Namespace) -> int:
    words: list[str] = args.words
    if args.room is not None:
        if len(words) != 1:
            raise ValueError("with --room give only the message")
        targets: list[str] = []
    elif len(words) < 2:
        raise ValueError("give a target id and a message (or --room ROOM and a message)")
    else:
        targets = words[:-1]
    data = _payload(words[-1], as_json=args.json, as_hex=args.hex)
    async with _peer(args, reconnect=False) as peer:
        if args.room is not None:
            ack = await peer.publish(args.room, data, ev=args.ev, echo=False)
        else:
            to: str | list[str] = targets[0] if len(targets) == 1 else targets
            ack = await peer.send(to, data, ev=args.ev)
        _out("ok (queued for a resuming peer)" if ack.queued else "ok")
    return 0


async def _request(args: argparse.Namespace) -> int:
    data = _payload(args.data, as_json=args.json, as_hex=args.hex) if args.data else None
    async with _peer(args, reconnect=False) as peer:
        reply = await peer.request(args.target, data, ev=args.ev, timeout=args.wait)
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


async def _shell(args: argparse.Namespace) -> int:
    async with _peer(args) as peer:
        _watch(peer)
        _err(f"connected as {peer.id} to {args.url}; type help for commands")

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
# Entry point
# --------------------------------------------------------------------------- #


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``relay-peer``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("RELAY_URL") or DEFAULT_URL,
        help="relay WebSocket URL (default: $RELAY_URL or %(default)s)",
    )
    common.add_argument("--token", default=os.environ.get("RELAY_TOKEN"), help="JWT ($RELAY_TOKEN)")
    common.add_argument("--id", help="peer id to register as (default: the relay picks one)")
    common.add_argument(
        "--timeout", type=float, default=10.0, help="connect timeout, seconds (default: 10)"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log what the client does")

    parser = argparse.ArgumentParser(prog=PROG, description="Talk to a relay from the terminal.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen = sub.add_parser("listen", parents=[common], help="print the messages that arrive")
    listen.add_argument("--room", action="append", default=[], help="join ROOM (repeatable)")
    listen.add_argument("--presence", action="store_true", help="show presence in those rooms")
    listen.add_argument("-n", "--count", type=int, default=0, help="exit after N messages")
    listen.set_defaults(func=_listen)

    payload = argparse.ArgumentParser(add_help=False)
    kind = payload.add_mutually_exclusive_group()
    kind.add_argument("--json", action="store_true", help="the message is JSON; send it parsed")
    kind.add_argument("--hex", action="store_true", help="the message is hex; send it as bytes")
    payload.add_argument("--ev", help="event name")

    send = sub.add_parser(
        "send",
        parents=[common, payload],
        help="send a message to peers (or publish with --room)",
        usage=f"{PROG} send [options] TO [TO ...] MESSAGE | --room ROOM MESSAGE",
    )
    send.add_argument("--room", help="publish to ROOM instead of sending to peers")
    send.add_argument("words", nargs="+", metavar="TO/MESSAGE")
    send.set_defaults(func=_send)

    request = sub.add_parser("request", parents=[common, payload], help="send a request")
    request.add_argument("target", metavar="TO")
    request.add_argument("data", nargs="?", metavar="MESSAGE")
    request.add_argument("--wait", type=float, default=10.0, help="reply timeout (default: 10)")
    request.set_defaults(func=_request)

    shell = sub.add_parser("shell", parents=[common], help="interactive prompt")
    shell.set_defaults(func=_shell)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``relay-peer``; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format=f"{PROG}: %(message)s",
    )
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        code: int = asyncio.run(func(args))
        return code
    except KeyboardInterrupt:
        return 130
    except (RelayError, ValueError) as exc:
        _err(str(exc))
        return 1
    except (BrokenPipeError, OSError) as exc:
        _err(str(exc) or type(exc).__name__)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
