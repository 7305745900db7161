"""Short English texts about a digit: direct, descriptive, vague and garbled.

Direct and descriptive texts name the digit exactly (a model can read them off
perfectly); vague texts only narrow it down to 2-3 candidates; garbled texts
carry a misspelt key word or nothing useful at all. The mix sets how well text
alone can do (about 94-95% for a perfect reader, see ``TEXT_MIX``).
"""

from __future__ import annotations

import numpy as np

WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
]

# Share of rows per kind. Expected accuracy of a perfect reader:
# informative 1.0, vague ~0.5 (2 candidates; some 3), garbled ~0.1-0.5.
TEXT_MIX = {"informative": 0.905, "vague": 0.08, "garbled": 0.015}

_ARTICLE = {w: ("an" if w[0] in "aeio" or w == "eleven" else "a") for w in WORDS}

_DIRECT = [
    "{w}",
    "{d}",
    "the number {w}",
    "the number {d}",
    "{a} {w}",
    "the digit {w}",
    "the digit {d}",
    "it is {w}",
    "it's {a} {w}",
    "this is {a} {w}",
    "number {w}",
    "digit {d}",
    "i see {a} {w}",
    "it says {w}",
    "the figure {w}",
    "a handwritten {d}",
    "{w}!",
    "looks like {a} {w} to me",
    "that's the number {w}",
    "definitely {a} {w}",
    "{w}, i think",
    "the answer is {w}",
    "just {w}",
    "the label is {d}",
]

_FACTS = {
    1: ["the number of noses on a face", "a single one"],
    2: ["the number of wheels on a bicycle", "a pair"],
    3: ["the number of sides of a triangle", "the number of wheels on a tricycle"],
    4: ["the number of legs on a dog", "the number of sides of a square"],
    5: ["the number of fingers on one hand", "the number of sides of a pentagon"],
    6: ["the number of legs on an insect", "the number of faces of a cube"],
    7: ["the number of days in a week", "the number of colours in a rainbow"],
    8: ["the number of legs on a spider", "the number of arms of an octopus"],
    9: ["the number of planets in the old textbooks", "the number of innings in baseball"],
    0: ["nothing at all", "the number of legs on a fish"],
}


def _descriptive(d: int, rng: np.random.Generator) -> str:
    """A text that determines ``d`` exactly through a little arithmetic or a fact."""
    options: list[str] = []
    for k, kw in ((1, "one"), (2, "two"), (3, "three")):
        if d - k >= 0:
            options += [f"{kw} more than {WORDS[d - k]}", f"{WORDS[d - k]} plus {kw}"]
        if d + k <= 12:
            options += [f"{kw} less than {WORDS[d + k]}", f"{WORDS[d + k]} minus {kw}"]
    if d >= 1:
        options += [f"the number after {WORDS[d - 1]}", f"the next number after {d - 1}"]
    if d <= 8:
        options += [f"the number before {WORDS[d + 1]}", f"the number just below {d + 1}"]
    if 2 * d <= 18:
        options.append(f"half of {WORDS[2 * d]}")
    if d % 2 == 0 and d > 0:
        options += [f"twice {WORDS[d // 2]}", f"double {WORDS[d // 2]}"]
    if d in (0, 1, 4, 9):
        options.append(f"the square of {WORDS[round(d**0.5)]}")
    if d in (4, 6, 8, 9):
        pairs = [(a, d // a) for a in (2, 3) if d % a == 0 and d // a >= a]
        a, b = pairs[int(rng.integers(len(pairs)))]
        options.append(f"{WORDS[a]} times {WORDS[b]}")
    options += _FACTS[d]
    return options[int(rng.integers(len(options)))]


def _vague_sets() -> list[tuple[str, frozenset[int]]]:
    """Descriptions that fit 2 (sometimes 3) digits."""
    out: list[tuple[str, frozenset[int]]] = []
    parity = {"an odd number": {1, 3, 5, 7, 9}, "an even number": {0, 2, 4, 6, 8}}
    for name, base in parity.items():
        for k in range(10):
            big = frozenset(x for x in base if x > k)
            small = frozenset(x for x in base if x < k)
            if len(big) in (2, 3):
                out.append((f"{name} bigger than {WORDS[k]}", big))
            if len(small) in (2, 3):
                out.append((f"{name} less than {WORDS[k]}", small))
    for lo in range(-1, 9):
        for hi in (lo + 3, lo + 4):
            s = frozenset(range(max(lo + 1, 0), min(hi, 10)))
            if len(s) in (2, 3) and lo >= 0 and hi <= 10:
                out.append((f"a number between {WORDS[lo]} and {WORDS[hi]}", s))
    out += [
        ("a prime number bigger than four", frozenset({5, 7})),
        ("a prime number less than four", frozenset({2, 3})),
        ("a positive multiple of four", frozenset({4, 8})),
        ("a positive multiple of three", frozenset({3, 6, 9})),
        ("a number that rounds to ten", frozenset({8, 9})),
        ("one of the two biggest digits", frozenset({8, 9})),
        ("one of the two smallest digits", frozenset({0, 1})),
        ("a digit with a closed loop on top", frozenset({8, 9})),
        ("a digit drawn with straight strokes only", frozenset({1, 4, 7})),
        ("a curvy digit with no straight lines", frozenset({0, 8})),
    ]
    return out


VAGUE = _vague_sets()
_VAGUE_BY_LABEL = {d: [t for t, s in VAGUE if d in s] for d in range(10)}

_UNINFORMATIVE = [
    "i can't read it",
    "some digit",
    "a number",
    "the ink is smudged",
    "no idea",
    "hard to say",
    "a single digit",
    "it's blurry",
    "something",
    "the usual",
]


def _typo(word: str, rng: np.random.Generator) -> str:
    """Misspell ``word`` by one edit (swap, drop, double or replace a letter)."""
    if len(word) < 3 or not word.isalpha():
        return word
    i = int(rng.integers(len(word) - 1))
    kind = int(rng.integers(4))
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    return word[:i] + "qwertyuiopasdfghjklzxcvbnm"[int(rng.integers(26))] + word[i + 1 :]


def informative_text(d: int, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        tpl = _DIRECT[int(rng.integers(len(_DIRECT)))]
        w = WORDS[d]
        return tpl.format(w=w, d=d, a=_ARTICLE[w])
    return _descriptive(d, rng)


def make_text(d: int, rng: np.random.Generator) -> tuple[str, str]:
    """One text for digit ``d`` and its kind (informative / vague / garbled)."""
    u = rng.random()
    if u < TEXT_MIX["garbled"]:
        if rng.random() < 0.5:
            return _UNINFORMATIVE[int(rng.integers(len(_UNINFORMATIVE)))], "garbled"
        w = WORDS[d]
        return f"the number {_typo(w, rng)}" if len(w) >= 3 else "the number ?", "garbled"
    if u < TEXT_MIX["garbled"] + TEXT_MIX["vague"]:
        opts = _VAGUE_BY_LABEL[d]
        return opts[int(rng.integers(len(opts)))], "vague"
    text = informative_text(d, rng)
    # Harmless noise: a typo in a word that does not carry the digit.
    if rng.random() < 0.05:
        toks = text.split()
        carriers = set(WORDS) | {str(i) for i in range(10)}
        free = [i for i, t in enumerate(toks) if t.strip("!,") not in carriers and len(t) >= 4]
        if free:
            j = free[int(rng.integers(len(free)))]
            toks[j] = _typo(toks[j], rng)
            text = " ".join(toks)
    if rng.random() < 0.15:
        text = text[:1].upper() + text[1:]
    return text, "informative"
