"""docker-compose.yml: valid for Debian's docker-compose (no engine needed), and wired up right."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.refs import COMPOSE, DOCKER, ROOT, tool

SPEC: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
SERVICES: dict[str, Any] = SPEC["services"]
SERVER_VARIANTS = ("fusionserve", "fusionserve-cpu")


#: What scripts/make-secrets.sh writes to .env; compose refuses to start without them.
SECRETS = {"FUSIONSERVE_API_TOKEN": "t1", "FUSIONSERVE_ADMIN_TOKEN": "t2", "GRAFANA_ADMIN_PASSWORD": "p"}


def compose(
    *args: str, file: Path = COMPOSE, secrets: bool = True, project_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    binary = tool("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (Debian's v1) not installed")
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    if secrets:
        env.update(SECRETS)
    directory = project_dir or file.parent
    return subprocess.run(
        [binary, "-f", str(file), "--project-directory", str(directory), *args],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def seconds(duration: str) -> float:
    """A compose duration such as ``45s`` or ``1m30s`` in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_config_is_valid() -> None:
    done = compose("config", "-q")
    assert done.returncode == 0, done.stderr


def test_config_without_generated_secrets_is_refused(tmp_path: Path) -> None:
    """No .env from scripts/make-secrets.sh: compose names the script instead of starting open."""
    done = compose("config", "-q", secrets=False, project_dir=tmp_path)
    assert done.returncode != 0
    assert "make-secrets.sh" in done.stderr


def test_only_the_cpu_variant_sits_in_a_profile() -> None:
    """As docker-compose resolves it: GPU server + monitoring by default, CPU server on --profile cpu."""
    done = compose("config")
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"fusionserve", "fusionserve-cpu", "prometheus", "grafana"}
    profiles = {name: service.get("profiles") for name, service in services.items()}
    assert profiles == {"fusionserve": None, "fusionserve-cpu": ["cpu"], "prometheus": None, "grafana": None}


def test_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    """The same command fails on a wrong option, so its pass above means something."""
    broken = dict(SPEC)
    broken["services"] = {**SERVICES, "fusionserve": {**SERVICES["fusionserve"], "stop_grace": "45s"}}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    done = compose("config", "-q", file=path)
    assert done.returncode != 0
    assert "stop_grace" in done.stderr


def test_gpu_service_reserves_gpus_and_cpu_variant_does_not() -> None:
    devices = SERVICES["fusionserve"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert SERVICES["fusionserve"]["build"]["target"] == "gpu"
    cpu = SERVICES["fusionserve-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert cpu["build"]["target"] == "cpu"
    # Prometheus discovers either variant under one DNS name.
    assert cpu["networks"]["default"]["aliases"] == ["fusionserve"]


@pytest.mark.parametrize("name", SERVER_VARIANTS)
def test_server_variants_serve_models_and_drain(name: str) -> None:
    service = SERVICES[name]
    env = service["environment"]
    (models,) = [v for v in service["volumes"] if v["target"] == "/models"]
    assert models["read_only"] is True and env["FUSIONSERVE_MODEL_REPOSITORY"] == "/models"
    assert seconds(service["stop_grace_period"]) > float(env["FUSIONSERVE_DRAIN_TIMEOUT_S"])
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert [p.split(":")[-1] for p in service["ports"]] == [
        env["FUSIONSERVE_HTTP_PORT"],
        env["FUSIONSERVE_GRPC_PORT"],
    ]
    # The probe speaks HTTP, HTTPS or mTLS as the server does (service/healthcheck.py).
    assert service["healthcheck"]["test"] == ["CMD", "fusionserve", "healthcheck"]
    assert env["FUSIONSERVE_API_TOKEN"].startswith("${FUSIONSERVE_API_TOKEN:?")
    assert env["FUSIONSERVE_MODEL_CONTROL"] == "none"


def test_monitoring_mounts_point_at_files_that_exist() -> None:
    prometheus = SERVICES["prometheus"]
    assert "./docker/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert (DOCKER / "prometheus" / "prometheus.yml").is_file()
    grafana = SERVICES["grafana"]
    mounts = dict(m.rsplit(":", 1)[0].split(":", 1) for m in grafana["volumes"] if m.startswith("./"))
    for source in mounts:
        assert (ROOT / source).is_dir(), source
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/fusionserve.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert mounts["./docker/grafana/dashboards"] == dashboards_path
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_path + "/")
    assert (ROOT / "docker/grafana/dashboards" / Path(home).name).is_file()


def test_prometheus_scrapes_the_compose_service_on_its_http_port() -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "fusionserve"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["fusionserve"] and sd["port"] == 8000
    assert job["metrics_path"] == "/metrics"
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
