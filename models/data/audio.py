"""Spoken digit words synthesised offline with espeak-ng, and per-row audio corruptions."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import soxr

SAMPLE_RATE = 16000
MAX_SAMPLES = 16000
ESPEAK_RATE = 22050
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Base voices: English accents, plus a few other languages' voices reading the English words.
BASE_VOICES = [
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
    "de",
    "nl",
    "sv",
]
# Voice variants (speaker characteristics, "+NAME"), shared by all splits.
VARIANTS = [
    "adam",
    "Alex",
    "Alicia",
    "Andrea",
    "Andy",
    "Annie",
    "antonio",
    "aunty",
    "belinda",
    "benjamin",
    "boris",
    "caleb",
    "david",
    "Denis",
    "Diogo",
    "ed",
    "edward",
    "edward2",
    "Gene",
    "Gene2",
    "gustave",
    "Henrique",
    "Hugo",
    "iven",
    "iven2",
    "iven3",
    "iven4",
    "Jacky",
    "john",
    "kaukovalta",
    "Lee",
    "linda",
    "marcelo",
    "Marco",
    "Mario",
    "max",
    "Michael",
    "michel",
    "miguel",
    "Mike",
    "Mr",
    "Nguyen",
    "pablo",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "robosoft",
    "robosoft2",
    "robosoft3",
    "robosoft4",
    "robosoft5",
    "robosoft6",
    "robosoft7",
    "robosoft8",
    "steph",
    "steph2",
    "steph3",
    "Storm",
    "Tweaky",
    "UniRobot",
    "zac",
    "anika",
    "anikaRobot",
    "AnxiousAndy",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "grandpa",
    "grandma",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "norbert",
    "sandro",
    "shelby",
    "travis",
    "victor",
    "croak",
]


@dataclass(frozen=True)
class Speaker:
    """One espeak-ng configuration; it speaks all ten digit words."""

    voice: str
    variant: str
    speed: int
    pitch: int

    def argv(self, text: str, ssml: bool = False) -> list[str]:
        return [
            "espeak-ng",
            *(["-m"] if ssml else []),
            "-v",
            f"{self.voice}+{self.variant}",
            "-s",
            str(self.speed),
            "-p",
            str(self.pitch),
            "--stdout",
            text,
        ]


def espeak_version() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install -y espeak-ng)")
    return subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def _wav_pcm16(data: bytes) -> np.ndarray:
    """espeak-ng writes a streaming WAV with a bogus data size: take everything after 'data'+size."""
    i = data.find(b"data", 12)
    if data[:4] != b"RIFF" or i < 0:
        raise RuntimeError("espeak-ng produced no WAV output")
    pcm = data[i + 8 :]
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0


def _speak(speaker: Speaker, text: str, ssml: bool = False) -> np.ndarray:
    out = subprocess.run(speaker.argv(text, ssml), capture_output=True, check=True, timeout=60).stdout
    return soxr.resample(_wav_pcm16(out), ESPEAK_RATE, SAMPLE_RATE, quality="HQ").astype(np.float32)


def _segments(x: np.ndarray, rel: float = 0.02, min_gap: float = 0.2) -> list[np.ndarray]:
    """Stretches of sound separated by more than ``min_gap`` s of near-silence."""
    active = np.flatnonzero(np.abs(x) > rel * float(np.abs(x).max() or 1.0))
    if active.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(active) > int(min_gap * SAMPLE_RATE))
    starts = np.concatenate([[active[0]], active[cuts + 1]])
    ends = np.concatenate([active[cuts], [active[-1]]]) + 1
    return [x[a:b] for a, b in zip(starts, ends, strict=False)]


def _normalise(x: np.ndarray, speaker: Speaker, word: int) -> np.ndarray:
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak <= 0:
        raise RuntimeError(f"espeak-ng produced silence for {DIGIT_WORDS[word]!r} with {speaker}")
    return (x / peak)[:MAX_SAMPLES].astype(np.float32)


def synth_speaker(speaker: Speaker) -> list[np.ndarray]:
    """The ten digit words (float32, 16 kHz, trimmed, peak 1) in one espeak-ng call.

    The words are spoken with long SSML breaks and cut at the silences; when a
    voice does not yield exactly ten stretches, each word is spoken on its own.
    """
    text = "<speak>" + " ".join(f'{w}<break time="400ms"/>' for w in DIGIT_WORDS) + "</speak>"
    segs = _segments(_speak(speaker, text, ssml=True))
    if len(segs) != len(DIGIT_WORDS):
        segs = []
        for w in DIGIT_WORDS:
            parts = _segments(_speak(speaker, w), min_gap=10.0)
            segs.append(parts[0] if parts else np.zeros(0, np.float32))
    return [_normalise(s, speaker, i) for i, s in enumerate(segs)]


def synth_all(
    speakers: Sequence[Speaker], workers: int = 3, progress: bool = False
) -> list[list[np.ndarray]]:
    espeak_version()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        it = ex.map(synth_speaker, speakers)
        if progress:
            try:
                from tqdm import tqdm

                it = tqdm(it, total=len(speakers), desc="espeak-ng")
            except ImportError:
                pass
        return list(it)


def _colored_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    m = 1 << max(int(n - 1).bit_length(), 4)  # a power-of-two FFT, cropped to n
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / f ** (exponent / 2), m)[:n]
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def corrupt_audio(word: np.ndarray, babble: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A row's waveform (float32, length = its audio_length <= MAX_SAMPLES).

    The word may be truncated (keeping its onset, which makes four/five,
    six/seven, two/three confusable), is placed at a random offset with a
    random gain, and mixed with coloured noise at a random SNR and sometimes
    with another, quieter word (babble).
    """
    severity = rng.random()
    w = word
    if rng.random() < 0.005 + 0.015 * severity:
        keep = rng.uniform(0.3, 0.7)
        w = w[: max(int(len(w) * keep), 400)]
    if len(w) > MAX_SAMPLES - 800:
        w = w[: MAX_SAMPLES - 800]
    lo = max(len(w) + 800, SAMPLE_RATE // 2)
    length = int(rng.integers(lo, MAX_SAMPLES + 1)) if lo < MAX_SAMPLES else MAX_SAMPLES
    out = np.zeros(length, dtype=np.float64)
    off = int(rng.integers(0, length - len(w) + 1))
    out[off : off + len(w)] = w
    sig_rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2))) + 1e-9
    if babble is not None and rng.random() < 0.03 + 0.05 * severity:
        b = babble[:length]
        boff = int(rng.integers(0, length - len(b) + 1))
        b_rms = float(np.sqrt(np.mean(b.astype(np.float64) ** 2))) + 1e-9
        rel_db = rng.uniform(-24.0, -12.0)
        out[boff : boff + len(b)] += b * (sig_rms / b_rms) * 10 ** (rel_db / 20)
    snr_db = rng.uniform(18.0, 34.0) - 4.0 * severity
    noise = _colored_noise(length, rng, exponent=float(rng.choice([0.0, 1.0, 2.0])))
    out += noise * sig_rms * 10 ** (-snr_db / 20)
    gain = 10 ** (rng.uniform(-18.0, -1.0) / 20)
    out *= gain / (np.abs(out).max() + 1e-9)
    # Quantise to the 16-bit grid, so the array is exactly what a 16-bit WAV holds.
    # (+ 0.0 turns -0.0 into 0.0, so the bytes survive an int16 round trip.)
    return (np.round(out * 32767.0) / 32768.0 + 0.0).astype(np.float32)
