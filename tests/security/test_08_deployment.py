"""Class 8: secure deployment defaults.

The real server over HTTPS and gRPC TLS with client certificates required
(mTLS), certificates made in the test with the ``openssl`` command line; the
container probe (``fusionserve healthcheck``) works over TLS and mTLS; and the
shipped compose / Kubernetes / KServe files are safe as written.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from tests.conftest import ROOT, RunningServer, copy_entry


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make test certificates")
    subprocess.run([openssl, *args], check=True, capture_output=True)


def _signed(tmp_path: Path, name: str, ca: tuple[Path, Path], *extra: str) -> tuple[Path, Path]:
    key, csr, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.csr", tmp_path / f"{name}.pem"
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr)
    )
    ext = tmp_path / f"{name}.ext"
    ext.write_text("\n".join(extra) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-days", "1", "-out", str(cert), "-extfile", str(ext),
    )  # fmt: skip
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    ca_cert, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(ca_key), "-out", str(ca_cert),
    )  # fmt: skip
    server = _signed(tmp_path, "server", (ca_cert, ca_key), "subjectAltName=IP:127.0.0.1,DNS:localhost")
    client = _signed(tmp_path, "client", (ca_cert, ca_key), "extendedKeyUsage=clientAuth")
    return {
        "ca": ca_cert,
        "server_cert": server[0],
        "server_key": server[1],
        "client_cert": client[0],
        "client_key": client[1],
    }


def _wait_https_ready(server: RunningServer, context: ssl.SSLContext) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log()[-3000:]
        try:
            if httpx.get(
                f"https://127.0.0.1:{server.http_port}/health/ready", verify=context, timeout=2
            ).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the TLS server never became ready")


def test_https_and_grpc_with_client_certificates(
    model_repository: Path, tmp_path: Path, server_factory, pki: dict[str, Path]
) -> None:
    repo = copy_entry(model_repository, tmp_path / "repo", "digits-fusion")
    env = {
        "FUSIONSERVE_TLS_CERT_FILE": str(pki["server_cert"]),
        "FUSIONSERVE_TLS_KEY_FILE": str(pki["server_key"]),
        "FUSIONSERVE_TLS_CLIENT_CA_FILE": str(pki["ca"]),
    }
    server = server_factory(repo, wait=False, env=env)
    with_cert = ssl.create_default_context(cafile=str(pki["ca"]))
    with_cert.load_cert_chain(pki["client_cert"], pki["client_key"])
    _wait_https_ready(server, with_cert)
    base = f"https://127.0.0.1:{server.http_port}"
    answer = httpx.post(f"{base}/v1/models/digits-fusion/predict", json={"text": "seven"}, verify=with_cert)
    assert answer.status_code == 200 and answer.json()["predictions"]

    without_cert = ssl.create_default_context(cafile=str(pki["ca"]))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/health/live", verify=without_cert, timeout=5).raise_for_status()
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port
        httpx.get(f"http://127.0.0.1:{server.http_port}/health/live", timeout=5).raise_for_status()

    request = pb.PredictRequest(model="digits-fusion", items=[pb.Item(text="seven")])
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki["client_key"].read_bytes(),
        certificate_chain=pki["client_cert"].read_bytes(),
    )
    with grpc.secure_channel(server.grpc_target, credentials) as channel:
        assert pb_grpc.FusionServeStub(channel).Predict(request, timeout=30).results[0].predictions
    anonymous = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    with (
        grpc.secure_channel(server.grpc_target, anonymous) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        pb_grpc.FusionServeStub(channel).Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    # The container probe: over mTLS with the probe certificate; without it, a clear failure.
    probe_env = {**os.environ, **env, "FUSIONSERVE_HTTP_PORT": str(server.http_port)}
    probe = [sys.executable, "-m", "fusionserve", "healthcheck"]
    refused = subprocess.run(probe, env=probe_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "FUSIONSERVE_PROBE_CERT_FILE" in refused.stderr
    probe_env |= {
        "FUSIONSERVE_PROBE_CERT_FILE": str(pki["client_cert"]),
        "FUSIONSERVE_PROBE_KEY_FILE": str(pki["client_key"]),
    }
    ready = subprocess.run(probe, env=probe_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.startswith("https://127.0.0.1:")


def test_client_ca_without_tls_is_a_settings_error(tmp_path: Path) -> None:
    env = {**os.environ, "FUSIONSERVE_TLS_CLIENT_CA_FILE": str(tmp_path / "ca.pem")}
    done = subprocess.run(
        [sys.executable, "-m", "fusionserve", "serve", "--model-repository", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "tls_client_ca_file" in done.stderr


# -- the shipped deployment files ------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_keeps_monitoring_internal_and_credentials_out_of_the_file() -> None:
    compose = _compose()
    services = compose["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "--web.enable-lifecycle" not in prometheus.get("command", [])
    for service in (prometheus, grafana):
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port  # published to this host only
    assert "monitoring" in prometheus["networks"]
    assert compose["networks"]["monitoring"].get("internal") is True
    password = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert "admin}" not in password and ":?" in password  # no default: compose refuses to start without it
    text = (ROOT / "docker-compose.yml").read_text()
    assert "admin/admin" not in text and "PASSWORD:-" not in text
    server = compose["x-fusionserve"]
    for token in ("FUSIONSERVE_API_TOKEN", "FUSIONSERVE_ADMIN_TOKEN"):
        # From .env, generated by scripts/make-secrets.sh; compose refuses to start without it.
        assert server["environment"][token].startswith(f"${{{token}:?"), token
    assert server["environment"]["FUSIONSERVE_MODEL_CONTROL"] == "none"
    assert server["healthcheck"]["test"] == ["CMD", "fusionserve", "healthcheck"]


def test_secrets_env_file_is_generated_on_first_run(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "make-secrets.sh"
    out = tmp_path / "secrets.env"
    subprocess.run(["bash", str(script), str(out)], check=True, capture_output=True, timeout=60)
    first = out.read_text()
    values = dict(line.split("=", 1) for line in first.splitlines() if line and not line.startswith("#"))
    for key in ("FUSIONSERVE_API_TOKEN", "FUSIONSERVE_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD"):
        assert len(values[key]) >= 32, key
    assert out.stat().st_mode & 0o077 == 0  # readable by its owner only
    subprocess.run(["bash", str(script), str(out)], check=True, capture_output=True, timeout=60)
    assert out.read_text() == first  # never overwritten


def test_kubernetes_and_kserve_take_tokens_from_a_secret_and_probe_with_exec() -> None:
    deployment = yaml.safe_load((ROOT / "docker" / "k8s" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    for name in ("FUSIONSERVE_API_TOKEN", "FUSIONSERVE_ADMIN_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "fusionserve-tokens", name
    assert env.get("FUSIONSERVE_MODEL_CONTROL", {"value": "none"})["value"] == "none"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            assert container[probe]["exec"]["command"][-1] in ("healthcheck", "--live"), probe
    runtime = yaml.safe_load((ROOT / "docker" / "kserve" / "servingruntime.yaml").read_text())
    kcontainer = runtime["spec"]["containers"][0]
    kenv = {e["name"]: e for e in kcontainer.get("env", [])}
    assert kenv["FUSIONSERVE_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "fusionserve-tokens"
