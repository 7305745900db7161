"""The native HTTP API on a real server: every modality subset, batch form, no cross-talk."""

from __future__ import annotations

import asyncio
import base64
import itertools
import re

import httpx
import numpy as np
import pytest

from tests.conftest import RunningServer, Sample

MODALITIES = ("image", "audio", "text")
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(MODALITIES, r)]


def multipart(
    sample: Sample, subset: tuple[str, ...], *, png: bool = False
) -> dict[str, tuple[str | None, bytes | str, str] | tuple[None, str]]:
    parts: dict[str, tuple] = {}
    if "image" in subset:
        parts["image"] = (
            ("digit.png", sample.png, "image/png") if png else ("digit.jpg", sample.jpeg, "image/jpeg")
        )
    if "audio" in subset:
        parts["audio"] = ("digit.wav", sample.wav, "audio/wav")
    if "text" in subset:
        parts["text"] = (None, sample.text)
    return parts


def json_item(sample: Sample, subset: tuple[str, ...]) -> dict[str, str]:
    item = {}
    if "image" in subset:
        item["image"] = base64.b64encode(sample.jpeg).decode()
    if "audio" in subset:
        item["audio"] = base64.b64encode(sample.wav).decode()
    if "text" in subset:
        item["text"] = sample.text
    return item


def scores_of(answer: dict) -> dict[str, float]:
    return {p["label"]: p["score"] for p in answer["predictions"]}


@pytest.fixture(scope="module")
def client(running_server: RunningServer):
    with httpx.Client(base_url=running_server.http_url, timeout=30) as c:
        yield c


@pytest.mark.parametrize("subset", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_predict_every_modality_subset(
    client: httpx.Client, samples: list[Sample], subset: tuple[str, ...]
) -> None:
    response = client.post(
        "/v1/models/digits-fusion/predict", files=multipart(samples[0], subset, png=True), data={"top_k": "3"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "digits-fusion" and body["version"] == "1"
    assert sorted(body["modalities"]) == sorted(subset)
    scores = [p["score"] for p in body["predictions"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert 0 < sum(scores) <= 1.0 + 1e-6
    assert all(p["label"] in [str(d) for d in range(10)] for p in body["predictions"])


def test_all_three_modalities_classify_real_samples(client: httpx.Client, samples: list[Sample]) -> None:
    correct = 0
    for sample in samples:
        answer = client.post("/v1/models/digits-fusion/predict", files=multipart(sample, MODALITIES)).json()
        correct += answer["predictions"][0]["label"] == sample.label
    # The model is ~98% accurate on the test split; 12 rows allow one miss at most.
    assert correct >= len(samples) - 1


@pytest.mark.parametrize("subset", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_embed_every_modality_subset(
    client: httpx.Client, samples: list[Sample], subset: tuple[str, ...]
) -> None:
    response = client.post("/v1/models/digits-embed/embed", files=multipart(samples[1], subset))
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(body["embeddings"]) == sorted(subset)
    fused = np.asarray(body["embedding"])
    assert fused.ndim == 1 and abs(np.linalg.norm(fused) - 1) < 1e-4
    for vector in body["embeddings"].values():
        assert len(vector) == len(fused) and abs(np.linalg.norm(vector) - 1) < 1e-4


def test_embeddings_of_matching_modalities_are_closer(client: httpx.Client, samples: list[Sample]) -> None:
    """A sample's image embedding is nearer its own label's text than most other labels' texts."""
    texts = {s.label: s.text for s in samples}
    images = {s.label: s.jpeg for s in samples}
    labels = sorted(set(texts) & set(images))
    text_vec = {
        lab: np.asarray(
            client.post("/v1/models/digits-embed/embed", files={"text": (None, texts[lab])}).json()[
                "embeddings"
            ]["text"]
        )
        for lab in labels
    }
    hits = 0
    for lab in labels:
        img = np.asarray(
            client.post(
                "/v1/models/digits-embed/embed", files={"image": ("i.jpg", images[lab], "image/jpeg")}
            ).json()["embeddings"]["image"]
        )
        best = max(labels, key=lambda other: float(img @ text_vec[other]))
        hits += best == lab
    assert hits >= len(labels) - 2


def test_json_batch_form_matches_single_requests(client: httpx.Client, samples: list[Sample]) -> None:
    items = [json_item(samples[i], SUBSETS[i % len(SUBSETS)]) for i in range(6)]
    batch = client.post("/v1/models/digits-fusion/predict", json={"items": items, "top_k": 10})
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert len(results) == 6
    for item, result in zip(items, results, strict=True):
        single = client.post("/v1/models/digits-fusion/predict", json={**item, "top_k": 10}).json()
        assert single["modalities"] == result["modalities"]
        a, b = scores_of(single), scores_of(result)
        assert a.keys() == b.keys()
        assert max(abs(a[k] - b[k]) for k in a) < 1e-5


async def test_concurrent_mixed_requests_match_alone(
    running_server: RunningServer, samples: list[Sample]
) -> None:
    """Rows of different subsets and lengths share batches; each answer equals the request sent alone."""
    distinct = [(samples[i % len(samples)], SUBSETS[i % len(SUBSETS)]) for i in range(14)]
    requests = distinct * 3
    async with httpx.AsyncClient(base_url=running_server.http_url, timeout=60) as client:
        alone = []
        for sample, subset in requests[:14]:
            r = await client.post(
                "/v1/models/digits-fusion/predict", files=multipart(sample, subset), data={"top_k": "10"}
            )
            alone.append(scores_of(r.json()))
        before = batch_totals((await client.get("/metrics")).text)
        together = await asyncio.gather(
            *(
                client.post("/v1/models/digits-fusion/predict", files=multipart(s, sub), data={"top_k": "10"})
                for s, sub in requests
            )
        )
        after = batch_totals((await client.get("/metrics")).text)
    for i, response in enumerate(together):
        assert response.status_code == 200, response.text
        expected = alone[i % 14]
        got = scores_of(response.json())
        assert max(abs(expected[k] - got[k]) for k in expected) < 1e-5, f"request {i} differs"
    rows, batches = after[0] - before[0], after[1] - before[1]
    assert rows == len(requests)
    assert batches < rows, "no batch held more than one row under concurrency"


def batch_totals(metrics_text: str) -> tuple[float, float]:
    total = count = 0.0
    for line in metrics_text.splitlines():
        if 'model="digits-fusion"' not in line:
            continue
        if line.startswith("fusionserve_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("fusionserve_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def test_version_route_and_unknown_version(client: httpx.Client, samples: list[Sample]) -> None:
    ok = client.post("/v1/models/digits-fusion/versions/1/predict", files=multipart(samples[0], ("text",)))
    assert ok.status_code == 200 and ok.json()["version"] == "1"
    missing = client.post(
        "/v1/models/digits-fusion/versions/7/predict", files=multipart(samples[0], ("text",))
    )
    assert missing.status_code == 404
    assert "version" in missing.json()["error"]["message"]


def test_model_listing_and_metadata(client: httpx.Client) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert {"digits-fusion", "digits-embed"} <= models.keys()
    meta = client.get("/v1/models/digits-fusion").json()
    assert meta["ready"] is True and meta["task"] == "classify"
    assert meta["labels"] == [str(d) for d in range(10)]
    assert set(meta["modalities"]) == {"image", "audio", "text"}
    assert meta["modalities"]["image"]["max_pixels"] > 0
    assert meta["batching"]["max_batch_size"] >= 1
    assert meta["versions"][0]["state"] == "READY"


def test_health_and_request_id(client: httpx.Client) -> None:
    assert client.get("/health/live").json() == {"live": True}
    assert client.get("/health/ready").json() == {"ready": True}
    assert client.get("/v1/models/digits-fusion/ready").json()["ready"] is True
    echoed = client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = client.get("/health/live").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)


def test_docs_render_offline(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn.jsdelivr.net" not in page.text and "unpkg.com" not in page.text
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text)
    assert assets, "the docs page loads no script"
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert client.get("/openapi.json").json()["info"]["title"] == "fusionserve"
