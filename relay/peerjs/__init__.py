"""The PeerJS-compatible endpoint: PeerJS apps use the relay as their PeerServer.

``protocol`` checks and builds PeerJS messages (pure), ``pending`` holds
messages for peers that have not connected yet, ``session`` is the hub
session of a PeerJS socket (the one place that calls the hub), and
``endpoint`` serves the REST routes and the WebSocket. See docs/peerjs.md.
"""
