import pytest

from tests.conftest import RunningRelay
from tests.peers import join_as


@pytest.mark.anyio
async def test_two_peers_talk(relay: RunningRelay) -> None:
    alice = await join_as(relay.url, "alice")
    bob = await join_as(relay.url, "bob")
    await alice.send({"type": "send", "to": "bob", "d": b"hi", "id": 1})
    await alice.expect(type="ok", id=1)
    await bob.expect(type="msg", d=b"hi")
    await alice.close()
    await bob.close()
