"""The PeerJS-compatible endpoint: PeerJS apps use the relay as their PeerServer.

``protocol`` checks and builds PeerJS messages (pure), ``pending`` holds
messages for peers that have not connected yet, ``session`` is the hub
session of a PeerJS socket (the one place that calls the hub), ``transport``
turns the hub's frames into PeerJS text on the way to the socket, and
``endpoint`` serves the REST routes and the WebSocket. See docs/peerjs.md.
"""
