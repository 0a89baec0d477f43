"""relay-peer end to end, as subprocesses against a real relay."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgpack
import pytest
import relay_client
from anyio.abc import ByteReceiveStream, Process
from relay_client.cli import format_message, format_payload, main

from tests.terminal import with_terminal_signals

if TYPE_CHECKING:
    from tests.conftest import RunningRelay

CLI = [sys.executable, "-m", "relay_client"]
ENV = {k: v for k, v in os.environ.items() if k not in ("RELAY_URL", "RELAY_TOKEN")}
# the package may be importable here without being installed: tell the subprocesses too
ENV["PYTHONPATH"] = os.pathsep.join(
    [
        str(Path(relay_client.__file__).resolve().parents[1]),
        *filter(None, [os.environ.get("PYTHONPATH")]),
    ]
)


class Lines:
    """Line reader over a subprocess stream."""

    def __init__(self, stream: ByteReceiveStream | None) -> None:
        assert stream is not None
        self.stream = stream
        self.buffer = b""

    async def line(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive()
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


async def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    with anyio.fail_after(20):
        done = await anyio.run_process([*CLI, *args], input=stdin, check=False, env=ENV)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_payload_formatting() -> None:
    assert format_payload("hello") == "hello"
    assert format_payload("two\nlines") == "two\\nlines"
    assert format_payload(b"\x00\xff") == "<2 bytes> 00ff"
    assert format_payload(b"x" * 100).endswith("...")
    assert format_payload({"a": [1, None, True], 2: b"\x01"}) == (
        '{"a": [1, null, true], 2: <1 bytes> 01}'
    )
    assert format_payload(msgpack.ExtType(3, b"\x01")) == "<ext 3: <1 bytes> 01>"
    msg = relay_client.Message("alice", "hi", ev="chat", room="lobby")
    assert format_message(msg) == "from=alice room=lobby ev=chat: hi"


@pytest.mark.anyio
async def test_listen_prints_what_send_delivers(relay: RunningRelay) -> None:
    listen: Process = await anyio.open_process(
        [*CLI, "listen", "--url", relay.url, "--id", "bob", "--room", "lobby", "-n", "4"],
        env=ENV,
    )
    async with listen:
        out, err = Lines(listen.stdout), Lines(listen.stderr)
        with anyio.fail_after(20):
            assert (await err.line()).startswith("relay-peer: listening as bob")
        sends: list[tuple[str, ...]] = [
            ("--id", "alice", "--ev", "chat", "bob", "hello there"),
            ("--id", "alice", "--json", "bob", '{"n": [1, 2]}'),
            ("--id", "alice", "--hex", "bob", "00ff10"),
            ("--id", "carol", "--room", "lobby", "to the room"),
        ]
        for args in sends:
            code, stdout, stderr = await run("send", "--url", relay.url, *args)
            assert (code, stdout, stderr) == (0, "ok\n", "")
        with anyio.fail_after(20):
            lines = [await out.line() for _ in range(4)]
            assert await listen.wait() == 0
    assert lines == [
        "from=alice ev=chat: hello there",
        'from=alice: {"n": [1, 2]}',
        "from=alice: <3 bytes> 00ff10",
        "from=carol room=lobby: to the room",
    ]


@pytest.mark.anyio
async def test_send_uses_relay_url_from_the_environment(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="bob") as bob:
        with anyio.fail_after(20):
            done = await anyio.run_process(
                [*CLI, "send", "--id", "alice", "bob", "via env"],
                env={**ENV, "RELAY_URL": relay.url},
                check=False,
            )
        assert done.returncode == 0, done.stderr
        with anyio.fail_after(5):
            assert (await bob.recv()).data == "via env"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "command",
    [
        ["send", "--id", "alice", "bob", "hello"],
        ["listen", "--id", "bob"],
        ["shell", "--id", "bob"],
    ],
)
async def test_relay_down_is_one_line_and_exit_1(command: list[str]) -> None:
    url = f"ws://127.0.0.1:{_free_port()}/v1/ws"
    code, stdout, stderr = await run(*command, "--url", url)
    assert code == 1
    assert stdout == ""
    assert stderr == f"relay-peer: cannot reach relay at {url}: connection refused\n"


@pytest.mark.anyio
async def test_send_errors_are_one_line(relay: RunningRelay) -> None:
    code, _, stderr = await run("send", "--url", relay.url, "--id", "alice", "ghost", "x")
    assert code == 1
    assert stderr.startswith("relay-peer: peer-offline") and stderr.count("\n") == 1
    code, _, stderr = await run("send", "--url", relay.url, "--json", "bob", "{not json")
    assert code == 2 and stderr.startswith("relay-peer: invalid JSON payload")
    code, _, stderr = await run("send", "--url", relay.url, "bob")
    assert code == 2 and "give a target id and a message" in stderr


@pytest.mark.anyio
@pytest.mark.parametrize(
    "args",
    [
        ["--id", "alice", "bob", "--json", '{"a": 1}'],
        ["bob", "--json", '{"a": 1}', "--id", "alice"],
        ["--json", "bob", '{"a": 1}', "--id", "alice", "--ev", "chat"],
    ],
)
async def test_send_takes_options_anywhere(relay: RunningRelay, args: list[str]) -> None:
    async with relay_client.connect(relay.url, id="bob") as bob:
        code, stdout, stderr = await run("send", *args, "--url", relay.url)
        assert (code, stdout, stderr) == (0, "ok\n", "")
        with anyio.fail_after(5):
            msg = await bob.recv()
    assert (msg.sender, msg.data) == ("alice", {"a": 1})


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["send", "bob"], "give a target id and a message"),
        (["send", "--room", "lobby", "bob", "x"], "with --room give only the message"),
        (["send", "bob", "x", "--bogus"], "No such option '--bogus'"),
        (["send", "--json", "bob", "{not json"], "invalid JSON payload"),
        (["send", "--hex", "bob", "zz"], "invalid hex payload"),
        (["send", "--json", "--hex", "bob", "00"], "give --json or --hex, not both"),
        (["send", "--timeout", "0", "bob", "x"], "Invalid value for '--timeout'"),
        (["request"], "Missing argument 'TO'"),
        (["listen", "-n", "-1"], "Invalid value for '-n' / '--count'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2_before_connecting(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --url points nowhere: a usage error must be found before any connection attempt
    code = main([*args, "--url", "ws://127.0.0.1:9/v1/ws"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    first, hint = err.splitlines()
    assert first.startswith("relay-peer: ") and error in first
    assert hint.startswith("Try 'relay-peer") and hint.endswith(" --help'.")


def test_help_states_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "1    a runtime failure" in help_text
    assert "2    a usage error" in help_text
    assert main(["send", "-h"]) == 0
    assert "2    a usage error" in capsys.readouterr().out
    assert main([]) == 2  # no command: the help, as a usage error
    assert "Commands:" in capsys.readouterr().err


@pytest.mark.anyio
async def test_request_command_prints_the_reply(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="bob") as bob:
        bob.on_request("echo", lambda msg: {"echo": msg.data})
        code, stdout, stderr = await run(
            "request", "--url", relay.url, "--id", "alice", "bob", "hi", "--ev", "echo"
        )
    assert (code, stdout, stderr) == (0, '{"echo": "hi"}\n', "")


@pytest.mark.anyio
async def test_transport_option_picks_the_http_transport(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="bob") as bob:
        bob.on_request("echo", lambda msg: {"echo": msg.data})
        code, stdout, stderr = await run(
            "request", "--url", relay.url, "--id", "alice", "bob", "hi", "--ev", "echo",
            "--transport", "http", "-v",
        )  # fmt: skip
    assert (code, stdout) == (0, '{"echo": "hi"}\n')
    assert "registered as 'alice' over http" in stderr
    code, _, stderr = await run("send", "--url", relay.url, "--transport", "pigeon", "bob", "x")
    assert code == 2 and "'pigeon' is not one of 'websocket', 'http'" in stderr


@pytest.mark.anyio
async def test_shell_runs_commands_from_stdin(relay: RunningRelay) -> None:
    async with relay_client.connect(relay.url, id="bob") as bob:
        await bob.join("lobby")
        script = b"\n".join(
            [
                b"help",
                b"join lobby presence",
                b"rooms",
                b"send bob hi bob",
                b"send -j bob [1, 2]",
                b"pub lobby hi room",
                b"send ghost nobody",
                b"ping",
                b"bogus",
                b"leave lobby",
                b"quit",
            ]
        )
        code, stdout, stderr = await run("shell", "--url", relay.url, "--id", "alice", stdin=script)
        assert code == 0, stderr
        with anyio.fail_after(5):
            got: list[Any] = [(await bob.recv()).data for _ in range(3)]
    assert got == ["hi bob", [1, 2], "hi room"]
    assert "send [-j] TO[,TO...] TEXT" in stdout
    assert "joined lobby" in stdout
    assert "error: peer-offline" in stdout
    assert "pong in" in stdout
    assert "unknown command 'bogus'" in stdout
    assert "left lobby" in stdout
    assert "Traceback" not in stderr


@pytest.mark.anyio
async def test_listen_exits_1_with_one_line_on_a_terminal_close(relay: RunningRelay) -> None:
    listen: Process = await anyio.open_process(
        [*CLI, "listen", "--url", relay.url, "--id", "bob"], env=ENV
    )
    async with listen:
        err = Lines(listen.stderr)
        with anyio.fail_after(20):
            assert (await err.line()).startswith("relay-peer: listening as bob")
        await relay.hub.disconnect("bob", code=4500, reason="too many bad envelopes")
        with anyio.fail_after(20):
            assert await listen.wait() == 1
            line = await err.line()
            assert listen.stderr is not None
            rest = b"".join([chunk async for chunk in listen.stderr])
    assert line == "relay-peer: connection closed with code 4500 (too many bad envelopes)"
    assert rest == b""


async def listen_then_stop(relay: RunningRelay, signum: signal.Signals) -> tuple[int, bytes]:
    """Run ``relay-peer listen --id bob`` until it listens, then ``signum``: status and stderr."""
    listen: Process = await anyio.open_process(
        with_terminal_signals([*CLI, "listen", "--url", relay.url, "--id", "bob"]), env=ENV
    )
    async with listen:
        err = Lines(listen.stderr)
        with anyio.fail_after(20):
            assert (await err.line()).startswith("relay-peer: listening as bob")
        listen.send_signal(signum)
        with anyio.fail_after(20):
            status = await listen.wait()
            assert listen.stderr is not None
            rest = b"".join([chunk async for chunk in listen.stderr])
    return status, rest


@pytest.mark.anyio
async def test_listen_stops_quietly_on_ctrl_c(relay: RunningRelay) -> None:
    status, rest = await listen_then_stop(relay, signal.SIGINT)
    assert status == 130
    assert b"Traceback" not in rest


@pytest.mark.anyio
async def test_listen_stopped_with_sigterm_frees_its_id_at_once(relay: RunningRelay) -> None:
    status, rest = await listen_then_stop(relay, signal.SIGTERM)
    assert status == 143
    assert rest == b""
    # the session ended as with Ctrl-C: no resume window holds the id
    async with relay_client.connect(relay.url, id="bob", reconnect=False) as again:
        assert again.id == "bob"
