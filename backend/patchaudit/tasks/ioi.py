"""Indirect-object identification (IOI) prompt pairs.

A clean prompt names two people, then repeats one of them (the subject, S); the answer is
the other one (the indirect object, IO), the name that is *not* repeated::

    When Mary and John went to the store , John gave a drink to   ->  " Mary"

Templates are strings with three placeholders: ``{A}`` and ``{B}`` (the two first
mentions) and ``{C}`` (the second mention of the subject). For a clean prompt, (A, B) is
(IO, S) or (S, IO) with equal probability and C = S, so the answer is never "always the
first name".

Corruptions (the corrupted prompt always has the same number of words as the clean one):

- ``"abc"``: the second mention of S is replaced by a third name X (neither IO nor S):
  "When Mary and John went to the store , Bob gave a drink to". Neither name is repeated,
  so the IO-vs-S information is removed.
- ``"swap"``: the second mention becomes IO: "When Mary and John went to the store , Mary
  gave a drink to". The correct answer flips: in the corrupted prompt S (" John") is the
  better answer, so the logit difference answer - wrong changes sign.

``answer`` / ``wrong`` are the clean answer (IO) and the subject (S), each with a leading
space (" Mary", " John"), for both prompts of the pair.

The default names and templates are the ones the bundled model was trained on. The names
were taken from the IOI paper's list of names that are single GPT-2 tokens (with a leading
space), so the default prompts also suit GPT-2-family models.
"""

from __future__ import annotations

import random

__all__ = [
    "CORRUPTIONS",
    "FRAMES",
    "IOI_EXAMPLE",
    "NAMES",
    "OBJECTS",
    "PLACES",
    "TEMPLATES",
    "fill",
    "make_ioi",
]

NAMES: list[str] = [
    "Mary",
    "John",
    "Michael",
    "Jessica",
    "Daniel",
    "David",
    "James",
    "Robert",
    "Sarah",
    "William",
    "Brian",
    "Eric",
    "Adam",
    "Kevin",
    "Thomas",
    "Laura",
    "Amy",
    "Mark",
    "Emily",
    "Charles",
    "Rebecca",
    "Paul",
    "Scott",
    "Lisa",
    "Kelly",
    "Samuel",
    "Andrew",
    "Ryan",
    "Jason",
    "Rachel",
    "Anna",
    "Ben",
    "Chris",
    "Claire",
    "Dan",
    "Emma",
    "Frank",
    "George",
    "Grace",
    "Hannah",
    "Harry",
    "Helen",
    "Henry",
    "Jack",
    "Jane",
    "Jeff",
    "Jennifer",
    "Jim",
    "Joe",
    "Jonathan",
    "Joseph",
    "Julia",
    "Karen",
    "Kate",
    "Katie",
    "Linda",
    "Lucy",
    "Maria",
    "Martin",
    "Matt",
    "Max",
    "Megan",
    "Nancy",
    "Nick",
    "Nicole",
    "Olivia",
    "Oscar",
    "Patrick",
    "Peter",
    "Richard",
    "Rose",
    "Sam",
    "Sophie",
    "Steve",
    "Susan",
    "Tim",
    "Tom",
    "Tony",
    "Victor",
    "Alice",
    "Alex",
    "Andy",
    "Bill",
    "Bob",
    "Carl",
    "Chloe",
    "Diana",
    "Ella",
    "Eva",
    "Fred",
    "Ian",
    "Jake",
    "Leo",
    "Lily",
    "Luke",
    "Mia",
    "Noah",
    "Paula",
    "Ruth",
    "Simon",
    "Zoe",
    "Alan",
    "Carol",
    "Ethan",
    "Irene",
    "Oliver",
    "Ralph",
    "Sean",
    "Wendy",
    "Vincent",
]

#: Sentence frames; ``{place}`` and ``{obj}`` are filled from PLACES and OBJECTS. All
#: frames have the same number of words (14), so all templates do.
FRAMES: list[str] = [
    "When {A} and {B} went to the {place} , {C} gave a {obj} to",
    "After {A} and {B} arrived at the {place} , {C} handed a {obj} to",
]
PLACES: list[str] = [
    "store",
    "park",
    "school",
    "garden",
    "office",
    "station",
    "library",
    "market",
    "beach",
    "museum",
]
OBJECTS: list[str] = [
    "drink",
    "book",
    "ball",
    "gift",
    "letter",
    "key",
    "bag",
    "pen",
    "ticket",
    "phone",
]

TEMPLATES: list[str] = [
    frame.replace("{place}", place).replace("{obj}", obj)
    for frame in FRAMES
    for place in PLACES
    for obj in OBJECTS
]

CORRUPTIONS: tuple[str, ...] = ("abc", "swap")


def fill(template: str, a: str, b: str, c: str) -> str:
    """Fill a template's ``{A}``, ``{B}``, ``{C}`` placeholders with bare names."""
    return template.replace("{A}", a).replace("{B}", b).replace("{C}", c)


def make_ioi(
    n: int,
    seed: int = 0,
    corruption: str = "abc",
    names: list[str] | None = None,
    templates: list[str] | None = None,
) -> list[dict]:
    """Return ``n`` IOI prompt pairs ``{"clean", "corrupted", "answer", "wrong"}``.

    Deterministic for a given (n, seed, corruption, names, templates). ``answer`` is the
    indirect object and ``wrong`` the subject, each with a leading space.
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown IOI corruption {corruption!r}; choose one of {CORRUPTIONS}")
    if n < 0:
        raise ValueError("n must be >= 0")
    names = list(NAMES if names is None else names)
    templates = list(TEMPLATES if templates is None else templates)
    if len(set(names)) < 3:
        raise ValueError("IOI needs at least 3 distinct names")
    if not templates:
        raise ValueError("IOI needs at least one template")
    for t in templates:
        if not all(p in t for p in ("{A}", "{B}", "{C}")):
            raise ValueError(f"template {t!r} lacks one of the placeholders {{A}} {{B}} {{C}}")
    rng = random.Random(seed)
    out: list[dict] = []
    for _ in range(n):
        template = rng.choice(templates)
        io, s, x = rng.sample(names, 3)
        a, b = (io, s) if rng.random() < 0.5 else (s, io)
        clean = fill(template, a, b, s)
        corrupted = fill(template, a, b, x if corruption == "abc" else io)
        out.append({"clean": clean, "corrupted": corrupted, "answer": " " + io, "wrong": " " + s})
    return out


IOI_EXAMPLE: dict = {
    "clean": "When Mary and John went to the store , John gave a drink to",
    "corrupted": "When Mary and John went to the store , Robert gave a drink to",
    "answer": " Mary",
    "wrong": " John",
}
