"""Where each envelope from the relay goes.

A ``msg`` goes, in this order of preference, to a pending request it
replies to, the request handler for its ``ev`` (when it is a request), the
message handlers for its ``ev``, and otherwise to the inbox. ``ok``, ``err``
and ``pong`` settle what is in flight; ``presence`` updates the room's
members and reaches the presence handlers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Protocol

from ._handlers import Handlers, Inbox, RequestHandler
from ._inflight import InFlight
from ._rooms import Rooms
from ._wire import pack, unpack
from .errors import RelayError
from .types import Message, Presence, Undelivered

log = logging.getLogger("relay_client")


class Responder(Protocol):
    """What answers a request on behalf of a request handler (the peer)."""

    async def reply(self, request: Message, data: Any = None) -> None: ...

    async def reply_error(self, request: Message, message: str) -> None: ...


class Dispatcher:
    """Routes decoded envelopes; see the module docstring."""

    def __init__(
        self,
        inflight: InFlight,
        handlers: Handlers,
        inbox: Inbox,
        rooms: Rooms,
        responder: Responder,
    ) -> None:
        self._inflight = inflight
        self._handlers = handlers
        self._inbox = inbox
        self._rooms = rooms
        self._responder = responder

    def receive(self, frame: bytes) -> None:
        """Handle one binary frame from the relay."""
        envelope = unpack(frame)
        if envelope is None:
            log.warning("ignoring an undecodable frame from the relay")
            return
        kind = envelope["type"]
        if kind == "msg":
            self._message(envelope)
        elif kind == "ok":
            self._inflight.settle_ok(envelope)
        elif kind == "err":
            self._error(envelope)
        elif kind == "pong":
            self._inflight.settle_pong(envelope)
        elif kind == "presence":
            self._presence(envelope)
        else:
            log.debug("ignoring a %r envelope", kind)

    def _error(self, envelope: dict[str, Any]) -> None:
        unclaimed = self._inflight.settle_err(envelope)
        if isinstance(unclaimed, Undelivered):
            if not self._handlers.undelivered:
                log.warning(
                    "message %r to %r was not delivered: %s",
                    unclaimed.id,
                    unclaimed.to,
                    unclaimed.message,
                )
            self._handlers.call_all(self._handlers.undelivered, unclaimed)
        elif unclaimed is not None:
            self._handlers.error(unclaimed)

    def _presence(self, envelope: dict[str, Any]) -> None:
        room, peer, event = envelope.get("room"), envelope.get("peer"), envelope.get("event")
        if not isinstance(room, str) or not isinstance(peer, str) or not isinstance(event, str):
            log.warning("ignoring a malformed presence envelope")
            return
        raw = envelope.get("members")
        members = tuple(str(m) for m in raw) if isinstance(raw, list) else None
        presence = Presence(room, peer, event, members)
        self._rooms.apply(presence)
        self._handlers.call_all(self._handlers.presence, presence)

    def _message(self, envelope: dict[str, Any]) -> None:
        sender = envelope.get("from")
        if not isinstance(sender, str):
            log.warning("ignoring a msg without from")
            return
        ev, room = envelope.get("ev"), envelope.get("room")
        msg = Message(
            sender=sender,
            data=envelope.get("d"),
            ev=ev if isinstance(ev, str) else None,
            room=room if isinstance(room, str) else None,
            rid=envelope.get("rid"),
            re=envelope.get("re"),
        )
        if self._inflight.settle_reply(msg):
            return
        if msg.rid is not None:
            responder = self._handlers.requests.get(msg.ev)
            if responder is not None:
                self._handlers.spawn(self._answer(responder, msg))
                return
        handlers = self._handlers.messages.get(msg.ev)
        if handlers:
            self._handlers.call_all(handlers, msg)
            return
        self._inbox.put(msg)

    async def _answer(self, handler: RequestHandler, request: Message) -> None:
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            pack({"d": result})  # fail here, as the handler's error, if not encodable
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            try:
                await self._responder.reply_error(request, message)
            except RelayError as send_exc:
                log.warning("could not send error reply to %r: %s", request.sender, send_exc)
            return
        try:
            await self._responder.reply(request, result)
        except RelayError as exc:
            log.warning("could not reply to %r: %s", request.sender, exc)
