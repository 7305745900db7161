"""Every metric the dashboard, the recording/alerting rules and the HPA use is one the server serves.

Names are pulled out of the files as ``fusionserve_[a-z_]+`` tokens (histogram
``_bucket``/``_sum``/``_count`` suffixes stripped) and compared with the
``# TYPE`` lines of a real server's ``/metrics`` after one real request.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from fusionserve.service.metrics import Metrics
from tests.conftest import RunningServer, Sample
from tests.deploy.refs import (
    DASHBOARDS,
    HPA,
    METRIC_SOURCES,
    RULE_FILES,
    exposed_families,
    metric_names_in,
    referenced_metrics,
    sampled_families,
)

CLASSIFIER = "digits-fusion"

#: Families a successful predict must have produced samples for (not only declared):
#: what the dashboard's main panels and the HPA read.
MUST_HAVE_SAMPLES = {
    "fusionserve_requests_total",
    "fusionserve_request_duration_seconds",
    "fusionserve_queue_duration_seconds",
    "fusionserve_decode_duration_seconds",
    "fusionserve_compute_duration_seconds",
    "fusionserve_batch_size",
    "fusionserve_queue_depth",
    "fusionserve_inflight_requests",
    "fusionserve_model_ready",
    "fusionserve_instances",
    "fusionserve_instance_busy_seconds_total",
    "fusionserve_modality_requests_total",
    "fusionserve_received_bytes_total",
    "fusionserve_input_image_pixels",
    "fusionserve_input_audio_seconds",
    "fusionserve_input_text_tokens",
}


def test_name_extraction_reads_promql() -> None:
    text = (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(fusionserve_request_duration_seconds_bucket{model=~"$m"}[5m])))'
        " / sum(rate(fusionserve_batch_size_sum[1m])) + fusionserve_batch_size_count"
        " + fusionserve:requests:rate5m + max(fusionserve_queue_depth) + my_fusionserve_thing"
    )
    assert metric_names_in(text) == {
        "fusionserve_request_duration_seconds",
        "fusionserve_batch_size",
        "fusionserve_queue_depth",
    }


def test_every_source_file_references_metrics() -> None:
    """Each file is really scanned (a wrong path or an empty scan would make the checks below vacuous)."""
    found = referenced_metrics()
    for path in METRIC_SOURCES:
        assert any(path.name in "".join(files) for files in found.values()), path
    dashboard = metric_names_in("".join(p.read_text() for p in DASHBOARDS))
    assert len(dashboard) >= 15
    assert {"fusionserve_queue_depth", "fusionserve_inflight_requests"} <= metric_names_in(HPA.read_text())
    assert "fusionserve_model_ready" in metric_names_in("".join(p.read_text() for p in RULE_FILES))


def test_a_misspelt_metric_would_be_caught(tmp_path: Path) -> None:
    """The comparison below flags a name the server does not define (here: a missing "s")."""
    panel = tmp_path / "panel.json"
    panel.write_text('{"expr": "sum(rate(fusionserve_request_total[5m]))"}')
    body, _ = Metrics().exposition()
    assert set(referenced_metrics([panel])) == {"fusionserve_request_total"}
    assert "fusionserve_request_total" not in exposed_families(body.decode())


def test_referenced_metrics_are_defined_in_service_metrics() -> None:
    body, _ = Metrics().exposition()
    defined = exposed_families(body.decode())
    missing = {name: sorted(files) for name, files in referenced_metrics().items() if name not in defined}
    assert not missing, f"not defined in service/metrics.py: {missing}"


def test_referenced_metrics_are_served_by_a_live_server(
    running_server: RunningServer, samples: list[Sample]
) -> None:
    sample = samples[0]
    with httpx.Client(base_url=running_server.http_url, timeout=30) as client:
        answer = client.post(
            f"/v1/models/{CLASSIFIER}/predict",
            files={
                "image": ("digit.jpg", sample.jpeg, "image/jpeg"),
                "audio": ("digit.wav", sample.wav, "audio/wav"),
                "text": (None, sample.text),
            },
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"]
        exposition = client.get("/metrics").text
    served = exposed_families(exposition)
    referenced = referenced_metrics()
    missing = {name: sorted(files) for name, files in referenced.items() if name not in served}
    assert not missing, f"referenced but not in the live /metrics: {missing}"
    wanted = MUST_HAVE_SAMPLES & set(referenced)
    assert wanted == MUST_HAVE_SAMPLES, "the dashboard/rules/HPA stopped using a core metric"
    without_samples = wanted - sampled_families(exposition, wanted)
    assert not without_samples, f"declared but no sample after a predict: {sorted(without_samples)}"


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/v2/health/ready", "/metrics"])
def test_probe_and_scrape_paths_answer(running_server: RunningServer, path: str) -> None:
    """The paths the image HEALTHCHECK, Kubernetes probes, KServe and Prometheus call."""
    assert httpx.get(running_server.http_url + path, timeout=10).status_code == 200
