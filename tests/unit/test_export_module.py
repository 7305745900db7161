"""``fusionserve export --module``: any nn.Module with a mapped config.yaml, parity-checked, then verified."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from fusionserve.models.serve_check import verify
from fusionserve.service.__main__ import main

MODULE = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.tokens = nn.Embedding(8, 4)
        self.types = nn.Embedding(2, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, pixel_values, input_ids, attention_mask, token_type_ids):
        image = self.conv(pixel_values).mean(dim=(2, 3))
        weights = attention_mask.unsqueeze(-1).float()
        text = ((self.tokens(input_ids) + self.types(token_type_ids)) * weights).sum(1) / weights.sum(1)
        return self.head(torch.cat([image, text], 1))


def build():
    return Tiny()
"""
CONFIG = {
    "name": "tiny-export",
    "task": "classify",
    "modalities": {
        "image": {
            "height": 8,
            "width": 8,
            "input": "pixel_values",
            "mask_input": None,
            "dtype": "float32",
            "layout": "NCHW",
            "scale": 1 / 255,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
        "text": {
            "max_tokens": 6,
            "input": "input_ids",
            "attention_input": "attention_mask",
            "token_type_input": "token_type_ids",
            "mask_input": None,
            "special_tokens": True,
            "padding": "fixed",
        },
    },
    "outputs": [{"name": "logits", "kind": "logits", "dims": 3}],
}


def test_export_any_module_then_verify_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tiny.py").write_text(MODULE)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "labels.txt").write_text("x\ny\nz\n")
    vocab = {t: i for i, t in enumerate(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "red", "cat", "dog", "sat"])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    repo = tmp_path / "repo"
    argv = ["export", "--module", f"{tmp_path / 'tiny.py'}:build", "--config", str(tmp_path / "config.yaml")]
    argv += ["--labels", str(tmp_path / "labels.txt"), "--tokenizer", str(tmp_path / "tokenizer.json")]
    argv += ["--repo", str(repo), "--format", "onnx"]
    assert main(argv) == 0, capsys.readouterr().err
    entry = repo / "tiny-export"
    assert (entry / "1" / "model.onnx").is_file()
    written = yaml.safe_load((entry / "config.yaml").read_text())
    assert written["modalities"]["image"]["input"] == "pixel_values"
    assert written["metadata"]["export"]["parity_atol"] == 1e-4
    report = verify(entry)
    assert not report.failed, "\n".join(report.lines)


def test_export_module_needs_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tiny.py").write_text(MODULE)
    assert main(["export", "--module", f"{tmp_path / 'tiny.py'}:build", "--repo", str(tmp_path)]) == 2
    assert "--module needs --config" in capsys.readouterr().err
