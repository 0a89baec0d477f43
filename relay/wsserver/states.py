"""Where a WebSocket connection is, in the order it goes through: ``RelayWebSocketProtocol.state``.

Shared by the connection, which moves through them, and its ASGI bridge, which
reads them to know what the app may send.
"""

from __future__ import annotations

from typing import Final

HANDSHAKE: Final = 0
"""Reading the HTTP request."""
CONNECTING: Final = 1
"""The app decides: accept, deny or fail."""
RESPONDING: Final = 2
"""The app is sending a denial response."""
OPEN: Final = 3
CLOSING: Final = 4
"""Our close frame is out; waiting for the peer's."""
CLOSED: Final = 5
"""Nothing more to send; waiting for TCP to end."""
LOST: Final = 6
"""The socket is gone."""
