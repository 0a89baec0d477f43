"""The state of links between nodes: frames in flight one way, numbers seen the other.

``relay.broker.redis.links`` explains the scheme (numbered frames per pair of
nodes, acks, status queries, fences); this module holds its records: a frame
until it is answered (``Sent``), where a peer was last found (``Route``), and
each link's two ends (``Outbound``, ``Inbound``), with the one-byte outcome
codes they exchange.
"""

from __future__ import annotations

from relay.broker import wire
from relay.values import Answer, Delivery, Undelivered

# Outcome codes on the wire: the Delivery values first, in this order. GONE is
# LOST as told by a receiver that started after the frame was sent: a previous
# run of that node may have had it, and died with it (the peer is offline).
DELIVERED, QUEUED, OFFLINE, OVERLOADED, MOVED, LOST, PENDING, GONE = range(8)
CODES = {Delivery.DELIVERED: DELIVERED, Delivery.QUEUED: QUEUED, Delivery.OFFLINE: OFFLINE,
         Delivery.OVERLOADED: OVERLOADED, Delivery.PENDING: PENDING}  # fmt: skip
DELIVERIES = (Delivery.DELIVERED, Delivery.QUEUED, Delivery.OFFLINE, Delivery.OVERLOADED)


class Sent:
    """One frame for a peer on another node, until it is answered."""

    __slots__ = (
        "accepted",
        "answer",
        "at",
        "epoch",
        "frame",
        "moves",
        "peer",
        "route",
        "seq",
        "undelivered",
    )

    def __init__(
        self, peer: str, frame: bytes, undelivered: Undelivered | None, answer: Answer
    ) -> None:
        self.peer = peer
        self.frame = frame
        self.undelivered = undelivered
        self.answer = answer
        self.route: Route | None = None
        self.epoch = 0
        self.seq = 0  # on its link, once sent
        self.at = 0.0
        self.moves = 0
        # The receiver took it for a live session and answers once the peer's
        # host acknowledges it (PENDING): only that node's death ends the wait.
        self.accepted = False


class Route:
    """Where a peer held by another node is, as far as this node knows."""

    __slots__ = ("epoch", "found", "inflight", "node", "returned", "waiting")

    def __init__(self) -> None:
        self.node = ""
        self.epoch = 0
        self.inflight = 0  # frames sent on this route and not answered yet
        # While the peer is being looked up: frames to send once it is found,
        # those refused as MOVED first (they were sent earlier), in order.
        self.waiting: list[Sent] | None = []
        self.returned: list[Sent] = []
        self.found: tuple[str, int] | bool | None = False  # False: lookup not done


class Outbound:
    """This node's side of its link to another node."""

    __slots__ = ("asked", "batch", "fence_due", "first", "given_up", "node", "pending", "seq")

    def __init__(self, node: str) -> None:
        self.node = node
        self.seq = 0  # the last number given
        self.pending: dict[int, Sent] = {}  # in number order (insertion order)
        self.batch: list[wire.Carried] = []  # numbered, not yet published
        self.first = 0  # the number of batch[0]
        self.asked = 0.0  # when a status query last went out
        self.fence_due = False  # frames were given up on: have the receiver fence them
        self.given_up: set[int] = set()  # answered overloaded without the receiver's word

    def low(self) -> int:
        """The lowest number still waiting for its answer."""
        return next(iter(self.pending), self.seq + 1)


class Inbound:
    """What this node took from one incarnation of another node.

    It starts at the lowest number its sender still waited for when it first
    heard from it: what was answered before is none of its business, and what
    was not, this node never got, though a previous run of it may have (GONE).
    """

    __slots__ = ("base", "incarnation", "log", "runs", "seen", "top")

    def __init__(self, incarnation: str, start: int) -> None:
        self.incarnation = incarnation
        self.top = start - 1  # frames numbered up to this are taken or fenced
        self.base = start  # the number of log[0]; the log ends at top
        self.log = bytearray()
        self.runs: list[tuple[int, bytearray]] = []  # acks to send: (first number, codes)
        self.seen = False  # taken a frame or a fence yet

    def _missed(self) -> int:
        return LOST if self.seen else GONE

    def take(self, first: int, count: int) -> int:
        """Take ``count`` frames numbered from ``first``; returns how many of them came late."""
        top = self.top
        late = min(count, max(0, top + 1 - first))
        start = first + late
        if late < count:
            if start > top + 1:
                self._extend(top + 1, bytes([self._missed()]) * (start - top - 1))
            self.seen = True
            self.top = first + count - 1
        return late

    def record(self, first: int, codes: bytearray) -> None:
        """The outcomes of the frames just taken from ``first`` on."""
        self.log += codes
        runs = self.runs
        if runs:
            start, last = runs[-1]
            if start + len(last) == first:
                last += codes
                return
        runs.append((first, codes))

    def resolve(self, seq: int, code: int) -> None:
        """The outcome of ``seq``, recorded earlier as PENDING."""
        index = seq - self.base
        if 0 <= index < len(self.log):
            self.log[index] = code
        self.runs.append((seq, bytearray((code,))))

    def fence(self, up_to: int) -> None:
        """Refuse from now on every frame numbered up to ``up_to``."""
        if up_to > self.top:
            self._extend(self.top + 1, bytes([self._missed()]) * (up_to - self.top))
            self.top = up_to
        self.seen = True

    def trim(self, low: int) -> None:
        """Forget outcomes below ``low``: their sender has them."""
        drop = min(low - self.base, len(self.log))
        if drop > 0:
            del self.log[:drop]
            self.base += drop

    def report(self, low: int) -> None:
        """Ack again every outcome from ``low`` on (the answer to a status query)."""
        first = max(low, self.base)
        codes = self.log[first - self.base :]
        if codes:
            self.runs.append((first, codes))

    def _extend(self, first: int, codes: bytes) -> None:
        self.log += codes
        self.runs.append((first, bytearray(codes)))
