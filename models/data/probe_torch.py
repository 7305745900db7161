"""Small torch nets per modality (``--probe --cnn``): closer to what the fusion models reach."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fusionserve.models.data.dataset import TrimodalDataset


def _train(model, xtr, ytr, xva, epochs: int, lr: float = 2e-3, bs: int = 64):
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * ((len(ytr) + bs - 1) // bs)
    )
    g = torch.Generator().manual_seed(0)
    ytr_t = torch.as_tensor(ytr)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(ytr), generator=g).split(bs):
            loss = torch.nn.functional.cross_entropy(model(*(x[idx] for x in xtr)), ytr_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(*xva), -1).numpy()


def run_torch_probe(
    ds: TrimodalDataset, epochs: int = 8, only: tuple[str, ...] = ("image", "audio", "text")
) -> dict[str, float]:
    import torch
    from torch import nn

    from fusionserve.models.data.probe import log_mel
    from fusionserve.models.tokenizer import build_tokenizer, encode_texts

    torch.manual_seed(0)
    torch.set_num_threads(2)
    tr, va = ds.train, ds.val
    t0 = time.perf_counter()
    probs = {}

    def img(s):
        return (torch.as_tensor(s.image).permute(0, 3, 1, 2).float() / 255.0,)

    cnn = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 96, 3, padding=1),
        nn.BatchNorm2d(96),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(96, 10),
    )
    if "image" in only:
        probs["image"] = _train(cnn, img(tr), tr.label, img(va), epochs)
        print(f"  image CNN {(probs['image'].argmax(1) == va.label).mean():.3f}", flush=True)
    t1 = time.perf_counter()

    def aud(s):
        lm = log_mel(s.audio)
        frames = (np.arange(lm.shape[1]) * 160 + 512) <= s.audio_length[:, None]
        mu = (lm * frames[..., None]).sum(1, keepdims=True) / frames.sum(1)[:, None, None]
        lm = np.where(frames[..., None], lm - mu, 0.0)
        return (torch.as_tensor(lm).float().unsqueeze(1), torch.as_tensor(frames).float())

    class AudioNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(
                nn.Conv2d(1, 24, 3, padding=1),
                nn.BatchNorm2d(24),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(24, 48, 3, padding=1),
                nn.BatchNorm2d(48),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(48, 96, 3, padding=1),
                nn.BatchNorm2d(96),
                nn.ReLU(),
            )
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(96 * 2, 10))

        def forward(self, x, m):
            h = self.f(x).mean(-1)  # [B,C,T/4]
            mm = torch.nn.functional.max_pool1d(m[:, None, :], 4)[..., : h.shape[-1]]
            mean = (h * mm).sum(-1) / mm.sum(-1).clamp(min=1)
            mx = h.masked_fill(mm == 0, -1e4).amax(-1)
            return self.head(torch.cat([mean, mx], 1))

    if "audio" in only:
        probs["audio"] = _train(AudioNet(), aud(tr), tr.label, aud(va), epochs)
        print(f"  audio CNN {(probs['audio'].argmax(1) == va.label).mean():.3f}", flush=True)
    t2 = time.perf_counter()

    tok = build_tokenizer(tr.text)

    def txt(s):
        ids, att = encode_texts(tok, s.text)
        return (torch.as_tensor(ids), torch.as_tensor(att).float())

    class TextNet(nn.Module):
        def __init__(self, vocab: int):
            super().__init__()
            self.emb = nn.Embedding(vocab, 64, padding_idx=0)
            self.rnn = nn.GRU(64, 64, batch_first=True, bidirectional=True)
            self.head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))

        def forward(self, ids, att):
            h, _ = self.rnn(self.emb(ids))
            return self.head((h * att[..., None]).sum(1) / att.sum(1, keepdim=True))

    if "text" in only:
        probs["text"] = _train(TextNet(tok.get_vocab_size()), txt(tr), tr.label, txt(va), epochs)
        print(f"  text GRU {(probs['text'].argmax(1) == va.label).mean():.3f}", flush=True)
    t3 = time.perf_counter()
    res = {m: float((p.argmax(1) == va.label).mean()) for m, p in probs.items()}
    logp = {m: np.log(np.clip(p, 1e-6, 1)) for m, p in probs.items()}
    for combo in (("image", "audio"), ("image", "text"), ("audio", "text"), ("image", "audio", "text")):
        if not set(combo) <= set(probs):
            continue
        res["+".join(combo)] = float((sum(logp[m] for m in combo).argmax(1) == va.label).mean())
    print(
        f"torch probe on val (small CNN / log-mel CNN / GRU; late fusion = sum of log-probs; "
        f"{t1 - t0:.0f}s/{t2 - t1:.0f}s/{t3 - t2:.0f}s):"
    )
    for k, v in res.items():
        print(f"  {k:18s} {v:.3f}")
    return res
