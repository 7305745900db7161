"""Class 5: image decoding is bounded by bytes, not only pixels.

A ~80 KB PNG of 40 megapixels in 16-bit grayscale passes the pixel bound;
its conversion to 8 bits used to take int64 and float64 copies at full
resolution (~800 MB). Now it converts in chunks (peak: its decoded pixels
plus 40 MB), and an image that would decode past ``max_decoded_image_bytes``
is refused from its header. Thread pools are sized from the cgroup quota.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import RunningServer
from tests.security.hostile import watched

PEAK_BOUND = 400 * 1024 * 1024  # new: ~130 MB over the baseline; before: ~800 MB


def _png_16bit(width: int = 8000, height: int = 5000) -> bytes:
    values = np.zeros((height, width), dtype=np.uint16)
    values[::97, ::89] = 65535  # a sparse pattern: compresses to ~100 KB, not all one value
    out = io.BytesIO()
    Image.fromarray(values).save(out, format="PNG", optimize=False, compress_level=9)
    return out.getvalue()


@pytest.fixture(scope="module")
def png_40mp() -> bytes:
    return _png_16bit()


def _predict(server: RunningServer, image: bytes) -> httpx.Response:
    body = {"image": base64.b64encode(image).decode(), "top_k": 1}
    return httpx.post(f"{server.http_url}/v1/models/digits-fusion/predict", json=body, timeout=120)


def test_40_megapixel_16_bit_png_decodes_frugally(
    server_factory, model_repository: Path, png_40mp: bytes
) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(model_repository, grpc=False)
    print(f"PNG: {len(png_40mp) / 1024:.0f} KB, 8000x5000 I;16")
    with watched(server, "40 MP 16-bit PNG") as watch:
        response = _predict(server, png_40mp)
    assert response.status_code == 200, response.text[:300]
    assert watch.rss_peak - watch.rss_before < PEAK_BOUND, watch.report("40 MP 16-bit PNG")


def test_image_past_the_decoded_byte_limit_is_413(
    server_factory, model_repository: Path, png_40mp: bytes
) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(
        model_repository, grpc=False, env={"FUSIONSERVE_MAX_DECODED_IMAGE_BYTES": str(50 * 1024 * 1024)}
    )
    with watched(server, "40 MP 16-bit PNG over max_decoded_image_bytes"):
        response = _predict(server, png_40mp)
    assert response.status_code == 413, response.text[:300]
    error = response.json()["error"]
    assert "max_decoded_image_bytes" in error["message"] and error["details"]["field"] == "image"


def test_thread_pools_follow_the_cgroup_quota(tmp_path: Path) -> None:
    from fusionserve.service.cpus import available_cpus  # new with this test

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cpus(tmp_path) == min(2, available_cpus(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == available_cpus(tmp_path / "none")
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path / "v1") == 1
