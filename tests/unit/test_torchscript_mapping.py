"""TorchScript with the same mapping: arguments by name in any order, tuple or dict outputs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fusionserve.service.model.config import parse_model_config
from fusionserve.service.model.feeds import collate
from fusionserve.service.model.rows import DecodedRow
from fusionserve.service.runtimes import DeviceSpec, load_backend

torch = pytest.importorskip("torch")


class TupleOut(torch.nn.Module):
    """forward takes the mapped tensors in another order than the config lists them."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)

    def forward(self, input_ids: Any, pixel_values: Any, attention_mask: Any) -> Any:
        image = pixel_values.mean(dim=(2, 3))
        text = (input_ids * attention_mask).sum(1, keepdim=True).float()
        return image.sum(1, keepdim=True) * 0, self.proj(image) + text  # (unused, logits)


class DictOut(TupleOut):
    def forward(self, input_ids: Any, pixel_values: Any, attention_mask: Any) -> Any:
        _, logits = super().forward(input_ids, pixel_values, attention_mask)
        return {"logits": logits, "extra": logits * 2}


def _config(output: dict[str, Any]) -> Any:
    return parse_model_config(
        {
            "name": "ts",
            "task": "classify",
            "backend": "torchscript",
            "modalities": {
                "image": {
                    "height": 4,
                    "width": 4,
                    "input": "pixel_values",
                    "mask_input": None,
                    "dtype": "float32",
                    "layout": "NCHW",
                    "scale": 1 / 255,
                },
                "text": {
                    "max_tokens": 5,
                    "input": "input_ids",
                    "attention_input": "attention_mask",
                    "mask_input": None,
                    "padding": "fixed",
                },
            },
            "outputs": [output],
        },
        "test",
    )


@pytest.mark.parametrize(
    ("cls", "output"),
    [
        (TupleOut, {"name": "logits", "kind": "logits", "dims": 2, "index": 1}),
        (DictOut, {"name": "logits", "kind": "logits", "dims": 2}),
    ],
)
def test_traced_module_serves_with_the_mapping(tmp_path: Path, cls: type, output: dict[str, Any]) -> None:
    torch.manual_seed(0)
    module = cls().eval()
    example = (torch.ones(1, 5, dtype=torch.long), torch.rand(1, 3, 4, 4), torch.ones(1, 5, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, strict=False)
        path = tmp_path / "ts" / "1" / "model.pt"
        path.parent.mkdir(parents=True)
        traced.save(str(path))
    config = _config(output)
    backend = load_backend(config, path, DeviceSpec("cpu"))
    rng = np.random.default_rng(0)
    rows = [
        DecodedRow(image=rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), text_ids=np.array([3, 1, 2])),
        DecodedRow(image=rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), text_ids=np.array([7])),
    ]
    feeds, _ = collate(rows, config)
    served = backend.run(feeds)["logits"]
    with torch.no_grad():
        result = module(
            *(torch.from_numpy(feeds[n]) for n in ("input_ids", "pixel_values", "attention_mask"))
        )
    want = result["logits"] if isinstance(result, dict) else result[1]
    np.testing.assert_allclose(served, want.numpy(), atol=1e-5)
    backend.close()
