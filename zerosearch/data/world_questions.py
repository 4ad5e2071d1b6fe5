"""Single-hop and two-hop questions over the embedded world, with golden answers and aliases.

One question per fact: for each (entity, relation) the seeded rng picks one of several phrasings, so the
train/test split (made over facts) never puts two paraphrases of the same fact on both sides.

Answers are short: names (people also by surname, companies/rivers/mountains also by their stem) and
years or numbers as strings (lengths and heights also with their unit). A single-hop answer is stated in
the passages of the entity the question is about (`entity`); a two-hop answer is stated in the passages of
the intermediate entity (`bridge`), which the question names only through a relation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from zerosearch.data.world_build import Entity

ONE_HOP = "embedded_1hop"
TWO_HOP = "embedded_2hop"


@dataclass
class Question:
    question: str
    answers: list[str]
    data_source: str  # ONE_HOP or TWO_HOP
    entity: str  # id of the entity named in the question
    bridge: str  # id of the intermediate entity ("" for single-hop)
    relation: str  # e.g. "born_in" or "born_in>located_in"


class QuestionMaker:
    def __init__(self, entities: dict[str, Entity], rng: random.Random) -> None:
        self.ents = entities
        self.rng = rng
        self.out: list[Question] = []

    def ask(self, templates: tuple[str, ...], answers: list[str], entity: Entity, relation: str,
            bridge: Entity | None = None, **fmt: str) -> None:
        text = self.rng.choice(templates).format(x=entity.name, **fmt)
        self.out.append(Question(text, list(dict.fromkeys(answers)), TWO_HOP if bridge else ONE_HOP, entity.id,
                                 bridge.id if bridge else "", relation))

    def rel(self, ent: Entity, relation: str) -> Entity:
        return self.ents[ent.one(relation)]

    def make(self) -> list[Question]:
        for ent in self.ents.values():
            getattr(self, ent.kind)(ent)
        return self.out

    # ------------------------------------------------------------------ questions about each kind
    def person(self, p: Entity) -> None:
        city = self.rel(p, "born_in")
        self.ask(("Where was {x} born?", "In which city was {x} born?", "What is the birthplace of {x}?"),
                 city.aliases, p, "born_in")
        self.ask(("In what year was {x} born?", "When was {x} born?", "What is the birth year of {x}?"),
                 [str(p.attrs["birth_year"])], p, "birth_year")
        self.ask(("What is the profession of {x}?", "What did {x} work as?"), [p.attrs["occupation"]], p,
                 "occupation")
        country = self.rel(city, "located_in")
        self.ask(("In which country was {x} born?", "{x} was born in a city of which country?"), country.aliases, p,
                 "born_in>located_in", bridge=city)
        if "founded" in p.rel:
            company = self.rel(p, "founded")
            hq = self.rel(company, "headquartered_in")
            self.ask(("In which city is the company founded by {x} headquartered?",
                      "Where is the company that {x} founded headquartered?"),
                     hq.aliases, p, "founded>headquartered_in", bridge=company)

    def company(self, c: Entity) -> None:
        founder, hq = self.rel(c, "founded_by"), self.rel(c, "headquartered_in")
        self.ask(("Who founded {x}?", "Who was the founder of {x}?", "{x} was founded by whom?"), founder.aliases,
                 c, "founded_by")
        self.ask(("Where is {x} headquartered?", "In which city is {x} headquartered?",
                  "In which city are the headquarters of {x}?"), hq.aliases, c, "headquartered_in")
        self.ask(("In what year was {x} founded?", "When was {x} founded?"), [str(c.attrs["founded"])], c, "founded")
        self.ask(("In which country is {x} headquartered?", "{x} has its headquarters in which country?"),
                 self.rel(hq, "located_in").aliases, c, "headquartered_in>located_in", bridge=hq)
        self.ask(("In what year was the founder of {x} born?", "When was the founder of {x} born?"),
                 [str(founder.attrs["birth_year"])], c, "founded_by>birth_year", bridge=founder)

    def city(self, c: Entity) -> None:
        country = self.rel(c, "located_in")
        self.ask(("In which country is {x}?", "{x} is a city in which country?", "Which country is {x} located in?"),
                 country.aliases, c, "located_in")
        self.ask(("In what year was {x} founded?", "When was the city of {x} founded?"), [str(c.attrs["founded"])],
                 c, "founded")
        if country.one("capital") != c.id:
            self.ask(("What is the capital of the country where {x} is located?",
                      "What is the capital of the country that {x} is in?"),
                     self.rel(country, "capital").aliases, c, "located_in>capital", bridge=country)

    def country(self, k: Entity) -> None:
        self.ask(("What is the capital of {x}?", "Which city is the capital of {x}?"),
                 self.rel(k, "capital").aliases, k, "capital")
        self.ask(("In what year was {x} established?", "When was the state of {x} established?"),
                 [str(k.attrs["established"])], k, "established")

    def river(self, r: Entity) -> None:
        cities = [a for cid in r.rel["flows_through"] for a in self.ents[cid].aliases]
        self.ask(("Which city does the {x} flow through?", "Name a city that the {x} flows through."), cities, r,
                 "flows_through")
        n = r.attrs["length_km"]
        self.ask(("How long is the {x} in kilometres?", "What is the length of the {x} in km?"),
                 [str(n), f"{n} km"], r, "length_km")

    def work(self, w: Entity) -> None:
        author = self.rel(w, "written_by")
        self.ask(("Who wrote {x}?", "Who is the author of {x}?", "{x} was written by whom?"), author.aliases, w,
                 "written_by")
        self.ask(("In what year was {x} published?", "When was {x} first published?"), [str(w.attrs["year"])], w,
                 "year")
        self.ask(("In which city was the author of {x} born?", "Where was the writer of {x} born?"),
                 self.rel(author, "born_in").aliases, w, "written_by>born_in", bridge=author)
        self.ask(("In what year was the author of {x} born?", "When was the writer of {x} born?"),
                 [str(author.attrs["birth_year"])], w, "written_by>birth_year", bridge=author)

    def mountain(self, m: Entity) -> None:
        country = self.rel(m, "located_in")
        self.ask(("In which country is {x}?", "{x} is a mountain in which country?"), country.aliases, m,
                 "located_in")
        h = m.attrs["height_m"]
        self.ask(("How high is {x} in metres?", "What is the height of {x} in metres?"), [str(h), f"{h} metres"], m,
                 "height_m")
        self.ask(("What is the capital of the country where {x} stands?",
                  "What is the capital of the country in which {x} rises?"),
                 self.rel(country, "capital").aliases, m, "located_in>capital", bridge=country)


def make_questions(entities: dict[str, Entity], rng: random.Random) -> list[Question]:
    """All questions of the world (one per fact), in entity order; distinct question texts."""
    seen: set[str] = set()
    unique = []
    for q in QuestionMaker(entities, rng).make():
        if q.question not in seen:
            seen.add(q.question)
            unique.append(q)
    return unique
