"""Encyclopedia passages for the embedded world: every fact of an entity stated in prose.

Each entity gets an intro passage and one or two detail passages, each a corpus line in the Wiki-18
shape used by Search-R1 retrievers: `{"id": "17", "contents": "\"Title\"\ntext"}`. Sentence templates
vary (chosen by the seeded rng) so that a policy must read, not pattern-match one fixed phrasing.

Passages state the entity's own facts (and, for people, the companies they founded and works they wrote),
never facts two hops away: "In which country was X born?" needs X's passages (the city) and then the city's
passages (the country).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from zerosearch.data.world_build import Entity

TRAITS = ("careful method", "restless curiosity", "generous teaching", "plain style", "many journeys")
CITY_SIGHTS = ("covered market", "old stone bridge", "clock tower", "harbour walls", "botanical garden",
               "textile halls", "university library")
WORK_THEMES = ("two families divided by a flood", "a long winter journey", "the founding of a trading town",
               "a lighthouse keeper and his daughters", "an orchestra on tour", "a disputed inheritance")


def join(items: list[str]) -> str:
    """"A", "A and B", "A, B and C"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def with_article(noun: str) -> str:
    """The noun with its indefinite article ("an essayist", "a poet")."""
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


class PassageWriter:
    """Writes passages for all entities; `write()` returns corpus rows and fills `Entity.passages`."""

    def __init__(self, entities: dict[str, Entity], rng: random.Random) -> None:
        self.ents = entities
        self.rng = rng
        self.rows: list[dict[str, str]] = []

    def name(self, entity_id: str) -> str:
        return self.ents[entity_id].name

    def pick(self, *variants: str) -> str:
        return self.rng.choice(variants)

    def emit(self, ent: Entity, text: str) -> None:
        pid = str(len(self.rows))
        self.rows.append({"id": pid, "contents": f'"{ent.name}"\n{text}'})
        ent.passages.append(pid)

    def write(self) -> list[dict[str, str]]:
        writers: dict[str, Callable[[Entity], list[str]]] = {
            "country": self.country, "city": self.city, "person": self.person, "company": self.company,
            "river": self.river, "work": self.work, "mountain": self.mountain}
        for ent in self.ents.values():
            for text in writers[ent.kind](ent):
                self.emit(ent, text)
        return self.rows

    # ------------------------------------------------------------------ one method per kind
    def country(self, e: Entity) -> list[str]:
        cap, year = self.name(e.one("capital")), e.attrs["established"]
        intro = self.pick(f"{e.name} is a country whose capital is {cap}. It was established as a state in {year}.",
                          f"{e.name} is a sovereign country established in {year}. Its capital city is {cap}.")
        cities = [self.name(c) for c in e.rel["cities"][:4]]
        detail = (f"The cities of {e.name} include {join(cities)}. The government of {e.name} sits in {cap}, "
                  f"which has been the capital since the state was established in {year}.")
        return [intro, detail]

    def city(self, e: Entity) -> list[str]:
        country, year, pop = self.name(e.one("located_in")), e.attrs["founded"], e.attrs["population"]
        intro = self.pick(f"{e.name} is a city in {country}, founded in {year}.",
                          f"{e.name} is a city located in {country}. It was founded in {year}.",
                          f"Founded in {year}, {e.name} is a city in the country of {country}.")
        if self.ents[e.one("located_in")].one("capital") == e.id:
            intro += f" It is the capital of {country}."
        intro += f" The city is known for its {self.rng.choice(CITY_SIGHTS)}."
        detail = f"{e.name} has a population of about {pop}."
        rivers = [self.name(r) for r in e.rel.get("rivers", [])]
        if rivers:
            detail += f" The {' and the '.join(rivers)} {'flows' if len(rivers) == 1 else 'flow'} through the city."
        detail += f" Visitors to {e.name} often see its {self.rng.choice(CITY_SIGHTS)}."
        return [intro, detail]

    def person(self, e: Entity) -> list[str]:
        a = e.attrs
        full, surname, job, year = e.name, a["surname"], a["occupation"], a["birth_year"]
        he, his = a["pronoun"], "his" if a["pronoun"] == "he" else "her"
        city, worked = self.name(e.one("born_in")), self.name(e.one("worked_in"))
        intro = self.pick(f"{full} (born {year} in {city}) is {with_article(job)}.",
                          f"{full} is {with_article(job)} who was born in {city} in {year}.",
                          f"Born in {city} in {year}, {full} became a well-known {job}.")
        intro += f" {surname} is remembered for {his} {self.rng.choice(TRAITS)}."
        passages = [intro]
        career = f"As {with_article(job)}, {surname} spent many years in {worked}."
        if "founded" in e.rel:
            company = self.ents[e.one("founded")]
            career += f" In {company.attrs['founded']}, {surname} founded {company.name}."
        if "wrote" in e.rel:
            works = [f"{self.name(w)} ({self.ents[w].attrs['year']})" for w in e.rel["wrote"][:4]]
            career += f" {he.capitalize()} wrote {join(works)}."
        passages.append(career)
        return passages

    def company(self, e: Entity) -> list[str]:
        founder, year, industry = self.name(e.one("founded_by")), e.attrs["founded"], e.attrs["industry"]
        hq = self.name(e.one("headquartered_in"))
        intro = self.pick(f"{e.name} is {with_article(industry)} company founded by {founder} in {year}.",
                          f"{e.name} was established in {year} by {founder} as {with_article(industry)} business.")
        detail = self.pick(f"{e.name} is headquartered in {hq}.", f"{e.name} has its headquarters in {hq}.",
                           f"The headquarters of {e.name} are in the city of {hq}.")
        detail += f" The company employs about {e.attrs['employees']} people."
        return [intro, detail]

    def river(self, e: Entity) -> list[str]:
        country, length = self.name(e.one("located_in")), e.attrs["length_km"]
        cities = [self.name(c) for c in e.rel["flows_through"]]
        intro = self.pick(f"The {e.name} is a river in {country}, {length} km long.",
                          f"The {e.name} is a river of {country} with a length of {length} km.")
        detail = f"The {e.name} flows through {join(cities)}. Its banks are lined with willows and old mills."
        return [intro, detail]

    def work(self, e: Entity) -> list[str]:
        author, year, kind = self.name(e.one("written_by")), e.attrs["year"], e.attrs["work_type"]
        intro = self.pick(f"{e.name} is {with_article(kind)} written by {author} and published in {year}.",
                          f"{e.name} is {with_article(kind)} by {author}, first published in {year}.")
        detail = (f"{e.name} tells of {self.rng.choice(WORK_THEMES)}. Critics praised the {kind} for its "
                  f"{self.rng.choice(TRAITS)}.")
        return [intro, detail]

    def mountain(self, e: Entity) -> list[str]:
        country, height = self.name(e.one("located_in")), e.attrs["height_m"]
        intro = self.pick(f"{e.name} is a mountain in {country}. It rises to {height} metres.",
                          f"{e.name} is a {height} metres high mountain in {country}.")
        detail = f"The slopes of {e.name} are covered by pine forest, and its summit is snowy for much of the year."
        return [intro, detail]


def write_passages(entities: dict[str, Entity], rng: random.Random) -> list[dict[str, str]]:
    """Corpus rows for all entities (ids "0".."n-1", in entity order); fills each entity's `passages`."""
    return PassageWriter(entities, rng).write()
