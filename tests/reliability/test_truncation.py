"""No silent transformations: text cut at max_tokens and audio cropped at max_samples
are reported in the answer and counted, by model and modality."""

from __future__ import annotations

import io

import httpx
import numpy as np
import soundfile

from tests.conftest import RunningServer, Sample
from tests.reliability.helpers import MODEL, PREDICT, figures, metric_value


def wav_seconds(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    out = io.BytesIO()
    soundfile.write(out, 0.2 * np.sin(2 * np.pi * 440 * t), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def test_cut_inputs_are_reported_and_counted(running_server: RunningServer, samples: list[Sample]) -> None:
    long_text = " ".join(["seven"] * 40)
    with httpx.Client(base_url=running_server.http_url, timeout=60) as client:
        before = client.get("/metrics").text
        cut = client.post(
            PREDICT,
            files={"text": (None, long_text), "audio": ("long.wav", wav_seconds(2.5), "audio/wav")},
        ).json()
        whole = client.post(
            PREDICT, files={"text": (None, "seven"), "audio": ("a.wav", samples[0].wav, "audio/wav")}
        ).json()
        batch = client.post(PREDICT, json={"items": [{"text": long_text}, {"text": "one"}]}).json()
        after = client.get("/metrics").text
    counted = {
        m: metric_value(after, "fusionserve_truncations_total", model=MODEL, modality=m)
        - metric_value(before, "fusionserve_truncations_total", model=MODEL, modality=m)
        for m in ("text", "audio")
    }
    figures("truncation reported", answer=cut.get("truncated"), counted=counted)
    assert cut["truncated"] == {"text": {"given": 40, "kept": 16}, "audio": {"given": 40000, "kept": 16000}}
    assert "truncated" not in whole
    assert batch["results"][0]["truncated"] == {"text": {"given": 40, "kept": 16}}
    assert "truncated" not in batch["results"][1]
    assert counted == {"text": 2, "audio": 1}
