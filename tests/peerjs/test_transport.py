"""The PeerJS socket's transports: direct mode on the relay's frame layer, ASGI on uvicorn's."""

from __future__ import annotations

import anyio
import pytest

from relay.peerjs.protocol import NAMESPACE
from relay.peerjs.session import PeerJSSession
from relay.peerjs.transport import DirectTextTransport
from relay.protocol.envelopes import Hello
from relay.session import Session
from relay.ws import ASGITransport
from tests.conftest import RelayFactory, RunningRelay
from tests.peerjs.client import join_peerjs, open_peerjs, peerjs_url, until

pytestmark = pytest.mark.anyio


def session_of(relay: RunningRelay, peer_id: str) -> PeerJSSession:
    peer = relay.hub.peers[NAMESPACE + peer_id]
    assert isinstance(peer.session, PeerJSSession)
    return peer.session


@pytest.mark.parametrize(
    ("ws_impl", "transport"),
    [("relay", DirectTextTransport), ("websockets-sansio", ASGITransport)],
)
async def test_the_frame_layer_serves_peerjs_in_direct_mode_uvicorns_over_asgi(
    relay_factory: RelayFactory, ws_impl: str, transport: type
) -> None:
    relay = await relay_factory(ws_impl=ws_impl)
    alice = await join_peerjs(relay, "alice")
    bob = await join_peerjs(relay, "bob")
    # on the frame layer no task and no ASGI message serve the socket: the
    # session is the connection's handler and writes to it through the adapter
    assert isinstance(session_of(relay, "alice").transport, transport)
    await alice.send({"type": "OFFER", "dst": "bob", "payload": {"sdp": "é😀", "n": [1, 2.5]}})
    assert await bob.recv() == {"type": "OFFER", "src": "alice", "dst": "bob",
                                "payload": {"sdp": "é😀", "n": [1, 2.5]}}  # fmt: skip
    await bob.send({"type": "LEAVE", "dst": "alice"})
    assert await alice.recv() == {"type": "LEAVE", "src": "bob", "dst": "alice"}


@pytest.mark.parametrize("ws_impl", ["relay", "websockets-sansio"])
async def test_what_a_client_sends_before_open_is_read_after_it(
    relay_factory: RelayFactory, ws_impl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = await relay_factory(ws_impl=ws_impl)
    bob = await join_peerjs(relay, "bob")
    register = relay.hub.register

    async def slow_register(session: Session, hello: Hello) -> bytes:
        await anyio.sleep(0.2)  # a backplane round trip, say
        return await register(session, hello)

    monkeypatch.setattr(relay.hub, "register", slow_register)
    alice = await open_peerjs(peerjs_url(relay, id="alice", token="t"))
    # sent at once after the upgrade, while the id is still being registered
    await alice.send({"type": "OFFER", "dst": "bob", "payload": {"early": True}})
    await alice.expect(type="OPEN")
    await bob.expect(type="OFFER", src="alice", payload={"early": True})


async def test_a_socket_gone_while_its_id_is_registered_leaves_nothing_behind(
    relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    register = relay.hub.register
    gone = anyio.Event()

    async def slow_register(session: Session, hello: Hello) -> bytes:
        await gone.wait()
        return await register(session, hello)

    monkeypatch.setattr(relay.hub, "register", slow_register)
    alice = await open_peerjs(peerjs_url(relay, id="alice", token="t"))
    alice.ws.transport.abort()
    await anyio.sleep(0.1)
    gone.set()
    # the id it was given is free again, and so is its admission slot
    admission = relay.app.state.relay_endpoint.admission
    await until(lambda: not relay.hub.sessions and admission.total == 0)
    assert NAMESPACE + "alice" not in relay.hub.peers
    await join_peerjs(relay, "alice")


class Connection:
    """The part of a direct-mode connection the adapter uses, recording what it is asked."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.calls: list[str] = []
        self.writing_paused = False
        self.written_bytes = 0

    def write_text(self, text: str) -> None:
        self.texts.append(text)
        self.written_bytes += len(text.encode()) + 2

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def close(self, code: int, reason: str = "") -> None:
        self.calls.append(f"close {code} {reason}")

    def abort(self) -> None:
        self.calls.append("abort")

    def unsent_bytes(self) -> int:
        return 7

    def acked_bytes(self) -> int:
        return 0

    def received_bytes(self) -> int:
        return 3


def test_the_direct_adapter_writes_each_frame_as_its_texts() -> None:
    conn = Connection()
    transport = DirectTextTransport(conn)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        transport.write(b"frame")  # before the session's translate is set
    transport.translate = lambda frame: [frame.decode()] * 2 if frame != b"answer" else []
    transport.write(b"hi")
    transport.write(b"answer")  # an answer to the socket's own send: no text
    assert conn.texts == ["hi", "hi"]
    assert transport.written_bytes == 8
    # written counts as acknowledged, as on the ASGI transport
    assert transport.acked_bytes() == 8
    assert (transport.unsent_bytes(), transport.received_bytes()) == (7, 3)
    conn.writing_paused = True
    assert transport.writing_paused
    transport.pause_reading()
    transport.resume_reading()
    transport.close(1008, "bad")
    transport.abort()
    assert conn.calls == ["pause", "resume", "close 1008 bad", "abort"]
