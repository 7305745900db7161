"""The naive baseline: what a first FastAPI app around the same model looks like.

    NAIVE_REPOSITORY=... NAIVE_MODEL=digits-fusion uvicorn benchmarks.naive_app:app --port 9000

The same decoders as fusionserve (``fusionserve.service.preprocess``), one ONNX Runtime
session with ORT's defaults (intra-op threads = all cores, spinning on), one
``session.run`` per request from FastAPI's thread pool, no batching, no
queue bound, no metrics. ``benchmarks/serving.py`` runs it in the same
interleaved rounds as fusionserve.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, Form, UploadFile

from fusionserve.service.model.config import load_model_config
from fusionserve.service.model.feeds import collate
from fusionserve.service.model.rows import RawInputs
from fusionserve.service.preprocess import Preprocessor

ENTRY = Path(os.environ["NAIVE_REPOSITORY"]) / os.environ.get("NAIVE_MODEL", "digits-fusion")
CONFIG = load_model_config(ENTRY / "config.yaml")
VERSION = max((p for p in ENTRY.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
SESSION = ort.InferenceSession(str(VERSION / "model.onnx"), providers=["CPUExecutionProvider"])
PREPROCESSOR = Preprocessor(CONFIG, ENTRY)
LABELS = (ENTRY / "labels.txt").read_text().split("\n")
app = FastAPI()


@app.post("/v1/models/{model}/predict")
def predict(
    model: str,
    image: Annotated[UploadFile | None, File()] = None,
    audio: Annotated[UploadFile | None, File()] = None,
    text: Annotated[str | None, Form()] = None,
) -> dict[str, object]:
    raw = RawInputs(
        image=image.file.read() if image else None, audio=audio.file.read() if audio else None, text=text
    )
    feeds, _ = collate([PREPROCESSOR.decode(raw)], CONFIG)
    logits = SESSION.run(None, feeds)[0][0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    top = np.argsort(-probs)[:5]
    return {"model": model, "predictions": [{"label": LABELS[i], "score": float(probs[i])} for i in top]}


@app.get("/health/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}
