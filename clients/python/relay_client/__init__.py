"""relay_client: the Python reference peer of the relay WebSocket hub.

Quick start::

    import relay_client

    async with relay_client.connect("ws://127.0.0.1:8080/v1/ws", id="alice") as peer:
        await peer.send("bob", "hello", ev="chat")
        async for msg in peer:
            print(msg.sender, msg.ev, msg.data)
"""

from ._wire import ERROR_EV, SUBPROTOCOL
from .errors import (
    CLOSE_REASONS,
    BackendError,
    BadEnvelope,
    ConnectionClosed,
    ConnectionLost,
    Forbidden,
    IdTaken,
    InternalError,
    NotConnected,
    NotRegistered,
    OfflineBufferFull,
    Overloaded,
    PeerOffline,
    ProtocolError,
    RateLimited,
    RelayError,
    RelayTimeout,
    RelayUnavailable,
    RemoteError,
    RequestTimeout,
    RoomFull,
    ServerError,
    SessionReplaced,
    TooLarge,
    Unauthorized,
    UnknownType,
    error_from_code,
    should_reconnect,
)
from .peer import DEFAULT_URL, Peer, connect
from .types import Ack, Message, Presence, State, Undelivered, Welcome

__version__ = "0.1.0"

__all__ = [
    "CLOSE_REASONS",
    "DEFAULT_URL",
    "ERROR_EV",
    "SUBPROTOCOL",
    "Ack",
    "BackendError",
    "BadEnvelope",
    "ConnectionClosed",
    "ConnectionLost",
    "Forbidden",
    "IdTaken",
    "InternalError",
    "Message",
    "NotConnected",
    "NotRegistered",
    "OfflineBufferFull",
    "Overloaded",
    "Peer",
    "PeerOffline",
    "Presence",
    "ProtocolError",
    "RateLimited",
    "RelayError",
    "RelayTimeout",
    "RelayUnavailable",
    "RemoteError",
    "RequestTimeout",
    "RoomFull",
    "ServerError",
    "SessionReplaced",
    "State",
    "TooLarge",
    "Unauthorized",
    "Undelivered",
    "UnknownType",
    "Welcome",
    "__version__",
    "connect",
    "error_from_code",
    "should_reconnect",
]
