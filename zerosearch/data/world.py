"""The embedded world: a deterministic fictional encyclopedia with questions, ready for training.

    python -m zerosearch.data.world --out data/embedded --seed 0 --entities 1200

writes into OUT:
    corpus.jsonl    passages, `{"id": "0", "contents": "\"Title\"\ntext"}` (Wiki-18 shape of Search-R1 retrievers)
    train.parquet   questions in the Search-R1 / ZeroSearch schema (`zerosearch.data.schema`)
    test.parquet    disjoint from train (split over facts, not only over question strings)
    world.json      the entities with attributes, relations, aliases and passage ids
    meta.json       seed, counts by kind / data source, file names;  README.md  a short description

Why: real QA sets are answerable from a pretrained model's memory, and a laptop has no search engine.
Over an invented world the policy must search, the local BM25 retriever (or a simulation LLM) can serve
the corpus, and gold answers are known to be findable: single-hop answers in the passages of the entity
the question names, two-hop answers in the passages of the bridge entity.

Same seed and arguments -> byte-identical files (one seeded rng, insertion-ordered dicts, fixed arrow schema).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerosearch.data.prompts import DEMO_NAMES, STYLES, build_prompt, prompt_tools
from zerosearch.data.schema import make_row, write_parquet
from zerosearch.data.world_build import Entity, build_world
from zerosearch.data.world_questions import ONE_HOP, TWO_HOP, Question, make_questions
from zerosearch.data.world_text import write_passages

logger = logging.getLogger(__name__)

DEFAULT_ENTITIES = 1200
DEFAULT_TRAIN = 2000
DEFAULT_TEST = 200
DEFAULT_TWO_HOP_FRACTION = 0.3


@dataclass
class World:
    """An in-memory world: entities by id, corpus rows, and every question (one per fact)."""

    seed: int
    entities: dict[str, Entity]
    corpus: list[dict[str, str]]
    questions: list[Question]

    def passages_of(self, entity_id: str) -> list[str]:
        """Texts (contents) of the entity's passages."""
        return [self.corpus[int(pid)]["contents"] for pid in self.entities[entity_id].passages]


def build(seed: int = 0, n_entities: int = DEFAULT_ENTITIES) -> World:
    """Generate the world in memory (no files)."""
    entities = build_world(seed, n_entities)
    demo = {n.lower() for n in DEMO_NAMES}
    clash = [e.name for e in entities.values() if {a.lower() for a in e.aliases} & demo]
    if clash:  # impossible by construction (disjoint alphabets); checked because the prompt relies on it
        raise RuntimeError(f"world entities {clash} collide with the prompt's demo entity")
    rng = random.Random(f"{seed}-text")
    corpus = write_passages(entities, rng)
    questions = make_questions(entities, random.Random(f"{seed}-questions"))
    return World(seed, entities, corpus, questions)


def split_questions(questions: list[Question], n_train: int, n_test: int, two_hop_fraction: float,
                    seed: int) -> tuple[list[Question], list[Question]]:
    """Disjoint (train, test) with `two_hop_fraction` two-hop questions in each; raises if the world is too small."""
    if not 0.0 <= two_hop_fraction <= 1.0:
        raise ValueError(f"--two-hop-fraction must be in [0, 1], got {two_hop_fraction}")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"--train and --test must be >= 0, got {n_train} and {n_test}")
    rng = random.Random(f"{seed}-split")
    pools = {src: [q for q in questions if q.data_source == src] for src in (ONE_HOP, TWO_HOP)}
    for pool in pools.values():
        rng.shuffle(pool)
    need = {}
    for split, n in (("test", n_test), ("train", n_train)):
        two = round(n * two_hop_fraction)
        need[split] = {TWO_HOP: two, ONE_HOP: n - two}
    for src, pool in pools.items():
        wanted = need["train"][src] + need["test"][src]
        if wanted > len(pool):
            raise ValueError(f"the world has {len(pool)} {src} questions but --train/--test/--two-hop-fraction "
                             f"ask for {wanted}; raise --entities or lower --train/--test")
    out: dict[str, list[Question]] = {}
    for split in ("test", "train"):
        chosen: list[Question] = []
        for src, pool in pools.items():
            chosen += pool[: need[split][src]]
            del pool[: need[split][src]]
        rng.shuffle(chosen)
        out[split] = chosen
    return out["train"], out["test"]


def to_rows(questions: list[Question], split: str, start_index: int, style: str) -> list[dict[str, Any]]:
    """Schema rows; extra_info carries split, index and the question's entity / bridge / relation (and the `tools`
    column for the tool_call style)."""
    tools = prompt_tools(style)
    rows = [make_row(f"embedded_{split}_{i}", q.question, q.answers, q.data_source, build_prompt(q.question, style),
                     split, start_index + i, entity=q.entity, bridge=q.bridge, relation=q.relation)
            for i, q in enumerate(questions)]
    if tools is not None:
        for row in rows:
            row["tools"] = tools
    return rows


def _dump_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def generate(out_dir: str | Path, seed: int = 0, n_entities: int = DEFAULT_ENTITIES, n_train: int = DEFAULT_TRAIN,
             n_test: int = DEFAULT_TEST, two_hop_fraction: float = DEFAULT_TWO_HOP_FRACTION,
             style: str = "oneshot") -> dict[str, Any]:
    """Write the world's files into `out_dir` and return the meta dict (also written as meta.json)."""
    if style not in STYLES:
        raise ValueError(f"--style must be one of {STYLES}, got {style!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = build(seed, n_entities)
    train, test = split_questions(world.questions, n_train, n_test, two_hop_fraction, seed)
    # Test indices continue after train: indices are unique over the whole world dataset.
    files = ["corpus.jsonl", "world.json", "meta.json", "README.md"]
    for split, questions, start in (("train", train, 0), ("test", test, len(train))):
        path = out / f"{split}.parquet"
        path.unlink(missing_ok=True)  # never leave a stale split from an earlier run next to the new world
        if questions:
            write_parquet(to_rows(questions, split, start, style), path)
            files.append(path.name)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for row in world.corpus:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    _dump_json({"seed": seed, "entities": [e.to_json() for e in world.entities.values()]}, out / "world.json")
    kinds: dict[str, int] = {}
    for e in world.entities.values():
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    meta = {
        "seed": seed, "entities": len(world.entities), "entities_by_kind": kinds, "passages": len(world.corpus),
        "questions_available": {src: sum(q.data_source == src for q in world.questions) for src in (ONE_HOP, TWO_HOP)},
        "train": {src: sum(q.data_source == src for q in train) for src in (ONE_HOP, TWO_HOP)},
        "test": {src: sum(q.data_source == src for q in test) for src in (ONE_HOP, TWO_HOP)},
        "two_hop_fraction": two_hop_fraction, "prompt_style": style,
        "files": files,
    }
    _dump_json(meta, out / "meta.json")
    (out / "README.md").write_text(
        "# Embedded world\n\nA fictional encyclopedia generated by `python -m zerosearch.data.world "
        f"--seed {seed} --entities {n_entities}`.\nEvery name is invented: questions can only be answered by "
        "searching `corpus.jsonl`.\n\n"
        f"- {len(world.entities)} entities ({', '.join(f'{n} {k}' for k, n in kinds.items())})\n"
        f"- {len(world.corpus)} passages\n- train: {len(train)} questions, test: {len(test)} questions "
        f"(two-hop fraction {two_hop_fraction}, prompt style {style})\n", encoding="utf-8")
    logger.info("embedded world written to %s: %d entities, %d passages, %d train / %d test questions",
                out, len(world.entities), len(world.corpus), len(train), len(test))
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--entities", type=int, default=DEFAULT_ENTITIES, help="number of entities (>= 1000 "
                        "gives the default question counts room)")
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="number of train questions")
    parser.add_argument("--test", type=int, default=DEFAULT_TEST, help="number of test questions")
    parser.add_argument("--two-hop-fraction", type=float, default=DEFAULT_TWO_HOP_FRACTION)
    parser.add_argument("--style", choices=STYLES, default="oneshot", help="prompt style (see data/prompts.py)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        meta = generate(args.out, args.seed, args.entities, args.train, args.test, args.two_hop_fraction, args.style)
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
