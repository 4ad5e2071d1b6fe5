"""Entities, attributes and relations of the embedded fictional world.

The world is a small encyclopedia of invented countries, cities, people, companies, rivers, works and
mountains, wired by relations (city located_in country, person born_in city, company founded_by person,
company headquartered_in city, river flows_through city, work written_by person, mountain located_in
country, country capital city). Every name is invented (`world_names`), so a policy cannot answer from
memory and has to search. Generation is driven by one seeded `random.Random`: same seed, same world.

Shares by kind are fixed fractions of the requested entity count; the remainder goes to people. Each
founder founds exactly one company (so "the company founded by X" is unambiguous) and each work has one
author (authors may write several works).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from zerosearch.data.world_names import NameRegistry

KIND_SHARES = {"country": 0.02, "city": 0.18, "company": 0.15, "river": 0.08, "work": 0.17, "mountain": 0.06}
KIND_MINIMUM = {"country": 2, "city": 4, "company": 2, "river": 2, "work": 2, "mountain": 2, "person": 6}
MIN_ENTITIES = sum(KIND_MINIMUM.values())
FOUNDER_JOBS = ("merchant", "engineer", "banker", "industrialist", "shipbuilder", "chemist")
WRITER_JOBS = ("novelist", "poet", "playwright", "historian", "essayist")
OTHER_JOBS = ("painter", "composer", "physician", "architect", "astronomer", "sculptor", "botanist", "judge")
COMPANY_KINDS = {"Mills": "textile", "Motors": "automobile", "Shipping": "shipping", "Press": "publishing",
                 "Bank": "banking", "Foods": "food", "Railways": "railway", "Chemicals": "chemical",
                 "Glassworks": "glassmaking", "Instruments": "instrument-making"}
WORK_TYPES = ("novel", "play", "poetry collection", "history", "travelogue")
TITLE_PATTERNS = ("{w}", "Songs of {w}", "The {w} Letters", "A Winter in {w}", "The House of {w}",
                  "Voices of {w}", "The {w} Tapestry", "Beyond {w}")


@dataclass
class Entity:
    """One world entity. `rel` maps a relation name to entity ids; `aliases` are accepted answer strings."""

    id: str
    kind: str
    name: str
    aliases: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    rel: dict[str, list[str]] = field(default_factory=dict)
    passages: list[str] = field(default_factory=list)

    def one(self, relation: str) -> str:
        return self.rel[relation][0]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "aliases": self.aliases,
                "attrs": self.attrs, "rel": self.rel, "passages": self.passages}


def kind_counts(n_entities: int) -> dict[str, int]:
    """How many entities of each kind a world of `n_entities` holds (people take the remainder)."""
    if n_entities < MIN_ENTITIES:
        raise ValueError(f"--entities must be at least {MIN_ENTITIES}, got {n_entities}")
    counts = {k: max(KIND_MINIMUM[k], int(share * n_entities)) for k, share in KIND_SHARES.items()}
    counts["person"] = n_entities - sum(counts.values())
    # Founders and authors are people; make sure there are enough of them.
    if counts["person"] < max(KIND_MINIMUM["person"], counts["company"] + 1):
        raise ValueError(f"--entities {n_entities} leaves too few people; use at least {MIN_ENTITIES * 2}")
    return counts


class WorldBuilder:
    """Builds the entity graph kind by kind (countries first, works last)."""

    def __init__(self, seed: int, n_entities: int) -> None:
        self.rng = random.Random(seed)
        self.names = NameRegistry(self.rng)
        self.counts = kind_counts(n_entities)
        self.entities: dict[str, Entity] = {}
        self.by_kind: dict[str, list[Entity]] = {k: [] for k in ("country", "city", "person", "company", "river",
                                                                  "work", "mountain")}

    def _add(self, kind: str, name: str, aliases: list[str], **attrs: Any) -> Entity:
        ent = Entity(id=f"{kind}_{len(self.by_kind[kind]):04d}", kind=kind, name=name, aliases=aliases, attrs=attrs)
        self.entities[ent.id] = ent
        self.by_kind[kind].append(ent)
        return ent

    def build(self) -> dict[str, Entity]:
        self._countries_and_cities()
        self._people()
        self._companies()
        self._works()
        self._rivers()
        self._mountains()
        return self.entities

    def _countries_and_cities(self) -> None:
        rng = self.rng
        for _ in range(self.counts["country"]):
            name = self.names.single(2, 3)
            self._add("country", name, [name], established=rng.randint(880, 1650))
        countries = self.by_kind["country"]
        for i in range(self.counts["city"]):
            country = countries[i % len(countries)]  # round-robin: every country has cities
            name = self.names.single(2, 3, place=True)
            city = self._add("city", name, [name], founded=rng.randint(max(700, country.attrs["established"] - 400),
                                                                       1890),
                             population=rng.randrange(8_000, 2_400_000, 100))
            city.rel["located_in"] = [country.id]
            country.rel.setdefault("cities", []).append(city.id)
            if "capital" not in country.rel:
                country.rel["capital"] = [city.id]

    def _people(self) -> None:
        rng = self.rng
        n_founders = self.counts["company"]
        n_writers = max(1, (self.counts["work"] * 2) // 3)
        cities = self.by_kind["city"]
        for i in range(self.counts["person"]):
            if i < n_founders:
                job = rng.choice(FOUNDER_JOBS)
            elif i < n_founders + n_writers:
                job = rng.choice(WRITER_JOBS)
            else:
                job = rng.choice(OTHER_JOBS)
            given, surname = self.names.person()
            full = f"{given} {surname}"
            person = self._add("person", full, [full, surname], given=given, surname=surname, occupation=job,
                               birth_year=rng.randint(1720, 1950), pronoun=rng.choice(("he", "she")))
            person.rel["born_in"] = [rng.choice(cities).id]
            # A second city where the person worked: a realistic distractor in the person's own passages.
            person.rel["worked_in"] = [rng.choice(cities).id]
        self.founders = self.by_kind["person"][:n_founders]
        self.writers = self.by_kind["person"][n_founders:n_founders + n_writers] or self.by_kind["person"][-1:]

    def _companies(self) -> None:
        rng = self.rng
        kinds = list(COMPANY_KINDS)
        for founder in self.founders:
            stem = self.names.single(2, 3)
            suffix = rng.choice(kinds)
            company = self._add("company", f"{stem} {suffix}", [f"{stem} {suffix}", stem],
                                founded=founder.attrs["birth_year"] + rng.randint(22, 55),
                                industry=COMPANY_KINDS[suffix], employees=rng.randrange(40, 60_000, 10))
            company.rel["founded_by"] = [founder.id]
            company.rel["headquartered_in"] = [rng.choice(self.by_kind["city"]).id]
            founder.rel["founded"] = [company.id]

    def _works(self) -> None:
        rng = self.rng
        for _ in range(self.counts["work"]):
            author = rng.choice(self.writers)
            title = rng.choice(TITLE_PATTERNS).format(w=self.names.single(2, 3))
            self.names.taken.add(title.lower())
            work = self._add("work", title, [title], year=author.attrs["birth_year"] + rng.randint(19, 68),
                             work_type=rng.choice(WORK_TYPES))
            work.rel["written_by"] = [author.id]
            author.rel.setdefault("wrote", []).append(work.id)

    def _rivers(self) -> None:
        rng = self.rng
        countries = self.by_kind["country"]
        for _ in range(self.counts["river"]):
            stem = self.names.single(2, 2)
            country = rng.choice(countries)
            cities = country.rel["cities"]
            through = rng.sample(cities, k=min(len(cities), rng.randint(1, 3)))
            river = self._add("river", f"{stem} River", [f"{stem} River", stem], length_km=rng.randint(40, 2900))
            river.rel["located_in"] = [country.id]
            river.rel["flows_through"] = through
            for city_id in through:
                self.entities[city_id].rel.setdefault("rivers", []).append(river.id)

    def _mountains(self) -> None:
        rng = self.rng
        for _ in range(self.counts["mountain"]):
            stem = self.names.single(2, 3)
            mountain = self._add("mountain", f"Mount {stem}", [f"Mount {stem}", stem],
                                 height_m=rng.randint(900, 7800))
            mountain.rel["located_in"] = [rng.choice(self.by_kind["country"]).id]


def build_world(seed: int, n_entities: int) -> dict[str, Entity]:
    """The entity graph of a world, keyed by entity id (insertion order is deterministic)."""
    return WorldBuilder(seed, n_entities).build()
