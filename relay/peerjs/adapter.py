"""A PeerJS socket as a hub peer: the one place that calls the hub.

A PeerJS connection registers with the hub as the peer ``@peerjs/<id>``
(``relay.peerjs.protocol.NAMESPACE``), so it shares the hub's limits,
metrics, queues, drain and cluster routing with native peers, in an id
namespace native hellos cannot reach (the codec refuses ids starting
with ``@``). The hub is used through these calls only:

- ``Hub.opened(session)`` when the socket is accepted;
- ``Hub.register(session, Hello(peer_id="@peerjs/<id>", token, resume))``
  for the id in the query string (``token``: the JWT when auth is on;
  ``resume``: the secret of this node's earlier session with the same
  PeerJS token, so a reconnect takes over a half-open socket);
- ``Hub.send(peer, Send(to="@peerjs/<dst>", d_raw, ev=<PeerJS type>))``
  for each relayed message;
- ``Hub.join(peer, Join(room="@peerjs"))`` when discovery is on, and
  ``hub.broker.members("@peerjs")`` to list the PeerJS ids;
- ``Hub.closed(session, 1000)`` when the socket ends.

The session is the hub's own ``relay.session.Session``; its ``Transport``
is ``TextTransport``, which turns the hub's msgpack frames into PeerJS JSON
text frames.
"""

from __future__ import annotations

import logging
import time

import anyio
import msgpack
from starlette.websockets import WebSocket

from relay.auth import close_at_expiry
from relay.broker import BrokerUnavailable
from relay.exceptions import RelayError
from relay.hub import Hub
from relay.peerjs import protocol
from relay.peerjs.protocol import DISCOVERY_ROOM, NAMESPACE, Relayed
from relay.protocol.codes import CloseCode
from relay.protocol.envelopes import Hello, Join, Send
from relay.session import Session

log = logging.getLogger("relay.peerjs")


class TextTransport:
    """A session's ``Transport`` that writes PeerJS JSON text frames.

    The session's writer hands it the hub's frames (``send_bytes``); the
    endpoint writes its own messages (``OPEN``, ``ERROR``, ``EXPIRE``) with
    ``send_text``. A lock keeps the two from interleaving on the socket.
    """

    def __init__(self, websocket: WebSocket, peer_id: str) -> None:
        self._websocket = websocket
        self._peer_id = peer_id
        self._lock = anyio.Lock()

    async def send_bytes(self, data: bytes) -> None:
        for text in protocol.from_relay(data, self._peer_id):
            await self.send_text(text)

    async def send_text(self, text: str) -> None:
        async with self._lock:
            await self._websocket.send_text(text)

    async def close(self, code: int, reason: str) -> None:
        await self._websocket.close(code, reason)


class HubPeer:
    """One PeerJS socket attached to the hub."""

    def __init__(self, hub: Hub, transport: TextTransport) -> None:
        self.hub = hub
        self.session = Session(hub, transport, time.monotonic)
        hub.opened(self.session)

    @property
    def closing(self) -> bool:
        """Whether the session is being closed (its socket will be soon)."""
        return self.session.close_code is not None

    async def register(self, peer_id: str, token: str | None, resume: str | None) -> str:
        """Claim ``peer_id`` in the PeerJS namespace; returns the secret that resumes it.

        Raises the hub's refusals (``IdTaken``, ``Unauthorized``, ``Forbidden``)
        and ``BrokerUnavailable``.
        """
        hello = Hello(peer_id=NAMESPACE + peer_id, token=token, resume=resume)
        welcome = msgpack.unpackb(await self.hub.register(self.session, hello))
        return str(welcome["resume"])

    async def join_discovery(self) -> None:
        """Be listed by ``GET {path}/{key}/peers`` (a hub room, so the whole cluster sees it)."""
        peer = self.session.peer
        assert peer is not None, "after register()"
        try:
            await self.hub.join(peer, Join(room=DISCOVERY_ROOM))
        except (RelayError, BrokerUnavailable) as exc:  # room-full, forbidden by the token
            log.info("PeerJS peer %s not listed for discovery: %s", peer.id, exc)

    async def send(self, message: Relayed) -> None:
        """Relay ``message``; ``PeerOffline``, ``Overloaded`` or ``BrokerUnavailable`` if not."""
        peer = self.session.peer
        assert peer is not None, "after register()"
        request = Send(
            to=NAMESPACE + message.dst, d_raw=protocol.to_relay(message), ev=message.type.value
        )
        await self.hub.send(peer, request)

    async def write(self) -> None:
        """Run the session's writer: the hub's queue for this peer, into the socket."""
        try:
            await self.session.write()
        except Exception:
            # The socket is gone (the reader sees the disconnect) or broken.
            log.debug("PeerJS writer stopped", exc_info=True)

    async def expire_with_token(self) -> None:
        """With auth on, close the session when its token expires (PeerJS cannot refresh)."""
        if self.hub.auth is not None and self.session.claims is not None:
            await close_at_expiry(self.session, self.hub.auth)

    def close(self, code: int, message: str, *, reason: str) -> None:
        """Close the session: the writer stops and closes the socket with ``code``."""
        self.session.close(code, message, reason=reason)

    async def closed(self) -> None:
        """The socket ended: the id is freed at once."""
        # PeerJS clients cannot resume, so whatever closed the socket the
        # hub is told the peer said goodbye; a PeerJS reconnect then finds
        # its id free on any node, as with peerjs-server.
        self.session.close_code = None
        await self.hub.closed(self.session, CloseCode.NORMAL)


def held_locally(hub: Hub, peer_id: str) -> bool:
    """Whether this node holds the PeerJS id ``peer_id``."""
    return NAMESPACE + peer_id in hub.peers


async def discoverable(hub: Hub) -> list[str]:
    """The PeerJS ids listed for discovery, on every node."""
    members = await hub.broker.members(DISCOVERY_ROOM)
    return sorted(m.removeprefix(NAMESPACE) for m in members if m.startswith(NAMESPACE))
