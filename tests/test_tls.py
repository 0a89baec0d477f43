"""TLS straight from uvicorn: wss:// and https:// with a throwaway certificate."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import httpx
import msgpack
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

from relay.cli import main
from relay.server import uvicorn_config
from relay.settings import Settings
from tests.conftest import RelayFactory
from tests.jwtkit import SECRET, hs256
from tests.peers import replay_window_after_a_busy_reader

pytestmark = pytest.mark.anyio


def make_certificate(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost; returns (certfile, keyfile)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(certfile), str(keyfile)


async def test_wss_and_https_round_trip(relay_factory: RelayFactory, tmp_path: Path) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    relay = await relay_factory(certfile=certfile, keyfile=keyfile, jwt_secret=SECRET)
    trust = ssl.create_default_context(cafile=certfile)
    url = f"wss://127.0.0.1:{relay.port}{relay.settings.path}"
    async with (
        connect(url, ssl=trust, subprotocols=["relay.v1"]) as alice,
        connect(url, ssl=trust, subprotocols=["relay.v1"]) as bob,
    ):
        await alice.send(msgpack.packb({"type": "hello", "token": hs256("alice")}))
        assert msgpack.unpackb(await alice.recv())["id"] == "alice"
        await bob.send(msgpack.packb({"type": "hello", "token": hs256("bob")}))
        assert msgpack.unpackb(await bob.recv())["id"] == "bob"
        await alice.send(msgpack.packb({"type": "send", "to": "bob", "d": b"secret", "id": 1}))
        assert msgpack.unpackb(await alice.recv()) == {"type": "ok", "id": 1}
        message = msgpack.unpackb(await bob.recv())
        assert (message["from"], message["d"]) == ("alice", b"secret")
    async with httpx.AsyncClient(verify=trust) as http:
        response = await http.get(f"https://127.0.0.1:{relay.port}/healthz")
    assert response.json() == {"status": "ok"}


async def test_plain_ws_is_not_served_on_a_tls_port(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    relay = await relay_factory(certfile=certfile, keyfile=keyfile)
    with pytest.raises(Exception):  # noqa: B017 - whatever the client makes of TLS bytes
        async with connect(relay.url, open_timeout=5):
            pass


async def test_an_untrusted_certificate_is_refused_by_the_client(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    relay = await relay_factory(certfile=certfile, keyfile=keyfile)
    with pytest.raises(ssl.SSLCertVerificationError):
        async with connect(f"wss://127.0.0.1:{relay.port}/v1/ws", ssl=ssl.create_default_context()):
            pass


def test_uvicorn_config_carries_the_tls_files() -> None:
    settings = Settings(certfile="c.pem", keyfile="k.pem")
    config = uvicorn_config(None, settings)  # type: ignore[arg-type]
    assert (config.ssl_certfile, config.ssl_keyfile) == ("c.pem", "k.pem")
    plain = uvicorn_config(None, Settings())  # type: ignore[arg-type]
    assert plain.ssl_certfile is None


def test_serve_needs_both_tls_files() -> None:
    result = CliRunner().invoke(main, ["serve", "--certfile", "c.pem"])
    assert result.exit_code == 2
    assert "--certfile c.pem: TLS needs keyfile as well" in result.output


def test_serve_reports_auth_configuration_mistakes(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--jwt-public-key-file", str(tmp_path / "missing.pem")]
    )
    assert result.exit_code == 2
    assert "--jwt-public-key-file" in result.output
    assert "expected a readable file" in result.output


async def test_over_tls_the_replay_window_keeps_the_size_bound(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    # asyncio's TLS transport buffers ciphertext no count includes, so the
    # relay cannot tell what was acknowledged and keeps the last replay_bytes.
    certfile, keyfile = make_certificate(tmp_path)
    relay = await relay_factory(certfile=certfile, keyfile=keyfile)
    trust = ssl.create_default_context(cafile=certfile)
    url = f"wss://127.0.0.1:{relay.port}{relay.settings.path}"
    kept = await replay_window_after_a_busy_reader(url, relay.hub, ssl=trust)
    assert 900 * 1024 < kept <= relay.settings.replay_bytes
