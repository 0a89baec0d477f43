"""Who may use the /admin page: the password, the session cookie, CSRF tokens, throttling.

A login with ``admin_password``, or with an admin JWT (``admin_jwt``: a token
the hello-token keys verify, with the claim ``relay_admin``: ``operate`` or
``read``), sets a session cookie: an expiry, a random session id, who logged
in and the role, signed with HMAC-SHA256 under a key derived (PBKDF2, once at
startup) from ``admin_session_secret``, else the password, else
``jwt_secret``, so every node configured alike accepts every node's cookies,
and changing that key ends every session.
An action needs that cookie and the session's CSRF token (an HMAC of its id)
in a header. HTTP Basic (user ``admin``) with the same password is accepted
for reading only. Failed logins are throttled per client address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import anyio.to_thread
import argon2
import bcrypt

from relay.auth import TokenVerifier
from relay.exceptions import RelayError
from relay.limits import TokenBucket
from relay.settings import Settings

COOKIE = "relay_admin"
CLAIM = "relay_admin"  # an admin JWT's claim: OPERATE or READ
OPERATE, READ = "operate", "read"
CSRF_HEADER = "x-csrf-token"
USER = "admin"
_KEY_SALT = b"relay admin session key v1"
_KEY_ROUNDS = 100_000  # once per node at startup: a stolen cookie is no cheap password oracle
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_ARGON2_PREFIXES = ("$argon2id$", "$argon2i$", "$argon2d$")
HASH_CHECKS = 2  # bcrypt or argon2 checks running at once on a node


def _matches_hash(given: str, hashed: str) -> bool:
    """Whether ``given`` is the password of a bcrypt or argon2 ``hashed`` (slow on purpose)."""
    if hashed.startswith(_ARGON2_PREFIXES):
        try:
            return bool(argon2.PasswordHasher().verify(hashed, given))
        except argon2.exceptions.Argon2Error:  # a mismatch, or a malformed hash
            return False
    try:
        return bool(bcrypt.checkpw(given.encode(), hashed.encode()))
    except ValueError:  # longer than bcrypt's 72 bytes, or a malformed hash
        return False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class AdminSession:
    """A logged-in operator, as its cookie says."""

    sid: str
    expires: float  # time.time() at which the cookie stops being accepted
    who: str  # "admin" (the password), or an admin JWT's sub
    role: str  # OPERATE or READ

    @property
    def may_act(self) -> bool:
        """Whether this login may run actions (read-only mode aside)."""
        return self.role == OPERATE


class Login(NamedTuple):
    """Who logs in, with which role, until when at most (None: the session's lifetime)."""

    who: str
    role: str
    until: float | None = None


PASSWORD_LOGIN = Login("admin", OPERATE)


class Throttle:
    """A token bucket per client address, for the addresses seen last (bounded)."""

    def __init__(
        self, rate: float, burst: int, size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._size = max(1, size)
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, address: str) -> TokenBucket:
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst, self._clock)
            self._buckets[address] = bucket
            if len(self._buckets) > self._size:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        return bucket

    def allowed(self, address: str) -> bool:
        """Whether ``address`` has a token left (taking none)."""
        return self._bucket(address).tokens() >= 1.0

    def take(self, address: str) -> bool:
        """Spend one of ``address``'s tokens; False when it has none."""
        return self._bucket(address).take()

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` has a token again."""
        return self._bucket(address).seconds_until_token()


class AdminAuth:
    """Checks the admin password and issues and verifies session cookies and CSRF tokens."""

    # At most 5 failed logins in a row per address, then one every 12 s.
    LOGIN_RATE = 1 / 12
    LOGIN_BURST = 5

    def __init__(
        self,
        settings: Settings,
        verifier: TokenVerifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._password = settings.admin_password
        self._hashed = settings.admin_password.startswith(_BCRYPT_PREFIXES + _ARGON2_PREFIXES)
        # Settings has checked that admin JWTs come with a key to derive from.
        material = settings.admin_session_secret or settings.admin_password or settings.jwt_secret
        self._key = hashlib.pbkdf2_hmac("sha256", material.encode(), _KEY_SALT, _KEY_ROUNDS)
        self._verifier = verifier if settings.admin_jwt else None
        self._lifetime = settings.admin_session_seconds
        self._clock = clock
        self.failures = Throttle(self.LOGIN_RATE, self.LOGIN_BURST, settings.ip_table_size)
        # The digest of the last password bcrypt accepted: HTTP Basic sends it
        # with every request, and bcrypt is slow on purpose.
        self._verified: bytes | None = None
        # Slow hash checks at once, whatever the addresses: the failure throttle
        # is per address, and each check holds a thread and a core for a while.
        self._hashing: anyio.CapacityLimiter | None = None  # made in the event loop

    async def check_password(self, given: str) -> bool:
        """Whether ``given`` is the admin password (compared in constant time)."""
        if not self._password:
            return False  # admin JWTs only: no password opens the page
        digest = hashlib.sha256(given.encode()).digest()
        if not self._hashed:
            return hmac.compare_digest(digest, hashlib.sha256(self._password.encode()).digest())
        if self._verified is not None and hmac.compare_digest(digest, self._verified):
            return True
        if self._hashing is None:
            self._hashing = anyio.CapacityLimiter(HASH_CHECKS)
        ok = await anyio.to_thread.run_sync(
            _matches_hash, given, self._password, limiter=self._hashing
        )
        if ok:
            self._verified = digest
        return ok

    async def check_basic(self, header: str | None) -> bool:
        """Whether an ``Authorization: Basic`` header carries user admin and the password."""
        if header is None:
            return False
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = (
                base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            )
        except (ValueError, UnicodeDecodeError):
            return False
        return (
            bool(sep)
            and hmac.compare_digest(user.encode(), USER.encode())
            and (await self.check_password(password))
        )

    def check_token(self, token: str) -> Login | None:
        """Who an admin JWT logs in, or None: no admin JWTs, an invalid one, no admin claim."""
        if self._verifier is None:
            return None
        try:
            payload = self._verifier.decode(token)
        except RelayError:
            return None
        role, sub, exp = payload.get(CLAIM), payload.get("sub"), payload.get("exp")
        if role not in (OPERATE, READ) or not isinstance(sub, str):
            return None
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return None
        # short and printable (no line breaks): it goes into the log line of every action
        who = "".join(char for char in sub[:64] if char.isprintable()) or "?"
        return Login(who, str(role), float(exp))

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def issue(self, login: Login = PASSWORD_LOGIN) -> tuple[str, AdminSession]:
        """A new session for ``login`` and the cookie value that carries it.

        It ends after ``admin_session_seconds``, or when the login's token does.
        """
        expires = self._clock() + self._lifetime
        if login.until is not None:
            expires = min(expires, login.until)
        session = AdminSession(secrets.token_urlsafe(16), expires, login.who, login.role)
        payload = json.dumps(
            {"sid": session.sid, "exp": expires, "who": login.who, "role": login.role}
        ).encode()
        return f"{_b64(payload)}.{self._sign(payload)}", session

    def session(self, cookie: str | None) -> AdminSession | None:
        """The session ``cookie`` carries, or None if it is missing, forged or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        encoded, signature = cookie.split(".")
        try:
            payload = _unb64(encoded)
        except ValueError:
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        fields = json.loads(payload)  # signed by us: well-formed
        if fields["exp"] <= self._clock():
            return None
        return AdminSession(fields["sid"], fields["exp"], fields["who"], fields["role"])

    def csrf_token(self, session: AdminSession) -> str:
        """The CSRF token of ``session`` (what an action must carry in X-CSRF-Token)."""
        return self._sign(b"csrf:" + session.sid.encode())

    def check_csrf(self, session: AdminSession, token: str | None) -> bool:
        """Whether ``token`` is ``session``'s CSRF token."""
        return token is not None and hmac.compare_digest(
            token.encode(), self.csrf_token(session).encode()
        )

    def seconds_left(self, session: AdminSession) -> int:
        """Whole seconds until ``session`` ends (a cookie's Max-Age), at least 1."""
        return max(1, math.ceil(session.expires - self._clock()))
