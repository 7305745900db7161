"""A fusion model written and exported the way a user would, outside ``models/``.

The image + text late-fusion classifier of the classic PyTorch example: a
small CNN on float32 NCHW ImageNet-normalised 224x224 images, a 2-layer
transformer text encoder over a BERT-style WordPiece tokenizer (``[CLS] …
[SEP]``, ``[UNK]`` = 4, not 1), a fixed 64-token input with
``token_type_ids``; and a variant with a raw-waveform audio branch on a fixed
1 s window at 16 kHz, with no presence masks. Nothing here imports fusionserve:
the export is plain ``torch.onnx.export`` / ``torch.jit.trace`` with the
model's natural tensor names, and ``config.yaml`` beside each entry is all the
server needs (docs/model-config.md, "Bring your own model").

``reference_*`` is the user's own preprocessing (what training used): PIL
bilinear resize to 224x224 ignoring aspect (the server's ``resize: stretch``),
``/255``, ImageNet mean/std, NCHW; the tokenizer with its post-processor,
padded to 64. ``verify --reference`` and the tests compare the server with it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import Tensor, nn

IMAGE_SIZE = 224
SEQ_LEN = 64
SAMPLE_RATE = 16_000
WINDOW = SAMPLE_RATE  # 1 s
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
LABELS = ["cat", "dog", "bird", "fish"]
SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]  # [PAD] 0, [UNK] 4
WORDS = [
    "a",
    "the",
    "cat",
    "dog",
    "bird",
    "fish",
    "photo",
    "of",
    "small",
    "big",
    "red",
    "blue",
    "green",
    "black",
    "white",
    "on",
    "in",
    "sitting",
    "flying",
    "swimming",
]


def build_tokenizer() -> Tokenizer:
    """A BERT-style WordPiece tokenizer, built offline: lowercase, [CLS] $A [SEP], [UNK] = 4."""
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    for piece in ("##s", "##ing", "##y"):
        vocab.setdefault(piece, len(vocab))
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tokenizer


class ImageEncoder(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 7, stride=4, padding=3),
            nn.ReLU(),
            nn.Conv2d(8, dim, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.net(pixel_values)


class TextEncoder(nn.Module):
    """Token + learned position (exactly 64) + token type embeddings, 2 transformer layers, masked mean."""

    def __init__(self, vocab_size: int, dim: int = 32) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(0.02 * torch.randn(SEQ_LEN, dim))
        self.types = nn.Embedding(2, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        x = self.tokens(input_ids) + self.positions + self.types(token_type_ids)
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        weights = attention_mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class AudioEncoder(nn.Module):
    """Strided 1-D convolutions straight on the waveform."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 8, 64, stride=16),
            nn.ReLU(),
            nn.Conv1d(8, dim, 16, stride=8),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )

    def forward(self, input_values: Tensor) -> Tensor:
        return self.net(input_values.unsqueeze(1))


class ImageTextClassifier(nn.Module):
    def __init__(self, vocab_size: int, num_labels: int = len(LABELS)) -> None:
        super().__init__()
        self.image = ImageEncoder()
        self.text = TextEncoder(vocab_size)
        self.head = nn.Linear(16 + 32, num_labels)

    def forward(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor
    ) -> Tensor:
        fused = torch.cat([self.image(pixel_values), self.text(input_ids, attention_mask, token_type_ids)], 1)
        return self.head(fused)


class ImageAudioTextClassifier(ImageTextClassifier):
    """The variant with a raw-waveform branch (fixed 1 s window, no presence masks)."""

    def __init__(self, vocab_size: int, num_labels: int = len(LABELS)) -> None:
        super().__init__(vocab_size, num_labels)
        self.audio = AudioEncoder()
        self.head = nn.Linear(16 + 32 + 16, num_labels)

    def forward(  # type: ignore[override]
        self,
        pixel_values: Tensor,
        input_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor,
    ) -> Tensor:
        parts = [
            self.image(pixel_values),
            self.audio(input_values),
            self.text(input_ids, attention_mask, token_type_ids),
        ]
        return self.head(torch.cat(parts, 1))


# -- the user's own preprocessing (the reference the server must match) -----


def reference_pixels(image_bytes: bytes) -> np.ndarray:
    """float32 [3, 224, 224]: RGB, bilinear resize ignoring aspect, /255, ImageNet mean/std."""
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    values = np.asarray(image, dtype=np.float32) / 255.0
    values = (values - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return values.transpose(2, 0, 1).copy()


def reference_text(tokenizer: Tokenizer, text: str) -> dict[str, np.ndarray]:
    """input_ids / attention_mask / token_type_ids, int64 [64]: special tokens, right-padded with [PAD]."""
    tokenizer.enable_truncation(SEQ_LEN)
    tokenizer.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
    encoding = tokenizer.encode(text)
    return {
        "input_ids": np.asarray(encoding.ids, dtype=np.int64),
        "attention_mask": np.asarray(encoding.attention_mask, dtype=np.int64),
        "token_type_ids": np.asarray(encoding.type_ids, dtype=np.int64),
    }


def reference_audio(samples: np.ndarray) -> np.ndarray:
    """float32 [16000]: the first second, normalised to zero mean and unit variance, zero-padded."""
    window = np.zeros(WINDOW, dtype=np.float32)
    kept = samples[:WINDOW].astype(np.float32)
    kept = (kept - kept.mean()) / np.sqrt((kept - kept.mean()).var() + 1e-7)
    window[: len(kept)] = kept
    return window


# -- export: plain torch, natural names --------------------------------------


def _example_inputs(with_audio: bool, vocab_size: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = {"pixel_values": torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)}
    if with_audio:
        inputs["input_values"] = 0.1 * torch.randn(2, WINDOW, generator=generator)
    inputs["input_ids"] = torch.randint(0, vocab_size, (2, SEQ_LEN), generator=generator)
    inputs["attention_mask"] = torch.ones(2, SEQ_LEN, dtype=torch.int64)
    inputs["token_type_ids"] = torch.zeros(2, SEQ_LEN, dtype=torch.int64)
    return inputs


def export_onnx(model: nn.Module, path: Path, *, with_audio: bool, vocab_size: int) -> None:
    """``torch.onnx.export`` with a dynamic batch axis, as a user writes it."""
    inputs = _example_inputs(with_audio, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model.eval(),
        tuple(inputs.values()),
        str(path),
        input_names=list(inputs),
        output_names=["logits"],
        dynamic_axes={**{name: {0: "batch"} for name in inputs}, "logits": {0: "batch"}},
        opset_version=18,
        dynamo=False,
    )


def export_torchscript(model: nn.Module, path: Path, *, with_audio: bool, vocab_size: int) -> None:
    """``torch.jit.trace`` (deprecated upstream; ONNX is the recommended format)."""
    inputs = _example_inputs(with_audio, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), tuple(inputs.values()))
    traced.save(str(path))


# -- a repository entry: the exported file, its side files, and config.yaml ---

HERE = Path(__file__).resolve().parent
VARIANTS = {"image-text": False, "image-audio-text": True}  # name → has the audio branch


def build_model(variant: str, vocab_size: int, seed: int = 0) -> nn.Module:
    """A seeded, untrained model (parity, not accuracy, is what the example shows)."""
    torch.manual_seed(seed)
    cls = ImageAudioTextClassifier if VARIANTS[variant] else ImageTextClassifier
    return cls(vocab_size).eval()


def write_entry(
    repo: Path, variant: str, model: nn.Module, tokenizer: Tokenizer, backend: str = "onnx"
) -> Path:
    """``<repo>/<variant>/``: config.yaml (this directory's), labels.txt, tokenizer.json, 1/model.*"""
    entry = repo / variant
    entry.mkdir(parents=True, exist_ok=True)
    config = (HERE / variant / "config.yaml").read_text(encoding="utf-8")
    if backend == "torchscript":
        config = config.replace("backend: onnx", "backend: torchscript")
    (entry / "config.yaml").write_text(config, encoding="utf-8")
    if (HERE / variant / "hooks.py").is_file():
        (entry / "hooks.py").write_bytes((HERE / variant / "hooks.py").read_bytes())
    (entry / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS), encoding="utf-8")
    tokenizer.save(str(entry / "tokenizer.json"))
    vocab, with_audio = tokenizer.get_vocab_size(), VARIANTS[variant]
    if backend == "onnx":
        export_onnx(model, entry / "1" / "model.onnx", with_audio=with_audio, vocab_size=vocab)
    else:
        export_torchscript(model, entry / "1" / "model.pt", with_audio=with_audio, vocab_size=vocab)
    return entry


def image_text_model() -> nn.Module:
    """For ``fusionserve export --module examples/byom/fusion_model.py:image_text_model``."""
    return build_model("image-text", build_tokenizer().get_vocab_size())


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write the example entries into a model repository")
    parser.add_argument("repo", type=Path)
    parser.add_argument("--backend", choices=["onnx", "torchscript"], default="onnx")
    args = parser.parse_args()
    tok = build_tokenizer()
    for name in VARIANTS:
        print(write_entry(args.repo, name, build_model(name, tok.get_vocab_size()), tok, args.backend))
