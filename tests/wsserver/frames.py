"""A raw WebSocket client for the frame-layer tests, written apart from the code under test.

``client_frame`` builds any frame a client could send, broken ones included;
``ServerFrames`` parses what a server sends back. ``RawSocket`` (blocking) and
``RawStream`` (asyncio) speak the handshake and frames over a plain socket.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from dataclasses import dataclass

TIMEOUT = 5.0


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x37\xfa\x21\x3d",
) -> bytes:
    """One frame as a client sends it (``mask=None``: unmasked, which servers must refuse)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    masked = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes((first, masked | length))
    elif length < 65536:
        head = struct.pack("!BBH", first, masked | 126, length)
    else:
        head = struct.pack("!BBQ", first, masked | 127, length)
    if mask is None:
        return head + payload
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return head + mask + body


def close_frame(code: int | None, reason: bytes = b"") -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return client_frame(0x8, payload)


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int:
        assert self.opcode == 0x8
        return struct.unpack("!H", self.payload[:2])[0] if self.payload else 1005


class ServerFrames:
    """Parses unmasked server frames out of the bytes fed to it."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next(self) -> Frame | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        assert not buf[1] & 0x80, "server frames must not be masked"
        length, start = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, start = struct.unpack("!H", buf[2:4])[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, start = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < start + length:
            return None
        frame = Frame(bool(buf[0] & 0x80), buf[0] & 0x0F, bytes(buf[start : start + length]))
        del buf[: start + length]
        return frame


def upgrade_request(
    port: int, path: str = "/", *, subprotocols: tuple[str, ...] = (), headers: str = ""
) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    return ("\r\n".join(lines) + "\r\n" + headers + "\r\n").encode()


def split_response(data: bytes) -> tuple[int, bytes, bytes] | None:
    """(status, head, rest) once ``data`` holds a whole response head."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end]
    return int(head.split(b" ", 2)[1]), head, data[end + 4 :]


class RawSocket:
    """A blocking WebSocket client over a plain socket."""

    def __init__(self, port: int, path: str = "/", *, subprotocols: tuple[str, ...] = ()) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.sendall(upgrade_request(port, path, subprotocols=subprotocols))
        data = b""
        while (parsed := split_response(data)) is None:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed during the handshake"
            data += chunk
        self.status, self.head, rest = parsed
        assert self.status == 101, self.head
        self.frames = ServerFrames()
        self.frames.feed(rest)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self) -> Frame:
        """The next server frame (``AssertionError`` if the socket ends first)."""
        while (frame := self.frames.next()) is None:
            chunk = self.sock.recv(65536)
            assert chunk, "socket ended without a frame"
            self.frames.feed(chunk)
        return frame

    def close(self) -> None:
        self.sock.close()


class RawStream:
    """An asyncio WebSocket client over a plain connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = ServerFrames()
        self.status = 0
        self.head = b""
        self.body = b""

    @classmethod
    async def open(
        cls,
        port: int,
        path: str = "/",
        *,
        subprotocols: tuple[str, ...] = (),
        headers: str = "",
        request: bytes | None = None,
        sndbuf: int | None = None,
        rcvbuf: int | None = None,
    ) -> RawStream:
        sock = socket.socket()
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        stream = cls(reader, writer)
        request = request or upgrade_request(port, path, subprotocols=subprotocols, headers=headers)
        writer.write(request)
        data = b""
        async with asyncio.timeout(TIMEOUT):
            while (parsed := split_response(data)) is None:
                chunk = await reader.read(65536)
                assert chunk, f"connection closed during the handshake: {data!r}"
                data += chunk
        stream.status, stream.head, rest = parsed
        if stream.status == 101:
            stream.frames.feed(rest)
        else:
            stream.body = rest
        return stream

    async def read_body(self) -> bytes:
        """The rest of a non-101 response, up to the server's close."""
        async with asyncio.timeout(TIMEOUT):
            return self.body + await self.reader.read()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self) -> Frame:
        async with asyncio.timeout(TIMEOUT):
            while (frame := self.frames.next()) is None:
                chunk = await self.reader.read(65536)
                assert chunk, "socket ended without a frame"
                self.frames.feed(chunk)
        return frame

    async def closed_with(self) -> Frame:
        """Read until the server's close frame; data frames before it are skipped."""
        while (frame := await self.frame()).opcode != 0x8:
            pass
        return frame

    async def eof(self) -> None:
        """Wait for the server to end the TCP connection."""
        async with asyncio.timeout(TIMEOUT):
            while await self.reader.read(65536):
                pass

    def close(self) -> None:
        self.writer.close()


async def never_reading_client(port: int) -> socket.socket:
    """A client that completes the handshake, then never reads again."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, upgrade_request(port))
    data = b""
    while split_response(data) is None:
        data += await loop.sock_recv(sock, 1)  # byte by byte: leave nothing after the head
    return sock
