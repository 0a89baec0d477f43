"""The deploy files, checked as far as this machine allows.

No Docker engine or Kubernetes cluster runs here, so the Dockerfile, compose
file and manifests are parsed and checked for the things that make a drain
lose nothing (grace periods, probes, stop signals); nginx and systemd check
their own files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from relay.settings import describe

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTINGS = {name for name, *_ in describe()}


def env_vars(text: str) -> set[str]:
    return set(re.findall(r"\bRELAY_([A-Z_]+)\b", text))


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(DEPLOY.rglob("*")) if p.is_file() and p.suffix != ".pem"],
    ids=str,
)
def test_every_relay_variable_named_in_deploy_files_is_a_setting(path: Path) -> None:
    unknown = {name for name in env_vars(path.read_text()) if name.lower() not in SETTINGS}
    assert not unknown, f"{path.name} sets unknown settings: {sorted(unknown)}"


def test_dockerfile_is_non_root_with_a_healthcheck_on_healthz() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [line.split()[0] for line in text.splitlines() if line and line[0].isupper()]
    assert instructions[0] == "FROM"
    assert "USER relay" in text and "useradd" in text
    assert "HEALTHCHECK" in instructions and "/healthz" in text
    assert "STOPSIGNAL SIGTERM" in text
    assert re.search(r'ENTRYPOINT \["relay", "serve"\]', text)


def test_compose_gives_nodes_time_to_drain() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "relay-1", "relay-2", "nginx"} <= set(services)
    for name in ("relay-1", "relay-2"):
        node = services[name]
        env = node["environment"]
        assert env["RELAY_BROKER"].startswith("redis://")
        assert env["RELAY_NODE_ID"] == name
        grace = int(node["stop_grace_period"].rstrip("s"))
        assert grace > float(env["RELAY_DRAIN_SECONDS"])


def test_kubernetes_grace_covers_prestop_and_drain() -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "relay.yaml").read_text()))
    kinds = {doc["kind"]: doc for doc in documents}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    prestop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    prestop_seconds = float(re.search(r"sleep\((\d+)\)", prestop).group(1))  # type: ignore[union-attr]
    drain = float(kinds["ConfigMap"]["data"]["RELAY_DRAIN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > prestop_seconds + drain
    assert (
        kinds["PodDisruptionBudget"]["spec"]["selector"] == kinds["Deployment"]["spec"]["selector"]
    )
    assert kinds["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_nginx_accepts_the_site_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is missing: apt-get install nginx (.ci/run does)"
    site = (DEPLOY / "nginx" / "relay.conf").read_text()
    site = site.replace("/etc/nginx/certs", str(tmp_path))
    site = re.sub(r"server relay-\d:8080", "server 127.0.0.1:8080", site)
    (tmp_path / "site.conf").write_text(site)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(tmp_path / "privkey.pem"),
         "-out", str(tmp_path / "fullchain.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid; error_log stderr;\n"
        f"events {{}}\nhttp {{ access_log off; include {tmp_path}/site.conf; }}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (package systemd)")
    unit = (DEPLOY / "systemd" / "relay.service").read_text()
    relay = shutil.which("relay") or "/bin/true"
    unit = unit.replace("/opt/relay/bin/relay", relay).replace("User=relay", "User=root")
    unit = unit.replace("Group=relay", "Group=root")
    (tmp_path / "relay.service").write_text(unit)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "relay.service")], capture_output=True, text=True
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if "relay.service" in line and "Documentation" not in line
    ]
    assert not problems, result.stderr


def test_git_ignores_the_keys_make_dev_cert_writes_where_the_docs_run_it() -> None:
    # docs/security.md runs `deploy/make-dev-cert.sh certs`; compose.yaml wants deploy/certs.
    checked = subprocess.run(
        ["git", "check-ignore", "certs/privkey.pem", "deploy/certs/privkey.pem"],
        cwd=DEPLOY.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.stdout.split() == ["certs/privkey.pem", "deploy/certs/privkey.pem"]


def test_make_dev_cert_warns_of_a_key_git_would_commit(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    made = subprocess.run(
        [DEPLOY / "make-dev-cert.sh", "keys"], cwd=tmp_path, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "keys" / "privkey.pem").exists()
    assert made.stderr == "warning: git does not ignore keys/privkey.pem: do not commit it\n"
    (tmp_path / ".gitignore").write_text("keys/\n")
    again = subprocess.run(
        [DEPLOY / "make-dev-cert.sh", "keys"], cwd=tmp_path, capture_output=True, text=True
    )
    assert (again.returncode, again.stderr) == (0, "")
