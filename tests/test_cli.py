"""`relay serve` settings: precedence, one-line refusals of bad values, startup lines."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
import yaml
from click.testing import CliRunner

from relay.cli import main, serve, settings_from
from relay.server import without_password
from relay.settings import Settings, describe
from tests import jwtkit
from tests.cluster.processes import RelayProcess
from tests.peers import join_as, open_peer
from tests.redis_server import RedisServer, free_port
from tests.test_tls import make_certificate

pytestmark = pytest.mark.anyio


@pytest.fixture
def configured_relay(tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "relay.toml"
    config.write_text("rate_per_second = 5.0\nrate_burst = 6\nmax_depth = 7\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--port", "0", "--config", str(config),
         "--max-depth", "9"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RELAY_RATE_BURST": "77", "RELAY_LOG_LEVEL": "warning"},
    )  # fmt: skip
    assert process.stderr is not None
    try:
        for line in process.stderr:
            found = re.search(r"relay ready on (ws://\S+)", line)
            if found:
                yield found.group(1)
                break
        else:
            pytest.fail("relay did not start")
    finally:
        process.terminate()
        process.wait()
        process.stderr.close()


async def test_flag_beats_env_beats_file_beats_default(configured_relay: str) -> None:
    peer = await join_as(configured_relay, "alice")
    limits = peer.welcome["limits"]
    assert limits["max_depth"] == 9  # flag over file
    assert limits["rate_burst"] == 77  # environment over file
    assert limits["rate_per_second"] == 5.0  # file over default
    assert limits["queue_messages"] == 1024  # default
    await peer.close()


# --- bad settings: one line naming the setting and its source, exit status 2 -------


def refusal(
    args: list[str],
    env: dict[str, str] | None = None,
    config: str | None = None,
    *,
    command: str = "serve",
) -> str:
    """Run ``relay serve`` (or ``check``) with bad settings; the one line it prints on stderr."""
    if config is not None:
        args = ["--config", config, *args]
    result = CliRunner().invoke(main, [command, *args], env=env)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # no exception escaped
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["--log-level", "loud"], None,
         "Error: --log-level loud: expected one of debug, info, warning, error"),
        (["--ws-impl", "bad"], None,
         "Error: --ws-impl bad: expected one of relay, websockets-sansio, websockets, wsproto"),
        (["--id-pattern", "["], None,
         "Error: --id-pattern '[': expected a regular expression that does not match @server"),
        (["--port", "70000"], None, "Error: --port 70000: expected an integer 0-65535"),
        (["--port", "-1"], None, "Error: --port -1: expected an integer 0-65535"),
        (["--port", "eighty"], None, "Error: --port eighty: expected an integer 0-65535"),
        (["--max-frame-bytes", "0"], None,
         "Error: --max-frame-bytes 0: expected an integer >= 1024 (a hello with a token must fit)"),
        (["--rate-per-second", "-5"], None, "Error: --rate-per-second -5: expected a number > 0"),
        (["--origins", "example.com"], None,
         "Error: --origins example.com: expected an origin scheme://host[:port] such as "
         "https://app.example.com"),
        ([], {"RELAY_PORT": "8113x"}, "Error: RELAY_PORT=8113x: expected an integer 0-65535"),
        ([], {"RELAY_ORIGINS": "https://ok.example example.com"},
         "Error: RELAY_ORIGINS=example.com: expected an origin scheme://host[:port] such as "
         "https://app.example.com"),
        ([], {"RELAY_JWT_SECRET": "short"},
         "Error: RELAY_JWT_SECRET=(hidden): expected at least 32 bytes (HS256 key strength)"),
        (["--certfile", "/nonexistent/cert.pem", "--keyfile", "/nonexistent/key.pem"], None,
         "Error: --certfile /nonexistent/cert.pem: expected a readable file "
         "(No such file or directory)"),
        (["--certfile", "cert.pem"], None, "Error: --certfile cert.pem: TLS needs keyfile as well"),
        (["--workers", "2"], None,
         "Error: --workers 2: more than 1 needs a shared broker such as redis://host:6379/0 "
         "(with the memory broker each worker would be a separate relay)"),
        (["--heartbeat-seconds", "5"], None,
         "Error: --heartbeat-seconds 5: expected less than node_lease_seconds (5)"),
        (["--jwt-secret", "s" * 40, "--jwt-algorithms", "RS256"], None,
         "Error: --jwt-algorithms RS256: does not fit the key of jwt_secret"),
    ],
)  # fmt: skip
def test_a_bad_flag_or_variable_is_one_line(
    args: list[str], env: dict[str, str] | None, line: str
) -> None:
    assert refusal(args, env) == line
    assert refusal(args, env, command="check") == line


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("resume_seconds = -3\n", 'resume_seconds = -3: expected a number >= 0'),
        ('port = "8113x"\n', 'port = "8113x": expected an integer 0-65535'),
        ("port = 80.5\n", "port = 80.5: expected an integer 0-65535"),
        ('origins = "https://a.example"\n',
         'origins = "https://a.example": expected an array of strings'),
        ('origins = ["example.com"]\n',
         'origins = "example.com": expected an origin scheme://host[:port] such as '
         "https://app.example.com"),
        ("rate_per_secnod = 5\n",
         "unknown setting rate_per_secnod (did you mean rate_per_second?)"),
        ("[server]\nport = 1\n", "unknown setting server"),
        ("port = 8080\nport = 8081\n",
         "not valid TOML: Cannot overwrite a value (at line 2, column 12)"),
        ("port = \n", "not valid TOML: Invalid value (at line 1, column 8)"),
    ],
)  # fmt: skip
def test_a_bad_config_file_is_one_line_naming_the_file(
    tmp_path: Path, text: str, line: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    assert refusal([], config=str(config)) == f"Error: {config}: {line}"
    assert refusal([], config=str(config), command="check") == f"Error: {config}: {line}"


def test_a_flag_overriding_a_bad_file_value_still_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("max_connections = -1\n")
    assert refusal(["--port", "0"], config=str(config)) == (
        f"Error: {config}: max_connections = -1: expected an integer >= 0"
    )


def test_an_unreadable_config_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert refusal([], config=str(missing)) == (
        f"Error: --config {missing}: cannot read it (No such file or directory)"
    )


def test_a_key_that_does_not_match_the_certificate_is_one_line(tmp_path: Path) -> None:
    certfile, _ = make_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = make_certificate(tmp_path / "other")
    line = refusal(["--certfile", certfile, "--keyfile", other_key])
    assert line.startswith(
        f"Error: --keyfile {other_key}: expected the unencrypted PEM private key of certfile "
        f"{certfile} ("
    )


def test_an_unusable_jwt_key_file_is_one_line(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text("{not json")
    line = refusal([], env={"RELAY_JWT_JWKS_FILE": str(jwks)})
    assert line.startswith(f"Error: RELAY_JWT_JWKS_FILE={jwks}: cannot load a JWKS: ")


ROOT = Path(__file__).resolve().parents[1]


def test_the_examples_in_the_configuration_doc_hold(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    block = re.search(r"```console\n(.*?)```", text, re.S)
    assert block is not None
    examples = re.findall(r"^\$ (.*)\n((?:[^$].*\n)*)", block.group(1), re.M)
    assert len(examples) == 3
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the commands say .venv/bin/relay
    for command, shown in examples:
        result = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert (result.returncode, result.stdout + result.stderr) == (2, shown), command


# --- how flags, variables and files become Settings --------------------------------


def parsed(args: list[str], monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = serve.make_context("serve", args)
    return settings_from(ctx, ctx.params)


def test_lists_can_be_emptied_by_flag_variable_and_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    defaults = parsed([], monkeypatch)
    assert defaults == Settings()
    assert defaults.admission_exempt == ("127.0.0.0/8", "::1")
    assert defaults.trusted_proxies == ("127.0.0.1", "::1")
    config = tmp_path / "config.toml"
    config.write_text("trusted_proxies = []\n")
    assert parsed(["--config", str(config)], monkeypatch).trusted_proxies == ()
    assert parsed(["--admission-exempt", ""], monkeypatch).admission_exempt == ()
    assert parsed([], monkeypatch, RELAY_ADMISSION_EXEMPT="").admission_exempt == ()
    assert parsed([], monkeypatch, RELAY_TRUSTED_PROXIES="10.0.0.0/8 ::1").trusted_proxies == (
        "10.0.0.0/8",
        "::1",
    )


def _deploy_environments() -> list[dict[str, str]]:
    deploy = ROOT / "deploy"
    services = yaml.safe_load((deploy / "compose.yaml").read_text())["services"]
    found = [services[name]["environment"] for name in ("relay-1", "relay-2")]
    for document in yaml.safe_load_all((deploy / "kubernetes" / "relay.yaml").read_text()):
        if document["kind"] == "ConfigMap":
            found.append(document["data"])
    dockerfile = (deploy / "Dockerfile").read_text()
    found.append(dict(re.findall(r"\b(RELAY_[A-Z_]+)=(\S+)", dockerfile)))
    return found


@pytest.mark.parametrize("env", _deploy_environments())
def test_the_deploy_files_hold_valid_settings(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parsed([], monkeypatch, **{name: str(value) for name, value in env.items()})


def test_an_empty_scalar_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parsed([], monkeypatch, RELAY_PORT="").port == 8080


def test_without_password() -> None:
    assert without_password("redis://:pw@10.0.0.5:6380/0") == "redis://10.0.0.5:6380/0"
    assert without_password("redis://app:pw@redis/0") == "redis://app@redis/0"
    assert without_password("redis://redis:6379/0") == "redis://redis:6379/0"
    assert without_password("unix:///run/r.sock?db=1&password=pw") == "unix:///run/r.sock?db=1"


# --- starting ----------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return json.dumps(value)


async def test_every_default_written_to_a_file_starts(tmp_path: Path) -> None:
    config = tmp_path / "defaults.toml"
    config.write_text(
        "".join(f"{info.name} = {_toml_value(info.default)}\n" for info in describe())
    )
    node = RelayProcess("--config", str(config))  # and --port 0
    try:
        node.wait_ready()
        async with httpx.AsyncClient() as client:
            ready = await client.get(f"{node.http_url}/readyz")
        assert ready.status_code == 200
        peer = await join_as(node.url, "alice")
        assert peer.welcome["limits"]["max_frame_bytes"] == 65536
        await peer.close()
    finally:
        node.stop()


def wait_for(node: RelayProcess, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    """The first match of ``pattern`` in the node's stderr, once it appears."""
    deadline = time.monotonic() + timeout
    # Polling the log file: the process's lines are its only signal.
    while time.monotonic() < deadline:
        found = re.search(pattern, node.output())
        if found:
            return found
        assert node.process.poll() is None, node.output()
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in {timeout}s:\n{node.output()}")


async def test_an_unreachable_backplane_is_said_at_startup() -> None:
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    node = RelayProcess("--broker", broker, "--broker-timeout-seconds", "0.2")
    redis = RedisServer(port)
    try:
        found = wait_for(
            node, r"relay on (ws://\S+) is not ready: the backplane (\S+) is unreachable"
        )
        assert found.group(2) == broker
        assert "relay ready" not in node.output()
        http_url = found.group(1).replace("ws://", "http://").rsplit("/v1/", 1)[0]
        async with httpx.AsyncClient() as client:
            down = await client.get(f"{http_url}/readyz")
            assert down.status_code == 503
            assert down.json()["status"] == "backplane-down"
            assert down.headers["retry-after"] == "1"
            redis.start()
            wait_for(node, r"relay ready on ws://")
            assert (await client.get(f"{http_url}/readyz")).status_code == 200
    finally:
        node.stop()
        redis.kill()


async def test_sighup_rereads_the_jwks_file(tmp_path: Path) -> None:
    old, new = jwtkit.rsa_key(), jwtkit.rsa_key()
    path = jwtkit.write_jwks(tmp_path, {"old": old})
    node = RelayProcess(
        "--jwt-jwks-file", path, "--jwt-jwks-reload-seconds", "3600",
        env={"RELAY_LOG_LEVEL": "info"},
    )  # fmt: skip
    try:
        url = node.wait_ready()
        token = jwt.encode(jwtkit.claims("bob"), new, algorithm="RS256", headers={"kid": "new"})
        refused = await open_peer(url)
        await refused.send({"type": "hello", "token": token})
        received, code = await refused.drain()
        assert (received[0]["code"], code) == ("unauthorized", 4501)
        jwtkit.write_jwks(tmp_path, {"new": new})
        node.process.send_signal(signal.SIGHUP)
        wait_for(node, r"re-read jwt_jwks_file: 1 key")
        assert (await join_as(url, token=token)).id == "bob"
    finally:
        node.stop()


# --- start-up failures: one line and exit status 2, as bad values ------------------


def serve_process(*args: str) -> subprocess.CompletedProcess[str]:
    """``relay serve`` run to its end as a process (uvicorn's logging included)."""
    return subprocess.run(
        [sys.executable, "-m", "relay", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
        check=False,
    )


def test_a_port_in_use_stops_serve_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve_process("--port", str(port))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"Error: --port {port}: 127.0.0.1:{port} is already in use (another relay, or another "
        "program)\n"
    )


def test_a_host_that_does_not_resolve_stops_serve_with_one_line() -> None:
    host = "a" * 64 + ".example"  # a label over 63 characters: refused without asking DNS
    done = serve_process("--host", host, "--port", "0")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"Error: --host {host}: cannot resolve it (not a valid host name)\n"


def test_an_address_of_another_machine_stops_serve_with_one_line() -> None:
    done = serve_process("--host", "192.0.2.1", "--port", "0")  # TEST-NET-1: nobody's
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "Error: --host 192.0.2.1: 192.0.2.1 is not an address of this machine "
        "(Cannot assign requested address)\n"
    )


def unresolvable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every name lookup fail as a name that does not exist does."""

    def fail(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)


@pytest.mark.parametrize("command", ["serve", "check"])
def test_an_unresolvable_host_is_one_line_naming_its_source(
    monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    unresolvable(monkeypatch)
    assert refusal(["--host", "999.1.1.1"], command=command) == (
        "Error: --host 999.1.1.1: cannot resolve it (Name or service not known)"
    )
    assert refusal([], {"RELAY_HOST": "relay.invalid"}, command=command) == (
        "Error: RELAY_HOST=relay.invalid: cannot resolve it (Name or service not known)"
    )


def test_workers_on_a_port_in_use_stop_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refusal(["--port", str(port), "--workers", "2", "--broker", "redis://127.0.0.1:1/0"])
    assert line == (
        f"Error: --port {port}: 127.0.0.1:{port} is already in use (another relay, or another "
        "program)"
    )


# --- relay check and relay config ---------------------------------------------------


def check_rows(output: str) -> dict[str, tuple[str, str]]:
    """``relay check``'s table: setting -> (value, source)."""
    lines = output.splitlines()
    assert lines[0].split() == ["setting", "value", "from"]
    value_at, source_at = lines[0].index("value"), lines[0].index("from")
    rows = {}
    for line in lines[1:-1]:
        assert line[value_at - 2 : value_at] == "  " and line[source_at - 2 : source_at] == "  "
        rows[line[:value_at].strip()] = (line[value_at:source_at].strip(), line[source_at:])
    return rows


def test_check_prints_every_setting_with_its_value_and_source(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('rate_per_second = 5.0\nrate_burst = 6\norigins = ["https://a.example"]\n')
    secret = "s" * 40
    result = CliRunner().invoke(
        main,
        ["check", "--config", str(config), "--max-depth", "9", "--admission-exempt", ""],
        env={"RELAY_RATE_BURST": "77", "RELAY_JWT_SECRET": secret, "RELAY_PORT": "",
             "RELAY_ADMIN_PASSWORD": "admin-pass-0123"},
    )  # fmt: skip
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert secret not in result.stdout
    assert "admin-pass-0123" not in result.stdout
    rows = check_rows(result.stdout)
    assert list(rows) == [info.name for info in describe()]
    assert rows["max_depth"] == ("9", "--max-depth")  # flag over file
    assert rows["rate_burst"] == ("77", "RELAY_RATE_BURST")  # environment over file
    assert rows["rate_per_second"] == ("5", str(config))  # file over default
    assert rows["origins"] == ('["https://a.example"]', str(config))
    assert rows["admission_exempt"] == ("[]", "--admission-exempt")
    assert rows["jwt_secret"] == ("(hidden)", "RELAY_JWT_SECRET")
    assert rows["admin_password"] == ("(hidden)", "RELAY_ADMIN_PASSWORD")
    assert rows["api_keys"] == ("[]", "default")
    assert rows["host"] == ('"127.0.0.1"', "default")
    assert rows["port"] == ("8080", "default")  # an empty variable is unset
    assert result.stdout.splitlines()[-1] == (
        "The settings are valid: relay serve would listen on 127.0.0.1, port 8080."
    )


def test_check_warns_of_relay_variables_that_are_no_setting() -> None:
    env = {"RELAY_PROT": "9000", "RELAY_URL": "ws://127.0.0.1:9/v1/ws", "RELAY_TOKEN": "t"}
    result = CliRunner().invoke(main, ["check"], env=env)
    assert result.exit_code == 0
    assert result.stderr == (
        "Warning: RELAY_PROT is not a setting; relay serve ignores it (did you mean RELAY_PORT?)\n"
    )


def test_config_keeps_its_columns_for_the_longest_names() -> None:
    lines = CliRunner().invoke(main, ["config"], env={"RELAY_PORT": "abc"}).stdout.splitlines()
    header = lines[0]
    starts = [header.index(word) for word in ("environment", "default", "meaning")]
    assert len(lines) == len(describe()) + 1
    for line in lines[1:]:
        for start in starts:
            assert line[start - 2 : start] == "  " and line[start] != " ", line
    port = next(line for line in lines if line.startswith("--port "))
    assert port.split()[:3] == ["--port", "RELAY_PORT", "8080"]  # the default, as said
