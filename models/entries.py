"""Repository entries from checkpoints: the entry's config and the call into ``fusionserve.models.export``.

The decode contract written here (28x28 images, 16 kHz audio up to one
second, 16 tokens) is the one the models were trained on; ``min_samples`` is
one STFT frame so the server never feeds a graph an audio tensor too short
to frame.
"""

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionserve.models.checkpoint import Checkpoint
from fusionserve.models.classifier import FusionClassifier
from fusionserve.models.contrastive import EMBED_OUTPUTS
from fusionserve.models.explained import classifier_outputs, explained
from fusionserve.service.config import BUNDLED_EXPORT_FORMAT
from fusionserve.service.model.config import CONFIG_FILE, ModelConfig, load_model_config

#: What ``export_checkpoint`` writes; bumped when the graph's outputs change, so an entry
#: written by older code is stale and rebuilt. 2: classifiers export their embeddings and
#: per-modality attribution (models/explained.py).
EXPORT_FORMAT = BUNDLED_EXPORT_FORMAT
#: Graph inputs need at least one STFT frame (n_fft samples); the server pads batches to this.
MIN_AUDIO_SAMPLES = 400


def entry_config(name: str, kind: str, meta: dict[str, Any], build_key: str) -> ModelConfig:
    """The repository config of a trained checkpoint (docs/contracts.md, service/model/config.py)."""
    modalities = {
        "image": {"height": 28, "width": 28},
        "audio": {"sample_rate": 16000, "max_samples": 16000, "min_samples": MIN_AUDIO_SAMPLES},
        "text": {"max_tokens": 16},
    }
    metrics = meta.get("metrics", {})
    facts: dict[str, Any] = {
        "dataset_hash": meta["dataset_hash"],
        "seed": meta["seed"],
        "build_key": build_key,
        "export_format": EXPORT_FORMAT,
        "train_config": meta["train_config"],
    }
    if kind == "classifier":
        outputs = classifier_outputs(
            meta["strategy"], len(meta["labels"]), int(meta["fused_dims"]), int(meta["dim"])
        )
        task = "classify"
        description = f"Digit classifier fusing image, audio and text ({meta['strategy']} fusion)"
        facts.update(
            strategy=meta["strategy"], val_acc=metrics.get("val_acc"), test_acc=metrics.get("test_acc")
        )
    else:
        dims = int(meta["embed_dim"])
        sources = ("fused", "image", "audio", "text")
        outputs = [
            {"name": n, "kind": "embedding", "source": s, "dims": dims}
            for n, s in zip(EMBED_OUTPUTS, sources, strict=True)
        ]
        task = "embed"
        description = "Joint image/audio/text embeddings of spoken, written and described digits (InfoNCE)"
        facts.update(strategy="contrastive", test_recall_at_1=metrics.get("test_recall_at_1"))
    return ModelConfig.model_validate(
        {
            "name": name,
            "description": description,
            "backend": "onnx",
            "task": task,
            "modalities": modalities,
            "outputs": outputs,
            "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2},
            # Measured on 2 cores (benchmarks/serving.py): two single-threaded
            # instances without spinning beat one session using both cores
            # (721 vs 382 req/s), since decoding and HTTP need the cores too.
            "instance_groups": [{"kind": "cpu", "count": 2}],
            "onnx": {"intra_op_threads": 1},
            "metadata": facts,
        }
    )


def entry_is_current(entry: Path, build_key: str) -> bool:
    """The entry was exported from this build key and still passes ``verify_entry``."""
    from fusionserve.models.verify import verify_entry

    if not (entry / CONFIG_FILE).is_file():
        return False
    try:
        config = load_model_config(entry / CONFIG_FILE)
    except Exception:
        return False
    return (
        config.metadata.get("build_key") == build_key
        and config.metadata.get("export_format") == EXPORT_FORMAT
        and not verify_entry(entry)
    )


def export_checkpoint(
    ckpt: Checkpoint, name: str, repo: Path, version: int, formats: Sequence[str], build_key: str = ""
) -> Path:
    """Write ``repo/name`` from a classifier or embedder checkpoint via ``fusionserve.models.export``."""
    from fusionserve.models.export import export_entry
    from fusionserve.models.verify import TOKENIZER_SPECIALS

    meta = dict(ckpt.meta)
    module = ckpt.build()
    if isinstance(module, FusionClassifier):
        meta["strategy"] = ckpt.spec["strategy"]
        meta["dim"] = ckpt.spec["dim"]
        meta["fused_dims"] = module.fusion.out_dim
        module = explained(module)
    elif ckpt.kind == "embedder":
        meta["embed_dim"] = ckpt.spec["embed_dim"]
    else:
        raise ValueError(
            f"a {ckpt.kind!r} checkpoint is not a servable model; export a classifier or embedder"
        )
    config = entry_config(name, ckpt.kind, meta, build_key)
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tokenizer.json"
        tok.write_text(meta["tokenizer"], encoding="utf-8")
        return export_entry(
            module,
            config=config,
            labels=meta["labels"] if ckpt.kind == "classifier" else None,
            tokenizer_path=tok,
            repo_dir=repo,
            version=version,
            formats=tuple(formats),
            check_inputs=[meta["check_inputs"]],
            tokenizer_specials=TOKENIZER_SPECIALS,
        )
