"""Token verification: JWTs in ``hello.token`` and ``refresh.token``.

Auth is off (open mode) unless a key is configured: ``jwt_secret`` (HS256),
``jwt_public_key_file`` (RS256/ES256, PEM) or ``jwt_jwks_file`` (a local
JWKS, the key chosen by the token's ``kid``). Exactly one may be set.

The accepted algorithms are fixed by the configuration, never taken from the
token: a token's ``alg`` must be one of them and must fit the key's type, so
``none`` and HS256-signed-with-the-public-key (algorithm confusion) fail.
``sub`` is the peer id and must be a valid one; ``exp`` is required; ``aud``
and ``iss`` are checked when configured. The rooms claim (``rooms`` unless
configured otherwise), when present, lists the rooms (names or
``fnmatchcase`` patterns) the peer may join and publish to.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from relay.exceptions import Forbidden, Unauthorized
from relay.protocol import codec
from relay.protocol.codes import CloseCode
from relay.protocol.envelopes import Hello
from relay.settings import Settings

if TYPE_CHECKING:
    from relay.session import Session

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = frozenset({"ES256", "ES384", "ES512"})
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | RSA_ALGORITHMS | EC_ALGORITHMS
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash


class AuthConfigError(ValueError):
    """The auth settings are inconsistent or a key file cannot be used."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token grants."""

    sub: str
    exp: float  # seconds since the epoch
    rooms: tuple[str, ...] | None  # None: the token restricts no room

    def allows_room(self, room: str) -> bool:
        """Whether this token lets its peer join and publish to ``room``."""
        return self.rooms is None or any(fnmatchcase(room, pattern) for pattern in self.rooms)


def _algorithms_for(key: Any) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return EC_ALGORITHMS
    raise AuthConfigError(f"unsupported public key type {type(key).__name__}")


def _default_ec_algorithm(key: ec.EllipticCurvePublicKey) -> str:
    return {256: "ES256", 384: "ES384", 521: "ES512"}.get(key.curve.key_size, "ES256")


class TokenVerifier:
    """Verifies tokens against the configured key and rules."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        configured = [
            name
            for name in ("jwt_secret", "jwt_public_key_file", "jwt_jwks_file")
            if getattr(settings, name)
        ]
        if len(configured) != 1:
            raise AuthConfigError(
                "configure exactly one of jwt_secret, jwt_public_key_file, jwt_jwks_file"
            )
        self._clock: Callable[[], float] = clock
        self._limits = settings.codec_limits()
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._rooms_claim = settings.jwt_rooms_claim
        self._leeway = settings.jwt_leeway_seconds
        self._secret: str | None = None
        self._public_key: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        self._declared: dict[str | None, str] = {}  # kid -> the alg its JWK declares
        algorithms = {a.upper() for a in settings.jwt_algorithms}
        if "NONE" in algorithms:
            raise AuthConfigError("the none algorithm is never accepted")
        unknown = algorithms - SUPPORTED_ALGORITHMS
        if unknown:
            raise AuthConfigError(f"unsupported JWT algorithms: {', '.join(sorted(unknown))}")
        if settings.jwt_secret:
            if len(settings.jwt_secret.encode()) < MIN_SECRET_BYTES:
                raise AuthConfigError(
                    f"jwt_secret must be at least {MIN_SECRET_BYTES} bytes (HS256 key strength)"
                )
            self._secret = settings.jwt_secret
            family = HMAC_ALGORITHMS
            algorithms = algorithms or {"HS256"}
        elif settings.jwt_public_key_file:
            try:
                pem = Path(settings.jwt_public_key_file).read_bytes()
                self._public_key = load_pem_public_key(pem)
            except (OSError, ValueError, TypeError) as exc:
                raise AuthConfigError(f"cannot load jwt_public_key_file: {exc}") from exc
            family = _algorithms_for(self._public_key)
            if not algorithms:
                key = self._public_key
                algorithms = {
                    "RS256" if isinstance(key, rsa.RSAPublicKey) else _default_ec_algorithm(key)
                }
        else:
            try:
                text = Path(settings.jwt_jwks_file).read_text()
                self._jwks = jwt.PyJWKSet.from_json(text)
                # An "alg" a JWK declares binds that key to that one algorithm.
                self._declared = {
                    entry.get("kid"): entry["alg"]
                    for entry in json.loads(text).get("keys", [])
                    if isinstance(entry, dict) and isinstance(entry.get("alg"), str)
                }
            except (OSError, ValueError, AttributeError, jwt.PyJWTError) as exc:
                raise AuthConfigError(f"cannot load jwt_jwks_file: {exc}") from exc
            family = RSA_ALGORITHMS | EC_ALGORITHMS
            algorithms = algorithms or {"RS256", "ES256"}
            for jwk in self._jwks.keys:
                _algorithms_for(jwk.key)
        wrong = algorithms - family
        if wrong:
            raise AuthConfigError(
                f"algorithms {', '.join(sorted(wrong))} do not fit the configured key"
            )
        self.algorithms = frozenset(algorithms)

    def verify(self, token: str | None) -> Claims:
        """The claims of a valid ``token``; ``Unauthorized`` for anything else."""
        if not token:
            raise Unauthorized("a token is required")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Unauthorized("token algorithm not accepted")
        key = self._key_for(header)
        if key is not self._secret and alg not in _algorithms_for(key):
            raise Unauthorized("token algorithm does not fit its key")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("token issuer not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token lacks the {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("bad token signature") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        return self._claims(payload)

    def _key_for(self, header: dict[str, Any]) -> Any:
        if self._secret is not None:
            return self._secret
        if self._jwks is None:
            return self._public_key
        kid = header.get("kid")
        if kid is None and len(self._jwks.keys) == 1:
            found = self._jwks.keys[0]
        elif not isinstance(kid, str):
            raise Unauthorized("token names no key (kid)")
        else:
            for found in self._jwks.keys:
                if found.key_id == kid:
                    break
            else:
                raise Unauthorized("token names an unknown key")
        declared = self._declared.get(found.key_id)
        if declared is not None and declared != header.get("alg"):
            raise Unauthorized("token algorithm does not fit its key")
        return found.key

    def _claims(self, payload: dict[str, Any]) -> Claims:
        sub = payload.get("sub")
        try:
            self._limits.check_peer_id(sub, "sub")
        except Exception:
            raise Unauthorized("token sub is not a valid peer id") from None
        exp = payload.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
            raise Unauthorized("token exp is not a number")
        rooms: tuple[str, ...] | None = None
        if self._rooms_claim and self._rooms_claim in payload:
            listed = payload[self._rooms_claim]
            if isinstance(listed, str):
                listed = [listed]
            if not isinstance(listed, list) or not all(isinstance(r, str) for r in listed):
                raise Unauthorized(f"token claim {self._rooms_claim} must be a list of rooms")
            rooms = tuple(listed)
        assert isinstance(sub, str)
        return Claims(sub=sub, exp=float(exp), rooms=rooms)

    def authenticate(self, hello: Hello) -> Claims:
        """Check a ``hello``: a valid token whose ``sub`` is the id asked for.

        An id in one of the relay's own namespaces (``@peerjs/alice``, which
        only the relay's endpoints register) is allowed by a token for the
        bare id (``alice``); the claims returned then name the namespaced id.
        """
        claims = self.verify(hello.token)
        wanted = hello.peer_id
        if wanted is not None and wanted.startswith(codec.RESERVED_PREFIX):
            namespace, _, bare = wanted.partition("/")
            if len(namespace) < 2 or bare != claims.sub:
                raise Forbidden("the token does not allow this id")
            return dataclasses.replace(claims, sub=wanted)
        if wanted is not None and wanted != claims.sub:
            raise Forbidden("the token does not allow this id")
        return claims

    def seconds_left(self, claims: Claims) -> float:
        """Seconds until ``claims`` expire (leeway included)."""
        return claims.exp + self._leeway - self._clock()


def load_verifier(settings: Settings) -> TokenVerifier | None:
    """The verifier the settings configure, or None in open mode."""
    if not (settings.jwt_secret or settings.jwt_public_key_file or settings.jwt_jwks_file):
        return None
    return TokenVerifier(settings)


async def close_at_expiry(session: Session, verifier: TokenVerifier) -> None:
    """Close ``session`` with 4501 when its token expires, unless refreshed first."""
    while session.close_code is None and session.claims is not None:
        left = verifier.seconds_left(session.claims)
        if left <= 0:
            session.reply(codec.encode_err("unauthorized", "token expired"), "err")
            session.close(
                CloseCode.UNAUTHORIZED, "token expired", reason="expired", flush_seconds=1.0
            )
            return
        session.claims_changed.clear()
        with anyio.move_on_after(min(left, 86400.0) + 0.001):
            await session.claims_changed.wait()


def mint(
    *,
    sub: str,
    ttl_seconds: float,
    key: Any,
    algorithm: str,
    rooms: list[str] | None = None,
    rooms_claim: str = "rooms",
    audience: str | None = None,
    issuer: str | None = None,
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token for ``sub`` (``relay token`` and the tests use it)."""
    issued = int(now if now is not None else time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + math.ceil(ttl_seconds)}
    if rooms is not None:
        payload[rooms_claim] = rooms
    if audience:
        payload["aud"] = audience
    if issuer:
        payload["iss"] = issuer
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)
