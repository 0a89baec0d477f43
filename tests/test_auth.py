"""JWT auth: every hostile hello and refresh gets its exact refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from click.testing import CliRunner

from relay.auth import AuthConfigError, TokenVerifier
from relay.broker import MemoryBroker
from relay.broker.memory import MemoryCluster
from relay.cli import main
from relay.exceptions import Unauthorized
from relay.settings import Settings
from tests import jwtkit
from tests.conftest import RelayFactory, RunningRelay
from tests.jwtkit import SECRET, by_hand, claims, hs256
from tests.peers import join_as, open_peer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def secured(relay_factory: RelayFactory) -> RunningRelay:
    return await relay_factory(jwt_secret=SECRET)


async def refused(url: str, hello: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Send ``hello``; return the err and the close code."""
    peer = await open_peer(url)
    await peer.send({"type": "hello", **hello})
    received, code = await peer.drain()
    assert len(received) == 1, received
    assert received[0]["type"] == "err", received
    return received[0], code


async def assert_unauthorized(url: str, hello: dict[str, Any]) -> str:
    err, code = await refused(url, hello)
    assert (err["code"], code) == ("unauthorized", 4501)
    return str(err["msg"])


async def assert_forbidden(url: str, hello: dict[str, Any]) -> None:
    err, code = await refused(url, hello)
    assert (err["code"], code) == ("forbidden", 1008)


# --- hello refusals ----------------------------------------------------------


async def test_hello_without_a_token_is_unauthorized(secured: RunningRelay) -> None:
    assert "required" in await assert_unauthorized(secured.url, {"id": "alice"})
    await assert_unauthorized(secured.url, {})


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "", "eyJhbGciOiJIUzI1NiJ9..", "x" * 5000],
)
async def test_garbage_tokens_are_unauthorized(secured: RunningRelay, token: str) -> None:
    await assert_unauthorized(secured.url, {"id": "alice", "token": token})


async def test_an_expired_token_is_unauthorized(secured: RunningRelay) -> None:
    msg = await assert_unauthorized(secured.url, {"id": "alice", "token": hs256(ttl=-10)})
    assert msg == "token expired"


async def test_a_token_not_yet_valid_is_unauthorized(secured: RunningRelay) -> None:
    token = jwt.encode(claims(nbf=int(claims()["iat"]) + 600), SECRET, algorithm="HS256")
    msg = await assert_unauthorized(secured.url, {"id": "alice", "token": token})
    assert msg == "token not yet valid"


async def test_a_token_signed_with_another_secret_is_unauthorized(secured: RunningRelay) -> None:
    token = hs256(secret="another-secret-another-secret-another!!")
    msg = await assert_unauthorized(secured.url, {"id": "alice", "token": token})
    assert msg == "bad token signature"


async def test_a_tampered_payload_is_unauthorized(secured: RunningRelay) -> None:
    header, _payload, signature = hs256("bob").split(".")
    payload = jwtkit.b64(b'{"sub": "alice", "exp": 9999999999}')
    forged = f"{header}.{payload}.{signature}"
    await assert_unauthorized(secured.url, {"id": "alice", "token": forged})


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_unauthorized(secured: RunningRelay, alg: str) -> None:
    token = by_hand({"alg": alg, "typ": "JWT"}, claims(), None)
    msg = await assert_unauthorized(secured.url, {"id": "alice", "token": token})
    assert msg == "token algorithm not accepted"


async def test_algorithm_confusion_hs256_keyed_with_the_public_key(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    key = jwtkit.rsa_key()
    relay = await relay_factory(jwt_public_key_file=jwtkit.write_public_key(tmp_path, key))
    forged = by_hand({"alg": "HS256", "typ": "JWT"}, claims(), jwtkit.public_pem(key))
    msg = await assert_unauthorized(relay.url, {"id": "alice", "token": forged})
    assert msg == "token algorithm not accepted"
    # the genuine RS256 token is accepted
    genuine = jwt.encode(claims(), key, algorithm="RS256")
    alice = await join_as(relay.url, "alice", token=genuine)
    assert alice.id == "alice"


async def test_wrong_audience_and_issuer_are_unauthorized(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(jwt_secret=SECRET, jwt_audience="relay", jwt_issuer="backend")
    wrong_aud = hs256(aud="other", iss="backend")
    assert await assert_unauthorized(relay.url, {"token": wrong_aud}) == (
        "token audience not accepted"
    )
    wrong_iss = hs256(aud="relay", iss="mallory")
    assert await assert_unauthorized(relay.url, {"token": wrong_iss}) == (
        "token issuer not accepted"
    )
    no_aud = hs256(iss="backend")
    assert "aud" in await assert_unauthorized(relay.url, {"token": no_aud})
    ok = await join_as(relay.url, "alice", token=hs256(aud="relay", iss="backend"))
    assert ok.id == "alice"


async def test_a_token_without_exp_is_unauthorized(secured: RunningRelay) -> None:
    token = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    msg = await assert_unauthorized(secured.url, {"id": "alice", "token": token})
    assert msg == "token lacks the exp claim"


async def test_a_token_without_sub_is_unauthorized(secured: RunningRelay) -> None:
    token = jwt.encode({"exp": claims()["exp"]}, SECRET, algorithm="HS256")
    assert await assert_unauthorized(secured.url, {"token": token}) == "token lacks the sub claim"


@pytest.mark.parametrize("sub", ["@server", "has space", "", "x" * 65])
async def test_a_sub_that_is_no_valid_peer_id_is_unauthorized(
    secured: RunningRelay, sub: str
) -> None:
    msg = await assert_unauthorized(secured.url, {"token": hs256(sub)})
    assert msg == "token sub is not a valid peer id"


async def test_a_bad_rooms_claim_is_unauthorized(secured: RunningRelay) -> None:
    await assert_unauthorized(secured.url, {"token": hs256(rooms=5)})
    await assert_unauthorized(secured.url, {"token": hs256(rooms=["ok", 3])})


async def test_a_token_for_bob_cannot_register_alice(secured: RunningRelay) -> None:
    await assert_forbidden(secured.url, {"id": "alice", "token": hs256("bob")})


async def test_hello_without_id_registers_as_sub(secured: RunningRelay) -> None:
    peer = await join_as(secured.url, token=hs256("carol"))
    assert peer.id == "carol"


async def test_open_mode_ignores_tokens(relay: RunningRelay) -> None:
    peer = await join_as(relay.url, "alice", token="not even a jwt")
    assert peer.id == "alice"
    await peer.send({"type": "refresh", "token": "whatever", "id": 1})
    await peer.expect(type="ok", id=1)


# --- takeover ------------------------------------------------------------------


async def test_a_valid_token_for_the_same_id_takes_over(secured: RunningRelay) -> None:
    alice = await join_as(secured.url, "alice", token=hs256())
    await alice.request({"type": "join", "room": "r", "id": 1})
    again = await join_as(secured.url, "alice", token=hs256())
    assert again.welcome["resumed"] is True
    assert await alice.closed() == 4503
    bob = await join_as(secured.url, "bob", token=hs256("bob"))
    await bob.request({"type": "pub", "room": "r", "d": "hi", "id": 1})
    await again.expect(type="msg", d="hi", room="r")


async def test_another_subject_cannot_take_a_held_id(secured: RunningRelay) -> None:
    alice = await join_as(secured.url, "alice", token=hs256())
    await assert_forbidden(secured.url, {"id": "alice", "token": hs256("mallory")})
    # with alice's stolen resume secret, but mallory's own token
    stolen = alice.welcome["resume"]
    await assert_forbidden(
        secured.url, {"id": "alice", "token": hs256("mallory"), "resume": stolen}
    )
    # and without any token at all
    await assert_unauthorized(secured.url, {"id": "alice", "resume": stolen})
    assert await alice.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}


async def test_resume_secret_still_works_with_a_valid_token(secured: RunningRelay) -> None:
    alice = await join_as(secured.url, "alice", token=hs256())
    again = await join_as(secured.url, "alice", token=hs256(), resume=alice.welcome["resume"])
    assert again.welcome["resumed"] is True
    assert await alice.closed() == 4503


async def test_cross_node_takeover_with_a_token(relay_factory: RelayFactory) -> None:
    shared = MemoryCluster()
    one = await relay_factory(broker=MemoryBroker(shared), node_id="n1", jwt_secret=SECRET)
    two = await relay_factory(broker=MemoryBroker(shared), node_id="n2", jwt_secret=SECRET)
    alice = await join_as(one.url, "alice", token=hs256())
    await alice.request({"type": "join", "room": "r", "id": 1})
    # another subject on the other node: refused, alice undisturbed
    await assert_forbidden(two.url, {"id": "alice", "token": hs256("mallory")})
    moved = await join_as(two.url, "alice", token=hs256())
    assert moved.welcome["node"] == "n2"
    assert moved.welcome["resumed"] is True
    assert await alice.closed() == 4503
    bob = await join_as(one.url, "bob", token=hs256("bob"))
    await bob.request({"type": "pub", "room": "r", "d": "across", "id": 1})
    await moved.expect(type="msg", d="across", room="r")


# --- rooms claim ---------------------------------------------------------------


async def test_rooms_outside_the_claim_are_forbidden(secured: RunningRelay) -> None:
    alice = await join_as(secured.url, "alice", token=hs256(rooms=["chat-*", "lobby"]))
    assert await alice.request({"type": "join", "room": "chat-1", "id": 1}) == {
        "type": "ok",
        "id": 1,
    }
    assert (await alice.request({"type": "join", "room": "lobby", "id": 2}))["type"] == "ok"
    err = await alice.request({"type": "join", "room": "admin", "id": 3})
    assert (err["type"], err["code"], err["id"]) == ("err", "forbidden", 3)
    err = await alice.request({"type": "join", "room": "Chat-1", "id": 4})  # case-sensitive
    assert (err["code"], err["id"]) == ("forbidden", 4)
    err = await alice.request({"type": "pub", "room": "admin", "d": 1, "id": 5})
    assert (err["type"], err["code"], err["id"]) == ("err", "forbidden", 5)
    assert (await alice.request({"type": "pub", "room": "chat-9", "d": 1, "id": 6}))["type"] == "ok"
    assert "admin" not in secured.hub.peers["alice"].rooms


async def test_no_rooms_claim_allows_every_room(secured: RunningRelay) -> None:
    alice = await join_as(secured.url, "alice", token=hs256())
    assert (await alice.request({"type": "join", "room": "anything", "id": 1}))["type"] == "ok"


async def test_rooms_claim_name_is_configurable(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(jwt_secret=SECRET, jwt_rooms_claim="chan")
    alice = await join_as(relay.url, "alice", token=hs256(chan=["a"], rooms=["b"]))
    assert (await alice.request({"type": "join", "room": "a", "id": 1}))["type"] == "ok"
    assert (await alice.request({"type": "join", "room": "b", "id": 2}))["code"] == "forbidden"


# --- refresh and expiry ---------------------------------------------------------


async def test_refresh_for_another_id_is_forbidden_and_changes_nothing(
    secured: RunningRelay,
) -> None:
    alice = await join_as(secured.url, "alice", token=hs256(ttl=2))
    err = await alice.request({"type": "refresh", "token": hs256("bob", ttl=600), "id": 7})
    assert (err["type"], err["code"], err["id"]) == ("err", "forbidden", 7)
    # the old token still rules: the session ends when it expires
    received, code = await alice.drain()
    assert code == 4501
    assert received == [{"type": "err", "code": "unauthorized", "msg": "token expired"}]


@pytest.mark.parametrize("token", ["garbage", by_hand({"alg": "none"}, claims(), None)])
async def test_refresh_with_a_bad_token_is_unauthorized(secured: RunningRelay, token: str) -> None:
    alice = await join_as(secured.url, "alice", token=hs256())
    err = await alice.request({"type": "refresh", "token": token, "id": "r1"})
    assert (err["type"], err["code"], err["id"]) == ("err", "unauthorized", "r1")
    assert await alice.request({"type": "ping", "id": 2}) == {"type": "pong", "id": 2}


async def test_refresh_with_an_expired_token_is_unauthorized(secured: RunningRelay) -> None:
    alice = await join_as(secured.url, "alice", token=hs256())
    err = await alice.request({"type": "refresh", "token": hs256(ttl=-5), "id": 1})
    assert (err["code"], err["msg"]) == ("unauthorized", "token expired")


async def test_a_session_is_closed_4501_when_its_token_expires(secured: RunningRelay) -> None:
    alice = await join_as(secured.url, "alice", token=hs256(ttl=2))
    received, code = await alice.drain()
    assert code == 4501
    assert received == [{"type": "err", "code": "unauthorized", "msg": "token expired"}]
    # terminal: the id is free again at once
    assert "alice" not in secured.hub.peers


async def test_a_refresh_keeps_the_session_alive(secured: RunningRelay) -> None:
    alice = await join_as(secured.url, "alice", token=hs256(ttl=2))
    assert await alice.request({"type": "refresh", "token": hs256(ttl=600), "id": 1}) == {
        "type": "ok",
        "id": 1,
    }
    await anyio.sleep(3)
    assert await alice.request({"type": "ping", "id": 2}) == {"type": "pong", "id": 2}


async def test_a_refresh_to_a_shorter_token_ends_the_session_sooner(
    secured: RunningRelay,
) -> None:
    alice = await join_as(secured.url, "alice", token=hs256(ttl=600))
    assert (await alice.request({"type": "refresh", "token": hs256(ttl=2), "id": 1}))["type"] == (
        "ok"
    )
    received, code = await alice.drain()
    assert code == 4501
    assert received[-1] == {"type": "err", "code": "unauthorized", "msg": "token expired"}


async def test_a_refresh_with_narrower_rooms_leaves_the_others(secured: RunningRelay) -> None:
    alice = await join_as(secured.url, "alice", token=hs256(rooms=["a", "b"]))
    await alice.request({"type": "join", "room": "a", "id": 1})
    await alice.request({"type": "join", "room": "b", "id": 2})
    await alice.request({"type": "refresh", "token": hs256(rooms=["a"]), "id": 3})
    assert set(secured.hub.peers["alice"].rooms) == {"a"}


# --- asymmetric keys -----------------------------------------------------------


async def test_es256_public_key_file(relay_factory: RelayFactory, tmp_path: Path) -> None:
    key = jwtkit.ec_key()
    relay = await relay_factory(jwt_public_key_file=jwtkit.write_public_key(tmp_path, key))
    alice = await join_as(relay.url, token=jwt.encode(claims(), key, algorithm="ES256"))
    assert alice.id == "alice"
    other = jwtkit.ec_key()
    forged = jwt.encode(claims(), other, algorithm="ES256")
    assert await assert_unauthorized(relay.url, {"token": forged}) == "bad token signature"
    # the RS256 family does not fit an EC key
    rs = jwt.encode(claims(), jwtkit.rsa_key(), algorithm="RS256")
    assert await assert_unauthorized(relay.url, {"token": rs}) == "token algorithm not accepted"


async def test_jwks_picks_the_key_by_kid(relay_factory: RelayFactory, tmp_path: Path) -> None:
    rsa_key, ec_key = jwtkit.rsa_key(), jwtkit.ec_key()
    jwks = jwtkit.write_jwks(tmp_path, {"r1": rsa_key, "e1": ec_key})
    relay = await relay_factory(jwt_jwks_file=jwks)
    by_rsa = jwt.encode(claims("alice"), rsa_key, algorithm="RS256", headers={"kid": "r1"})
    by_ec = jwt.encode(claims("bob"), ec_key, algorithm="ES256", headers={"kid": "e1"})
    assert (await join_as(relay.url, token=by_rsa)).id == "alice"
    assert (await join_as(relay.url, token=by_ec)).id == "bob"
    unknown = jwt.encode(claims("carol"), rsa_key, algorithm="RS256", headers={"kid": "zz"})
    assert await assert_unauthorized(relay.url, {"token": unknown}) == (
        "token names an unknown key"
    )
    no_kid = jwt.encode(claims("carol"), rsa_key, algorithm="RS256")
    assert await assert_unauthorized(relay.url, {"token": no_kid}) == "token names no key (kid)"
    # the EC key's kid on an RS256 token: the algorithm does not fit that key
    mixed = jwt.encode(claims("carol"), rsa_key, algorithm="RS256", headers={"kid": "e1"})
    assert await assert_unauthorized(relay.url, {"token": mixed}) == (
        "token algorithm does not fit its key"
    )


async def test_a_jwk_declaring_its_alg_accepts_only_that_one(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    key = jwtkit.rsa_key()
    path = jwtkit.write_jwks(tmp_path, {"r1": key}, {"r1": "RS512"})
    relay = await relay_factory(jwt_jwks_file=path, jwt_algorithms=("RS256", "RS512"))
    rs256 = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": "r1"})
    assert await assert_unauthorized(relay.url, {"token": rs256}) == (
        "token algorithm does not fit its key"
    )
    rs512 = jwt.encode(claims(), key, algorithm="RS512", headers={"kid": "r1"})
    assert (await join_as(relay.url, token=rs512)).id == "alice"


# --- configuration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "name", "problem"),
    [
        ({"jwt_secret": SECRET, "jwt_public_key_file": "PEM"}, "jwt_public_key_file",
         "exactly one"),
        ({"jwt_secret": SECRET, "jwt_algorithms": ("HS256", "none")}, "jwt_algorithms", "none"),
        ({"jwt_secret": SECRET, "jwt_algorithms": ("HS257",)}, "jwt_algorithms", "one of ES256"),
        ({"jwt_public_key_file": "PEM", "jwt_algorithms": ("HS256",)}, "jwt_algorithms",
         "does not fit"),
        ({"jwt_secret": SECRET, "jwt_algorithms": ("RS256",)}, "jwt_algorithms", "does not fit"),
        ({"jwt_secret": "short"}, "jwt_secret", "at least 32 bytes"),
        ({"jwt_public_key_file": "MISSING"}, "jwt_public_key_file", "readable file"),
        ({"jwt_public_key_file": "JWKS"}, "jwt_public_key_file", "cannot load a PEM public key"),
        ({"jwt_jwks_file": "PEM"}, "jwt_jwks_file", "cannot load a JWKS"),
    ],
)  # fmt: skip
def test_configuration_mistakes_are_refused_naming_the_setting(
    tmp_path: Path, settings: dict[str, Any], name: str, problem: str
) -> None:
    files = {
        "PEM": jwtkit.write_public_key(tmp_path, jwtkit.rsa_key()),
        "JWKS": jwtkit.write_jwks(tmp_path, {"k": jwtkit.rsa_key()}),
        "MISSING": str(tmp_path / "missing.pem"),
    }
    settings = {key: files.get(value, value) for key, value in settings.items()}
    with pytest.raises(AuthConfigError) as refused:
        TokenVerifier(Settings(**settings))
    assert refused.value.name == name
    assert problem in refused.value.problem
    assert SECRET not in str(refused.value)


def test_a_public_key_file_picks_its_algorithm(tmp_path: Path) -> None:
    pem = jwtkit.write_public_key(tmp_path, jwtkit.rsa_key())
    assert TokenVerifier(Settings(jwt_public_key_file=pem)).algorithms == {"RS256"}


# --- key rotation: SIGHUP and unknown kids -------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def token_for(key: Any, kid: str, sub: str = "alice") -> str:
    return jwt.encode(claims(sub), key, algorithm="RS256", headers={"kid": kid})


def test_an_unknown_kid_rereads_the_jwks_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = jwtkit.rsa_key(), jwtkit.rsa_key()
    path = jwtkit.write_jwks(tmp_path, {"old": old})
    clock = Clock()
    verifier = TokenVerifier(
        Settings(jwt_jwks_file=path, jwt_jwks_reload_seconds=30), monotonic=clock
    )
    reads = []
    read_bytes = Path.read_bytes

    def counted(self: Path) -> bytes:
        reads.append(self)
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", counted)
    jwtkit.write_jwks(tmp_path, {"old": old, "new": new})  # rotated after the start
    for _ in range(1000):  # within the interval since the start: no re-read
        with pytest.raises(Unauthorized, match="unknown key"):
            verifier.verify(token_for(new, "new"))
    assert reads == []
    clock.now = 30.0
    assert verifier.verify(token_for(new, "new")).sub == "alice"
    assert len(reads) == 1
    for second in range(30, 60):  # a flood of made-up kids
        clock.now = float(second)
        for n in range(100):
            with pytest.raises(Unauthorized, match="unknown key"):
                verifier.verify(token_for(new, f"made-up-{n}"))
    assert len(reads) == 1
    clock.now = 60.0
    with pytest.raises(Unauthorized, match="unknown key"):
        verifier.verify(token_for(new, "made-up"))
    assert len(reads) == 2
    assert verifier.verify(token_for(old, "old")).sub == "alice"  # known kids never re-read
    assert len(reads) == 2


def test_reload_swaps_the_keys_and_keeps_them_when_the_file_is_bad(tmp_path: Path) -> None:
    old, new = jwtkit.rsa_key(), jwtkit.rsa_key()
    path = jwtkit.write_jwks(tmp_path, {"old": old})
    verifier = TokenVerifier(Settings(jwt_jwks_file=path, jwt_jwks_reload_seconds=3600))
    jwtkit.write_jwks(tmp_path, {"new": new})  # old retired, new introduced
    assert verifier.reload()
    assert verifier.verify(token_for(new, "new")).sub == "alice"
    with pytest.raises(Unauthorized, match="unknown key"):
        verifier.verify(token_for(old, "old"))
    Path(path).write_text("{half a file")
    assert not verifier.reload()
    assert verifier.verify(token_for(new, "new")).sub == "alice"


def test_reload_re_reads_a_public_key_file(tmp_path: Path) -> None:
    old, new = jwtkit.ec_key(), jwtkit.ec_key()
    pem = jwtkit.write_public_key(tmp_path, old)
    verifier = TokenVerifier(Settings(jwt_public_key_file=pem))
    jwtkit.write_public_key(tmp_path, new)
    assert verifier.reload()
    token = jwt.encode(claims(), new, algorithm="ES256")
    assert verifier.verify(token).sub == "alice"
    assert not TokenVerifier(Settings(jwt_secret=SECRET)).reload()  # nothing to re-read


# --- relay token -----------------------------------------------------------------


def test_relay_token_mints_a_token_the_relay_accepts(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["token", "--sub", "alice", "--rooms", "chat-*", "--ttl", "1h"],
        env={"RELAY_JWT_SECRET": SECRET},
    )
    assert result.exit_code == 0, result.output
    verifier = TokenVerifier(Settings(jwt_secret=SECRET))
    granted = verifier.verify(result.output.strip())
    assert (granted.sub, granted.rooms) == ("alice", ("chat-*",))
    assert 3590 < verifier.seconds_left(granted) <= 3600


def test_relay_token_with_a_private_key(tmp_path: Path) -> None:
    key = jwtkit.ec_key()
    private = tmp_path / "private.pem"
    private.write_bytes(jwtkit.private_pem(key))
    result = CliRunner().invoke(
        main, ["token", "--sub", "bob", "--ttl", "90s", "--private-key-file", str(private)]
    )
    assert result.exit_code == 0, result.output
    pem = jwtkit.write_public_key(tmp_path, key)
    granted = TokenVerifier(Settings(jwt_public_key_file=pem)).verify(result.output.strip())
    assert (granted.sub, granted.rooms) == ("bob", None)


def test_relay_token_without_a_key_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["token", "--sub", "alice"], env={"RELAY_JWT_SECRET": ""})
    assert result.exit_code == 2
    assert "no signing key configured" in result.output


def test_relay_token_help_and_bad_input() -> None:
    runner = CliRunner()
    assert "Mint a token" in runner.invoke(main, ["token", "--help"]).output
    bad_ttl = runner.invoke(
        main, ["token", "--sub", "a", "--ttl", "soon"], env={"RELAY_JWT_SECRET": SECRET}
    )
    assert bad_ttl.exit_code == 2
    bad_sub = runner.invoke(main, ["token", "--sub", "@server"], env={"RELAY_JWT_SECRET": SECRET})
    assert bad_sub.exit_code == 2
