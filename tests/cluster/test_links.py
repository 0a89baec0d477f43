"""Links between nodes over a backplane that loses, delays and reorders: exact answers.

Three nodes' ``Links`` exchange messages through ``LossyNet``, which drops
messages (silently or with an unknown outcome), holds some back and delivers
them after newer ones (as a paused Redis does with a closed connection's
commands), and moves a target between nodes mid-run. Whatever happens, every
send is answered exactly once, a frame answered delivered or queued arrived
exactly once, one answered with an error never arrived, and what arrived from
one sender to one target arrived in order.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from relay.broker import wire
from relay.broker.redis.links import Links
from relay.broker.redis.resp import NOT_SENT, UNKNOWN, Done
from relay.values import Answer, Delivery, Handover, LostNode, Proof, Rejoined, Undelivered

pytestmark = pytest.mark.anyio

TIMEOUT = 0.02


class Node:
    """A node's hub: holds some peers, records what it delivered."""

    def __init__(self, node_id: str, log: list[tuple[str, str, int]]) -> None:
        self.node_id = node_id
        self.peers: set[str] = set()
        self.log = log  # (target, sender, number) in delivery order, all nodes

    def deliver(
        self,
        peer_id: str,
        frame: bytes,
        undelivered: Undelivered | None,
        answer: Answer | None = None,
    ) -> Delivery:
        if peer_id not in self.peers:
            return Delivery.OFFLINE
        sender, number = frame.decode().split(":")
        self.log.append((peer_id, sender, int(number)))
        if answer is None:
            return Delivery.DELIVERED
        # As a hub does: the sender waits until the peer's host acknowledged it.
        asyncio.get_running_loop().call_soon(answer, Delivery.DELIVERED)
        return Delivery.PENDING

    def deliver_room(
        self, room: str, frame: bytes, exclude: str | None, presence_only: bool
    ) -> None:
        raise AssertionError("no rooms here")

    async def hand_over(self, peer_id: str, proof: Proof) -> Handover | None:
        raise AssertionError("no handovers here")

    def member_lost(self, room: str, peer_id: str, vacated: bool) -> None:
        raise AssertionError("no rooms here")

    def node_lost(self, lost: LostNode) -> None:
        raise AssertionError("no node dies here")

    def rejoined(self, rejoined: Rejoined) -> None:
        raise AssertionError("no node is cut off here")


class LossyNet:
    """The backplane: per-pair FIFO, with losses, late arrivals and a registry."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.links: dict[str, Links] = {}
        self.nodes: dict[str, Node] = {}
        self.queue: list[tuple[str, bytes]] = []
        self.late: list[tuple[str, bytes]] = []
        self.registry: dict[str, tuple[str, int]] = {}
        self.lossy = True
        self.tasks: set[asyncio.Task[Any]] = set()

    def add(self, node_id: str, log: list[tuple[str, str, int]]) -> None:
        node = self.nodes[node_id] = Node(node_id, log)
        scheduled = False

        def wake() -> None:
            nonlocal scheduled
            if not scheduled:
                scheduled = True
                asyncio.get_running_loop().call_soon(flush)

        def flush() -> None:
            nonlocal scheduled
            scheduled = False
            self.links[node_id].flush()

        def spawn(work: Any) -> None:
            task = asyncio.get_running_loop().create_task(work)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        self.links[node_id] = Links(
            node, f"{node_id}-1", publish=self.publish, wake=wake, lookup=self.lookup,
            alive=self.alive, spawn=spawn, timeout_seconds=TIMEOUT, give_up_seconds=60.0,
            limit=100000,
        )  # fmt: skip

    def hold(self, node_id: str, peer: str, epoch: int) -> None:
        self.nodes[node_id].peers.add(peer)
        self.links[node_id].holds[peer] = epoch
        self.registry[peer] = (node_id, epoch)

    def move(self, peer: str, to: str, epoch: int) -> None:
        old, _ = self.registry[peer]
        self.nodes[old].peers.discard(peer)
        del self.links[old].holds[peer]
        self.hold(to, peer, epoch)

    def publish(self, node: str, payload: bytes, done: Done) -> None:
        fate = self.rng.random() if self.lossy else 1.0
        if fate < 0.03:
            done(NOT_SENT)
        elif fate < 0.06:
            done(UNKNOWN)  # and it may or may not arrive
            if self.rng.random() < 0.5:
                self.queue.append((node, payload))
        elif fate < 0.09:
            done(1)  # Redis took it, the receiver's connection dropped it
        elif fate < 0.12:
            done(1)
            self.late.append((node, payload))  # arrives after newer messages
        else:
            done(1)
            self.queue.append((node, payload))

    async def lookup(self, peer: str) -> tuple[str, int] | None:
        return self.registry.get(peer)

    async def alive(self, node: str) -> bool:
        return True

    def deliver_some(self) -> None:
        queue, self.queue = self.queue, []
        if self.late and (not self.lossy or self.rng.random() < 0.2):
            queue.append(self.late.pop(0))
        for node, payload in queue:
            message = wire.decode(payload)
            if isinstance(message, wire.Batch):
                self.links[node].received(message)
            elif isinstance(message, wire.Status):
                self.links[node].status(message)


@pytest.mark.parametrize("seed", range(12))
async def test_every_send_is_answered_once_and_means_it(seed: int) -> None:
    rng = random.Random(seed)
    net = LossyNet(rng)
    log: list[tuple[str, str, int]] = []
    for node_id in ("a", "b", "c"):
        net.add(node_id, log)
    targets = ["t0", "t1", "t2"]
    for n, target in enumerate(targets):
        net.hold("b", target, 10 + n)
    answers: dict[tuple[str, int], list[Delivery]] = {}
    sent_to: dict[tuple[str, int], str] = {}

    def answer_for(key: tuple[str, int]) -> Callable[[Delivery], None]:
        answers[key] = []
        return answers[key].append

    number = 0
    epoch = 100
    for _round in range(60):
        for _ in range(rng.randrange(1, 8)):
            number += 1
            sender = rng.choice(["s0", "s1"])
            target = rng.choice(targets)
            key = (sender, number)
            sent_to[key] = target
            frame = f"{sender}:{number}".encode()
            net.links["a"].send(target, frame, (sender, number, False), answer_for(key))
        if rng.random() < 0.1:
            epoch += 1
            net.move(rng.choice(targets), rng.choice(["b", "c"]), epoch)
        await asyncio.sleep(0)  # flush
        net.deliver_some()
        await asyncio.sleep(0)
        net.deliver_some()
        if rng.random() < 0.2:
            await asyncio.sleep(TIMEOUT * 1.5)
            for links in net.links.values():
                links.tick(True)

    net.lossy = False
    for _attempt in range(200):
        if all(answers.values()) and not net.tasks:
            break
        await asyncio.sleep(TIMEOUT * 1.5)
        for links in net.links.values():
            links.tick(True)
        for _ in range(3):
            await asyncio.sleep(0)
            net.deliver_some()
    while net.late:
        net.deliver_some()  # the stragglers arrive at last: they must be refused

    not_once = [key for key, got in answers.items() if len(got) != 1]
    assert not not_once, f"not answered exactly once: {not_once}"
    arrived = {(sender, n) for _target, sender, n in log}
    assert len(arrived) == len(log), "a frame was delivered twice"
    for key, (delivery,) in answers.items():
        if delivery in (Delivery.DELIVERED, Delivery.QUEUED):
            assert key in arrived, f"{key} answered {delivery} but never arrived"
        else:
            assert key not in arrived, f"{key} answered {delivery} but arrived"
    for target in targets:
        for sender in ("s0", "s1"):
            numbers = [n for t, s, n in log if t == target and s == sender]
            assert numbers == sorted(numbers), f"{sender} -> {target} out of order"
    # Losses really happened, and so did deliveries.
    outcomes = {d for (d,) in answers.values()}
    assert Delivery.DELIVERED in outcomes and Delivery.OVERLOADED in outcomes


async def test_frames_a_restarted_node_never_got_are_peer_offline_and_cost_no_log() -> None:
    net = LossyNet(random.Random(0))
    net.lossy = False
    log: list[tuple[str, str, int]] = []
    net.add("a", log)
    net.add("b", log)
    net.hold("b", "bob", 1)
    answers: list[Delivery] = []

    def send(n: int) -> None:
        net.links["a"].send("bob", f"s:{n}".encode(), ("s", n, False), answers.append)

    async def exchange() -> None:
        for _ in range(10):
            await asyncio.sleep(0)
            net.deliver_some()

    for n in range(1000):
        send(n)
    await exchange()
    assert answers == [Delivery.DELIVERED] * 1000
    for n in range(1000, 1005):
        send(n)
    await asyncio.sleep(0)
    net.queue.clear()  # on their way to b when b died: b may have delivered them
    net.add("b", log)  # b again, a new process (incarnation) with an empty state
    net.links["b"].incarnation = "b-2"
    net.hold("b", "bob", 2)
    send(1005)
    await exchange()
    # Refused as moved (a new hold), found again, delivered; what the old b
    # had is peer-offline, not overloaded: its node died with it.
    assert answers[1000:] == [Delivery.OFFLINE] * 5 + [Delivery.DELIVERED]
    assert len(net.links["b"]._in["a"].log) <= 6  # not a thousand numbers' worth
