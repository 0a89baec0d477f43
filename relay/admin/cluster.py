"""The admin page's questions and commands, for this node and, over the broker, every other.

Each node serves five request kinds (``Broker.serve``): its figures, its
recent closes and refusals (``Journal``), its peer ids and rooms that start
with a prefix, the presence of the peers it holds among a page of a room's
members, and the commands on a peer it holds (inspect, disconnect, remove
from a room). A question about the cluster asks
every serving node at once and reports a node that does not answer in time
as unreachable, rather than failing the whole answer.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from typing import Any

import anyio
import msgpack

import relay
from relay.admin.journal import RECENT, Journal
from relay.broker.base import BrokerUnavailable, RequestFailed
from relay.hub import Hub
from relay.operator import Operator
from relay.protocol.codes import CloseCode

FIGURES = "admin-figures"
EVENTS = "admin-events"
COMMAND = "admin-command"
SEARCH = "admin-search"
PRESENCE = "admin-presence"
MATCHES = 20  # most peer ids, and most rooms, one search answers
TIMEOUT = 1.0  # seconds a node has to answer the admin page
DISCONNECT_REASON = "closed by the operator"


class AdminCluster:
    """Figures, events and commands across the cluster, as the admin page needs them."""

    def __init__(self, hub: Hub, operator: Operator, journal: Journal) -> None:
        self.hub = hub
        self.operator = operator
        self.journal = journal
        self._started = time.monotonic()

    def serve(self) -> None:
        """Answer the other nodes' admin requests about this node."""
        self.hub.broker.serve(FIGURES, self._answer_figures)
        self.hub.broker.serve(EVENTS, self._answer_events)
        self.hub.broker.serve(COMMAND, self._answer_command)
        self.hub.broker.serve(SEARCH, self._answer_search)
        self.hub.broker.serve(PRESENCE, self._answer_presence)

    def figures(self) -> dict[str, Any]:
        """This node's figures: counts and totals (rates are the page's differences)."""
        hub = self.hub
        received = sum(tally.messages for tally in hub.metrics.received.values())
        sent = sum(tally.messages for tally in hub.metrics.sent.values())
        return {
            "node": hub.node_id,
            "version": relay.__version__,
            "uptime_seconds": time.monotonic() - self._started,
            "connections": len(hub.sessions),
            "peers": len(hub.peers),
            "rooms": len(hub.rooms),
            # Only when asked (once a second per open page), never on the hot path.
            "queued_messages": sum(len(peer.queue) for peer in hub.peers.values() if peer.queue),
            "messages_in": received,
            "messages_out": sent,
            "refusals": dict(self.journal.refusals_by_code),  # totals by code
            "backplane_up": hub.broker.ready,
            "accepting": hub.accepting,
            "draining": hub.draining,
        }

    async def _answer_figures(self, body: bytes) -> bytes:
        return bytes(msgpack.packb(self.figures()))

    async def _answer_events(self, body: bytes) -> bytes:
        return bytes(msgpack.packb(list(self.journal.recent)))

    def matches(self, prefix: str) -> dict[str, list[str]]:
        """This node's peer ids and rooms that start with ``prefix``, ``MATCHES`` of each at most.

        A scan of the node's own tables, only when an operator searches (the
        page rate-limits it): nothing is indexed ahead for it.
        """
        peers = (peer for peer in self.hub.peers if peer.startswith(prefix))
        rooms = (room for room in self.hub.rooms.names() if room.startswith(prefix))
        return {"peers": heapq.nsmallest(MATCHES, peers), "rooms": heapq.nsmallest(MATCHES, rooms)}

    async def _answer_search(self, body: bytes) -> bytes:
        return bytes(msgpack.packb(self.matches(body.decode())))

    def presence_here(self, room: str, peer_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Of ``peer_ids``, those this node holds: online or resuming, watching ``room`` or not.

        ``resuming``: the link dropped and the peer waits, rooms and queue
        kept, for a resume (``seconds_left``). ``watching``: it joined ``room``
        with presence, so it hears the room's joins and leaves.
        """
        found: dict[str, dict[str, Any]] = {}
        for peer_id in peer_ids:
            state = self.operator.inspect(peer_id)
            if state is not None:
                found[peer_id] = {
                    "state": "online" if state.connected else "resuming",
                    "seconds_left": state.resume_seconds_left,
                    "watching": state.rooms.get(room, False),
                }
        return found

    async def _answer_presence(self, body: bytes) -> bytes:
        room, peer_ids = msgpack.unpackb(body)
        return bytes(msgpack.packb(self.presence_here(room, peer_ids)))

    async def presence(self, room: str, peer_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each of ``peer_ids`` (a page of ``room``'s members): its presence and node.

        ``state`` is ``online``, ``resuming`` or ``unknown`` (no node that
        answered holds it: its node is unreachable, or it just left).
        """
        local = self.presence_here(room, peer_ids)
        answers = await self._ask_all(PRESENCE, local, msgpack.packb([room, peer_ids]))
        merged: dict[str, dict[str, Any]] = {}
        for node, held in answers:
            for peer_id, entry in (held or {}).items():
                # A peer moving between nodes is held twice for a moment: online wins.
                if peer_id not in merged or entry["state"] == "online":
                    merged[peer_id] = {**entry, "node": node}
        unknown = {"state": "unknown", "seconds_left": None, "watching": None, "node": None}
        return {peer_id: merged.get(peer_id, unknown) for peer_id in peer_ids}

    async def _answer_command(self, body: bytes) -> bytes:
        command, peer_id, room = msgpack.unpackb(body)
        return bytes(msgpack.packb(await self._command(command, peer_id, room)))

    async def _command(self, command: str, peer_id: str, room: str | None) -> Any:
        if command == "inspect":
            state = self.operator.inspect(peer_id)
            if state is None:
                return None
            return {**dataclasses.asdict(state), "refusals": self.journal.refusals_of(peer_id)}
        if command == "disconnect":
            return await self.operator.disconnect(
                peer_id, CloseCode.CLOSED_BY_OPERATOR, DISCONNECT_REASON
            )
        if command == "remove" and room is not None:
            return await self.operator.remove_from_room(peer_id, room)
        raise RequestFailed(f"unknown admin command {command}")

    async def search(self, prefix: str) -> dict[str, list[str]]:
        """The cluster's peer ids and rooms that start with ``prefix`` (``MATCHES`` of each)."""
        answers = await self._ask_all(SEARCH, self.matches(prefix), prefix.encode())
        found: dict[str, set[str]] = {"peers": set(), "rooms": set()}
        for _, answer in answers:
            for kind, names in (answer or {}).items():
                if kind in found:
                    found[kind].update(str(name) for name in names)
        return {kind: sorted(names)[:MATCHES] for kind, names in found.items()}

    async def _ask_all(self, kind: str, local: Any, body: bytes = b"") -> list[tuple[str, Any]]:
        """``(node, answer)`` of this node (``local``) and every other; None: it did not answer."""
        try:
            others = await self.hub.broker.serving_nodes()
        except BrokerUnavailable:
            others = []
        answers: list[tuple[str, Any]] = [(self.hub.node_id, local)]

        async def ask(node: str) -> None:
            try:
                reply = await self.hub.broker.request(node, kind, body, TIMEOUT)
                answers.append((node, msgpack.unpackb(reply)))
            except (BrokerUnavailable, RequestFailed, ValueError):
                answers.append((node, None))

        async with anyio.create_task_group() as tasks:
            for node in others:
                tasks.start_soon(ask, node)
        return answers

    async def overview(self) -> list[dict[str, Any]]:
        """Every serving node's figures (``{"node", "unreachable": True}`` for a silent one)."""
        answers = await self._ask_all(FIGURES, self.figures())
        nodes = [
            answer if answer is not None else {"node": node, "unreachable": True}
            for node, answer in answers
        ]
        return sorted(nodes, key=lambda figures: str(figures["node"]))

    async def events(self) -> list[dict[str, Any]]:
        """The cluster's latest closes and refusals, newest first, at most ``RECENT``."""
        answers = await self._ask_all(EVENTS, list(self.journal.recent))
        merged = [{**event, "node": node} for node, events in answers if events for event in events]
        merged.sort(key=lambda event: float(event["at"]), reverse=True)
        return merged[:RECENT]

    async def inspect(self, peer_id: str) -> dict[str, Any] | None:
        """``peer_id``'s state and latest refusals on the node holding it; None when none does.

        Raises ``BrokerUnavailable`` or ``RequestFailed`` when that node cannot be asked.
        """
        state: dict[str, Any] | None = await self._anywhere("inspect", peer_id, None)
        return state

    async def disconnect(self, peer_id: str) -> bool:
        """Close ``peer_id``'s connection with 4504 (closed by the operator) wherever it is."""
        return bool(await self._anywhere("disconnect", peer_id, None))

    async def remove_from_room(self, peer_id: str, room: str) -> bool:
        """Take ``peer_id`` out of ``room`` on the node holding it."""
        return bool(await self._anywhere("remove", peer_id, room))

    async def _anywhere(self, command: str, peer_id: str, room: str | None) -> Any:
        """Run ``command`` on the node holding ``peer_id``; None when none holds it.

        Raises ``BrokerUnavailable`` or ``RequestFailed`` when that node cannot be asked.
        """
        node = await self.hub.broker.locate(peer_id)
        if node is None:
            return None
        if node == self.hub.node_id:
            return await self._command(command, peer_id, room)
        body = msgpack.packb([command, peer_id, room])
        reply = await self.hub.broker.request(node, COMMAND, body, TIMEOUT)
        try:
            return msgpack.unpackb(reply)
        except ValueError as exc:
            raise RequestFailed(f"node {node} answered {COMMAND} with garbage") from exc
