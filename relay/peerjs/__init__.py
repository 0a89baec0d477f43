"""The PeerJS-compatible endpoint: PeerJS apps use the relay as their PeerServer.

``protocol`` checks and builds PeerJS messages (pure), ``pending`` holds
messages for peers that have not connected yet, ``adapter`` is the one
place that attaches a PeerJS socket to the hub, and ``endpoint`` serves the
REST routes and the WebSocket. See docs/peerjs.md.
"""
