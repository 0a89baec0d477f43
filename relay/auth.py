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
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.exceptions import Forbidden, Unauthorized
from relay.protocol import codec
from relay.protocol.envelopes import Hello
from relay.settings import SettingError, Settings

# PyJWT and cryptography are imported where a key is in use, not here: every
# node imports this module, and a restarted node's clients wait for its
# start-up (docs/benchmarks.md has what they cost).
if TYPE_CHECKING:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = frozenset({"ES256", "ES384", "ES512"})
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | RSA_ALGORITHMS | EC_ALGORITHMS
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash

log = logging.getLogger("relay.auth")


class AuthConfigError(SettingError):
    """An auth setting is inconsistent with the others, or its key file cannot be used."""


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
    """The algorithms a public key can verify (none for an unsupported key type)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return EC_ALGORITHMS
    return frozenset()


def _default_ec_algorithm(key: ec.EllipticCurvePublicKey) -> str:
    return {256: "ES256", 384: "ES384", 521: "ES512"}.get(key.curve.key_size, "ES256")


@dataclass(frozen=True, slots=True)
class _Keys:
    """The verification keys in force, swapped whole when the key file is re-read."""

    secret: str | None = None
    public_key: Any = None
    jwks: jwt.PyJWKSet | None = None
    declared: dict[str | None, str] = field(default_factory=dict)  # kid -> its JWK's alg
    algorithms: frozenset[str] = frozenset()


class TokenVerifier:
    """Verifies tokens against the configured key and rules.

    A key file (``jwt_public_key_file`` or ``jwt_jwks_file``) is re-read by
    ``reload()`` (the CLI calls it on SIGHUP) and, for a JWKS, when a token
    names a ``kid`` the set lacks, at most once per ``jwt_jwks_reload_seconds``
    so that a flood of made-up kids cannot turn into a flood of file reads.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        configured = [
            name
            for name in ("jwt_secret", "jwt_public_key_file", "jwt_jwks_file")
            if getattr(settings, name)
        ]
        if len(configured) != 1:
            name = configured[-1] if configured else "jwt_secret"
            raise AuthConfigError(
                name,
                getattr(settings, name),
                "configure exactly one of jwt_secret, jwt_public_key_file, jwt_jwks_file",
            )
        self._clock: Callable[[], float] = clock
        self._monotonic = monotonic
        self._settings = settings
        self._limits = settings.codec_limits()
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._rooms_claim = settings.jwt_rooms_claim
        self._leeway = settings.jwt_leeway_seconds
        self._reload_interval = settings.jwt_jwks_reload_seconds
        self._key_setting = configured[0]
        self._keys = self._load()
        self._loaded_at = monotonic()

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms a token may be signed with."""
        return self._keys.algorithms

    def reload(self) -> bool:
        """Re-read the key file; on any problem keep the keys in force. True if re-read."""
        if self._key_setting == "jwt_secret":
            return False
        self._loaded_at = self._monotonic()
        try:
            self._keys = self._load()
        except AuthConfigError as exc:
            log.error("keeping the current JWT keys: %s", exc)
            return False
        count = len(self._keys.jwks.keys) if self._keys.jwks is not None else 1
        log.info("re-read %s: %d key(s)", self._key_setting, count)
        return True

    def _load(self) -> _Keys:
        """The keys the settings configure, checked against the accepted algorithms."""
        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        settings = self._settings
        name = self._key_setting
        path = getattr(settings, name)
        algorithms = {a.upper() for a in settings.jwt_algorithms}
        if "NONE" in algorithms:
            raise AuthConfigError("jwt_algorithms", "none", "the none algorithm is never accepted")
        unknown = sorted(algorithms - SUPPORTED_ALGORITHMS)
        if unknown:
            raise AuthConfigError(
                "jwt_algorithms",
                unknown[0],
                f"expected one of {', '.join(sorted(SUPPORTED_ALGORITHMS))}",
            )
        if name == "jwt_secret":
            if len(settings.jwt_secret.encode()) < MIN_SECRET_BYTES:
                raise AuthConfigError(
                    name,
                    settings.jwt_secret,
                    f"expected at least {MIN_SECRET_BYTES} bytes (HS256 key strength)",
                )
            keys = _Keys(secret=settings.jwt_secret)
            family = HMAC_ALGORITHMS
            algorithms = algorithms or {"HS256"}
        elif name == "jwt_public_key_file":
            pem = _read(name, path)
            try:
                public_key = load_pem_public_key(pem)
            except (ValueError, TypeError) as exc:
                raise AuthConfigError(name, path, f"cannot load a PEM public key: {exc}") from None
            family = _algorithms_for(public_key)
            if not family:
                raise AuthConfigError(name, path, "expected an RSA or EC public key")
            if not algorithms:
                algorithms = {
                    _default_ec_algorithm(public_key)
                    if isinstance(public_key, ec.EllipticCurvePublicKey)
                    else "RS256"
                }
            keys = _Keys(public_key=public_key)
        else:
            raw = _read(name, path)
            try:
                text = raw.decode()
                jwks = jwt.PyJWKSet.from_json(text)
                # An "alg" a JWK declares binds that key to that one algorithm.
                declared = {
                    entry.get("kid"): entry["alg"]
                    for entry in json.loads(text).get("keys", [])
                    if isinstance(entry, dict) and isinstance(entry.get("alg"), str)
                }
            except (ValueError, AttributeError, jwt.PyJWTError) as exc:
                raise AuthConfigError(name, path, f"cannot load a JWKS: {exc}") from None
            for jwk in jwks.keys:
                if not _algorithms_for(jwk.key):
                    raise AuthConfigError(
                        name, path, f"key {jwk.key_id!r}: expected an RSA or EC public key"
                    )
            family = RSA_ALGORITHMS | EC_ALGORITHMS
            algorithms = algorithms or {"RS256", "ES256"}
            keys = _Keys(jwks=jwks, declared=declared)
        wrong = sorted(algorithms - family)
        if wrong:
            raise AuthConfigError("jwt_algorithms", wrong[0], f"does not fit the key of {name}")
        return dataclasses.replace(keys, algorithms=frozenset(algorithms))

    def verify(self, token: str | None) -> Claims:
        """The claims of a valid ``token``; ``Unauthorized`` for anything else."""
        return self._claims(self.decode(token))

    def decode(self, token: str | None) -> dict[str, Any]:
        """The payload of ``token`` once its key, algorithm, ``exp``, ``nbf``, ``aud``
        and ``iss`` passed, and it has ``exp`` and ``sub``; ``Unauthorized`` otherwise.

        What the claims mean is the caller's: ``verify`` for a peer, the admin
        page (``relay.admin.auth``) for its ``relay_admin`` claim.
        """
        import jwt

        if not token:
            raise Unauthorized("a token is required")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        keys = self._keys
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in keys.algorithms:
            raise Unauthorized("token algorithm not accepted")
        key = self._key_for(keys, header)
        if key is not keys.secret and alg not in _algorithms_for(key):
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
        return payload

    def _key_for(self, keys: _Keys, header: dict[str, Any]) -> Any:
        if keys.secret is not None:
            return keys.secret
        if keys.jwks is None:
            return keys.public_key
        kid = header.get("kid")
        found: jwt.PyJWK | None
        if kid is None and len(keys.jwks.keys) == 1:
            found = keys.jwks.keys[0]
        elif not isinstance(kid, str):
            raise Unauthorized("token names no key (kid)")
        else:
            found = _find(keys.jwks, kid)
            if found is None and self._may_reload():
                self.reload()
                keys = self._keys
                found = _find(keys.jwks, kid) if keys.jwks is not None else None
            if found is None:
                raise Unauthorized("token names an unknown key")
        declared = keys.declared.get(found.key_id)
        if declared is not None and declared != header.get("alg"):
            raise Unauthorized("token algorithm does not fit its key")
        return found.key

    def _may_reload(self) -> bool:
        """Whether an unknown kid may re-read the JWKS now (once per interval at most)."""
        return self._monotonic() - self._loaded_at >= self._reload_interval

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


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AuthConfigError(name, path, f"expected a readable file ({exc.strerror})") from None


def _find(jwks: jwt.PyJWKSet, kid: str) -> jwt.PyJWK | None:
    for jwk in jwks.keys:
        if jwk.key_id == kid:
            return jwk
    return None


def load_verifier(settings: Settings) -> TokenVerifier | None:
    """The verifier the settings configure, or None in open mode."""
    if not (settings.jwt_secret or settings.jwt_public_key_file or settings.jwt_jwks_file):
        return None
    return TokenVerifier(settings)


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
    import jwt

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
