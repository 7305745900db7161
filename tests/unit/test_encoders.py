"""Encoders: the in-graph log-mel front end, padding independence, short audio."""

import math

import torch

from fusionserve.models.encoders import AudioEncoder, LogMel, TextEncoder
from fusionserve.models.features import fast_logmel


def _tone(freq: float, n: int, rate: int = 16000) -> torch.Tensor:
    return torch.sin(2 * math.pi * freq * torch.arange(n) / rate)


def test_logmel_peaks_at_the_tone_and_marks_whole_frames_valid() -> None:
    front = LogMel()
    wave = torch.stack([_tone(300, 8000), _tone(3000, 8000)])
    mel, valid = front(wave, torch.tensor([8000, 4000]))
    assert mel.shape[:2] == (2, 40)
    # a tone lands in a low mel band for 300 Hz, a higher one for 3 kHz
    assert mel[0, :, 10].argmax() < mel[1, :, 10].argmax()
    # frames are valid only when all 400 samples lie before the length
    assert int(valid[0].sum()) == (8000 - 400) // 160 + 1
    assert int(valid[1].sum()) == (4000 - 400) // 160 + 1


def test_fast_logmel_matches_the_graph_front_end() -> None:
    front = LogMel()
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(3, 5000, generator=g) * 0.2
    length = torch.tensor([5000, 3000, 800])
    want, want_valid = front(wave, length)
    got, got_valid = fast_logmel(front, wave, length)
    assert torch.equal(want_valid, got_valid)
    assert (want - got).abs().max() < 1e-3


def test_audio_encoder_ignores_samples_after_the_length() -> None:
    torch.manual_seed(0)
    enc = AudioEncoder(dim=32).eval()
    wave = torch.randn(2, 6000) * 0.2
    length = torch.tensor([6000, 3500])
    noisy_tail = wave.clone()
    noisy_tail[1, 3500:] = 1.0
    with torch.no_grad():
        a = enc(wave * (torch.arange(6000) < length[:, None]), length).pooled
        b = enc(noisy_tail, length).pooled
    assert (a[1] - b[1]).abs().max() <= 1e-5


def test_audio_shorter_than_one_frame_gives_a_finite_vector() -> None:
    enc = AudioEncoder(dim=16).eval()
    with torch.no_grad():
        out = enc(torch.zeros(1, 400), torch.tensor([100]))
    assert torch.isfinite(out.pooled).all()
    assert not out.mask.any()


def test_text_encoder_padding_independence() -> None:
    torch.manual_seed(0)
    enc = TextEncoder(vocab_size=30, dim=32).eval()
    ids = torch.tensor([[5, 6, 7]])
    att = torch.ones_like(ids)
    padded_ids = torch.tensor([[5, 6, 7, 0, 0, 0]])
    padded_att = torch.tensor([[1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        diff = (enc(ids, att).pooled - enc(padded_ids, padded_att).pooled).abs().max()
    assert diff <= 1e-5
