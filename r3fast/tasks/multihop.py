"""Multi-hop retrieval: two facts scattered in a long haystack, the question needs both.

Hop 1 ties a person to a company, hop 2 the company to a city; the question names the person and
asks for the city. Distractor chains (other people, companies and cities, same sentence shapes)
are scattered too, so finding one fact is not enough. The haystack is fact-free filler paragraphs.

Example: ``{"context", "question", "answer": city, "candidates": [every city in the context],
"person", "company"}``. Verifier: the reply names the answer city and no other candidate city
(whole words, any case), so listing every city scores 0. ``solve`` reads the chain back out of the
context text alone (the generator's self-check: every example is solvable).
"""

from __future__ import annotations

import random
import re
from typing import Any

from r3fast.tasks.base import Example
from r3fast.tasks.long_context import CHARS_PER_TOKEN, LongContextTask, filler_paragraph, mentions

__all__ = ["MultiHopTask", "solve"]

_PEOPLE = (
    "Alice Bruno Carmen Dmitri Elena Farid Greta Hugo Ines Jonas Keiko Lars Mira Nadia Oskar Priya "
    "Quentin Rosa Samir Tilda Umar Vera Wendel Ximena Yusuf Zora Anton Beatrix Cyril Dalia Emil Fiona"
).split()
_CITIES = (
    "Lisbon Oslo Nairobi Quito Hanoi Tbilisi Porto Dakar Lima Riga Perth Osaka Bergen Cusco Tallinn "
    "Medan Leeds Fresno Graz Split Malmo Cork Davao Izmir Tromso Bilbao Tartu Cebu Aarhus Goa"
).split()
_STEM = "Vel Kor Mab Tren Zul Dor Pax Quel Sor Brim Fen Hal Nox Ordi Lum Ter Vix Cal".split()
_SUFFIX = "tek dyne corp works labs ware net gen".split()

_HOP1 = "{person} works for {company}."
_HOP2 = "The headquarters of {company} are in {city}."
_QUESTION = (
    "In which city are the headquarters of the company that {person} works for? "
    "Answer with the name of the city."
)
_HOP1_RE = re.compile(r"(\w+) works for (\w+)\.")
_HOP2_RE = re.compile(r"The headquarters of (\w+) are in (\w+)\.")


def solve(context: str, question: str) -> str | None:
    """The city reached from the question's person through the two facts in ``context``, or None."""
    m = re.search(r"company that (\w+) works for", question)
    if m is None:
        return None
    works = dict(_HOP1_RE.findall(context))
    cities = dict(_HOP2_RE.findall(context))
    return cities.get(works.get(m.group(1), ""))


class MultiHopTask(LongContextTask):
    """Options: ``context_tokens`` (approximate length), ``chains`` (1 answer + distractor chains)."""

    name = "multihop"

    def __init__(self, context_tokens: int = 2048, chains: int = 4) -> None:
        super().__init__()
        if context_tokens < 64:
            raise ValueError(f"context_tokens must be >= 64, got {context_tokens}")
        if not 1 <= chains <= min(len(_PEOPLE), len(_CITIES)):
            raise ValueError(f"chains must be in [1, {min(len(_PEOPLE), len(_CITIES))}], got {chains}")
        self.context_tokens = context_tokens
        self.chains = chains

    def _generate(self, rng: random.Random) -> Example:
        people = rng.sample(_PEOPLE, self.chains)
        cities = rng.sample(_CITIES, self.chains)
        companies: list[str] = []
        while len(companies) < self.chains:  # distinct names
            c = rng.choice(_STEM) + rng.choice(_SUFFIX)
            if c not in companies:
                companies.append(c)
        facts = [_HOP1.format(person=p, company=c) for p, c in zip(people, companies)]
        facts += [_HOP2.format(company=c, city=t) for c, t in zip(companies, cities)]
        budget = int(self.context_tokens * CHARS_PER_TOKEN) - sum(len(f) + 1 for f in facts)
        paragraphs: list[str] = []
        while sum(len(p) + 2 for p in paragraphs) < budget:
            paragraphs.append(filler_paragraph(rng))
        for fact in facts:  # each fact into a random paragraph, after a random sentence
            i = rng.randrange(len(paragraphs))
            sentences = paragraphs[i].split(". ")
            j = rng.randint(0, len(sentences))
            sentences.insert(j, fact.rstrip("."))
            paragraphs[i] = ". ".join(sentences).replace("..", ".")
            if not paragraphs[i].endswith("."):
                paragraphs[i] += "."
        return {
            "context": "\n\n".join(paragraphs),
            "question": _QUESTION.format(person=people[0]),
            "answer": cities[0],
            "candidates": cities,
            "person": people[0],
            "company": companies[0],
        }

    def _score(self, example: Example, completion: str) -> float:
        answer: Any = example["answer"]
        others = [c for c in example["candidates"] if c != answer]
        if not isinstance(completion, str) or not isinstance(answer, str):
            return 0.0
        return float(mentions(completion, answer) and not any(mentions(completion, c) for c in others))
