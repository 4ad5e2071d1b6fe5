"""Invented, pronounceable, unique names for the embedded world.

Names are built from open syllables (consonant + vowel) and an optional final consonant, so they
read like place or family names but belong to no real entity a pretrained model could have memorised.
The alphabet deliberately leaves out the letters q, x, z and j: the prompt's one-shot demonstration uses
names with those letters (see `zerosearch.data.prompts`), so no world entity can ever collide with the demo entity.

A `NameRegistry` hands out names and remembers every standalone token it gave (full names, surnames,
single-word names), so no two entities share a name and a person's surname alias names nobody else.
A fixed-seed `random.Random` drives everything; nothing depends on hash order, so output is reproducible.
"""

from __future__ import annotations

import random

ONSETS = (
    "b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
    "br", "dr", "gr", "kr", "tr", "st", "th", "sh", "ch", "fl", "pl", "sl", "gl", "cl",
)  # fmt: skip
INNER_ONSETS = ("b", "d", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "th", "nd", "rl", "st")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "a", "i", "ae", "ei", "ou")
CODAS = ("n", "r", "l", "s", "m", "th", "nd", "rn", "ck", "", "", "")
PLACE_SUFFIXES = ("ford", "haven", "mere", "stead", "wick", "holm", "gard", "by")
FORBIDDEN_LETTERS = frozenset("qxzj")
# A few strings that would read as real places; rejected if produced.
_BLOCKLIST = frozenset({"paris", "rome", "london", "berlin", "moscow", "milan", "toronto", "sofia", "lima",
                        "delhi", "malta", "china", "india", "peru", "cuba", "mali", "oslo", "bern", "riga",
                        "vienna", "seoul", "tokyo", "dublin", "madrid", "monaco", "panama", "kenya", "nepal",
                        "canada", "sudan", "ghana", "samoa", "tonga", "nauru", "palau", "bali", "sparta"})


def word(rng: random.Random, min_syl: int = 2, max_syl: int = 3, place: bool = False) -> str:
    """A capitalised invented word: open syllables (consonant + vowel), an optional final consonant, and for
    places of two syllables sometimes an English-like suffix ("-ford", "-haven", ...)."""
    n = rng.randint(min_syl, max_syl)
    parts = [rng.choice(ONSETS) + rng.choice(VOWELS)]
    parts += [rng.choice(INNER_ONSETS) + rng.choice(VOWELS[:10]) for _ in range(n - 1)]
    parts.append(rng.choice(CODAS))
    if place and n == 2 and rng.random() < 0.35:
        parts.append(rng.choice(PLACE_SUFFIXES))
    text = "".join(parts)
    return text[0].upper() + text[1:]


class NameRegistry:
    """Issues unique invented names; every standalone token it returns is remembered."""

    def __init__(self, rng: random.Random, max_tries: int = 200) -> None:
        self.rng = rng
        self.max_tries = max_tries
        self.taken: set[str] = set()
        self.given: set[str] = set()  # given names may repeat among people but never equal another name

    def _fresh(self, make) -> str:
        for _ in range(self.max_tries):
            candidate = make()
            key = candidate.lower()
            clash = key in self.taken or key in self.given or key in _BLOCKLIST
            if clash or FORBIDDEN_LETTERS & set(key) or len(key) < 4:
                continue
            self.taken.add(key)
            return candidate
        raise RuntimeError(f"could not find a fresh name after {self.max_tries} tries; the world is too large "
                           "for the syllable inventory (lower --entities)")

    def single(self, min_syl: int = 2, max_syl: int = 3, place: bool = False) -> str:
        """A one-word name (country, city, river, mountain, company stem, title word)."""
        return self._fresh(lambda: word(self.rng, min_syl, max_syl, place))

    def person(self) -> tuple[str, str]:
        """(given name, surname); the surname is unique, the given name may repeat across people."""
        given = word(self.rng, 2, 2)
        for _ in range(self.max_tries):
            if given.lower() not in self.taken and not FORBIDDEN_LETTERS & set(given.lower()):
                break
            given = word(self.rng, 2, 2)
        self.given.add(given.lower())
        surname = self._fresh(lambda: word(self.rng, 2, 3))
        full = f"{given} {surname}"
        self.taken.add(full.lower())
        return given, surname
