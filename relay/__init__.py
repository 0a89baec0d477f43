"""relay: a self-hosted WebSocket relay hub.

Peers open one WebSocket, register an id, and exchange msgpack envelopes
addressed to another peer, several peers or a room. The relay stamps the
sender, routes, and never interprets payloads.
"""

__version__ = "0.1.0"
