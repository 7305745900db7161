"""``fusionserve inspect`` and ``fusionserve verify`` on a tiny conventionally named ONNX export."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from fusionserve.service.__main__ import main
from fusionserve.service.model.config import parse_model_config

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
REFERENCE = """
import io
import numpy as np
from PIL import Image
from tokenizers import Tokenizer

def preprocess(files):
    image = Image.open(io.BytesIO(files["image"])).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR)
    pixels = (np.asarray(image, np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    tok = Tokenizer.from_file(TOKENIZER)
    tok.enable_truncation(6)
    tok.enable_padding(length=6, pad_id=0)
    enc = tok.encode(files["text"])
    return {
        "pixel_values": pixels.transpose(2, 0, 1),
        "input_ids": np.array(enc.ids, np.int64),
        "attention_mask": np.array(enc.attention_mask, np.int64),
    }
"""


def _graph(path: Path) -> None:
    """logits = [mean(pixels), sum(ids * mask), sum(mask)]: every input changes the answer."""
    nodes = [
        helper.make_node("ReduceMean", ["pixel_values"], ["p"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axis1"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["attention_mask", "axis1"], ["n"], keepdims=0),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["p", "axis1"], ["p1"]),
        helper.make_node("Unsqueeze", ["sf", "axis1"], ["s1"]),
        helper.make_node("Unsqueeze", ["nf", "axis1"], ["n1"]),
        helper.make_node("Concat", ["p1", "s1", "n1"], ["logits"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 8, 8]),
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 6]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", 6]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[helper.make_tensor("axis1", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))


def _tokenizer() -> Tokenizer:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "red", "cat", "dog"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return tok


@pytest.fixture
def entry(tmp_path: Path) -> Path:
    entry = tmp_path / "repo" / "tiny"
    _graph(entry / "1" / "model.onnx")
    _tokenizer().save(str(entry / "tokenizer.json"))
    (entry / "labels.txt").write_text("a\nb\nc\n")
    return entry


def _png(path: Path) -> Path:
    yy, xx = np.mgrid[0:20, 0:30]
    pixels = np.stack([xx * 8, yy * 12, (xx + yy) * 5], axis=2).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    path.write_bytes(out.getvalue())
    return path


def test_inspect_writes_a_starter_config_that_serves_as_written(
    entry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = entry / "config.yaml"
    assert main(["inspect", str(entry / "1" / "model.onnx"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "input_ids: int64 [batch, 6]" in printed and "logits: float32 [batch, 3]" in printed
    text = out.read_text()
    assert "# guess" in text
    config = parse_model_config(yaml.safe_load(text), str(out))
    assert config.name == "tiny" and config.task == "classify"
    image, text_spec = config.modalities.image, config.modalities.text
    assert image is not None and text_spec is not None
    assert (image.input, image.layout, image.dtype, image.height, image.mask_input) == (
        "pixel_values",
        "NCHW",
        "float32",
        8,
        None,
    )
    assert list(image.mean or ()) == MEAN and list(image.std or ()) == STD
    assert (text_spec.padding, text_spec.max_tokens, text_spec.special_tokens) == ("fixed", 6, True)
    assert text_spec.attention_input == "attention_mask" and text_spec.token_type_input is None
    capsys.readouterr()
    assert main(["verify", str(entry)]) == 0, capsys.readouterr().out


def test_inspect_without_out_prints_the_config_to_stdout(
    entry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(entry / "1" / "model.onnx")]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["modalities"]["image"]["input"] == "pixel_values"
    assert "pixel_values: float32" in captured.err


def test_verify_compares_with_the_users_preprocessing(
    entry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["inspect", str(entry / "1" / "model.onnx"), "--out", str(entry / "config.yaml")])
    reference = tmp_path / "mine.py"
    reference.write_text(
        REFERENCE.replace("MEAN", repr(MEAN))
        .replace("STD", repr(STD))
        .replace("TOKENIZER", repr(str(entry / "tokenizer.json")))
    )
    image = _png(tmp_path / "a.png")
    args = [
        "verify",
        str(entry),
        "--reference",
        str(reference),
        "--file",
        f"image={image}",
        "--file",
        "text=red cat",
    ]
    capsys.readouterr()
    assert main(args) == 0
    report = capsys.readouterr().out
    assert "input input_ids: server int64 [6], reference int64 [6]: max abs diff 0" in report
    assert "output logits: served vs reference preprocessing: max abs diff" in report

    # A reference that forgot the normalisation: verify says where, and fails.
    reference.write_text(reference.read_text().replace("- np.array(", "- 0 * np.array("))
    assert main(args) == 1
    report = capsys.readouterr().out
    assert "FAIL  input pixel_values" in report and "FAIL  output logits" in report


def test_verify_reports_a_wrong_mapping_in_words(entry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["inspect", str(entry / "1" / "model.onnx"), "--out", str(entry / "config.yaml")])
    config = yaml.safe_load((entry / "config.yaml").read_text())
    config["modalities"]["text"]["padding"] = "longest"
    (entry / "config.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["verify", str(entry)]) == 1
    report = capsys.readouterr().out
    assert "modalities.text.padding: config says longest" in report and "set padding: fixed" in report
