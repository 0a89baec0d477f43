"""The pure protocol core: bytes in, typed envelopes out, or a precise error.

Nothing in this package does I/O or keeps state between frames, so every rule
of the wire contract that needs no state is tested here without a server.
"""
