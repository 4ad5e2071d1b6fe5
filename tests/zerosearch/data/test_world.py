"""The embedded world: determinism, size, corpus shape, schema, and that every answer is findable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from zerosearch.data.prompts import DEMO_NAMES
from zerosearch.data.schema import check_parquet
from zerosearch.data.world import build, generate

FILES = ("corpus.jsonl", "train.parquet", "test.parquet", "world.json", "meta.json", "README.md")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world_a")
    generate(out, seed=0, n_entities=1000)
    return out


@pytest.fixture(scope="module")
def splits(world_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    return check_parquet(world_dir / "train.parquet"), check_parquet(world_dir / "test.parquet")


@pytest.fixture(scope="module")
def world_json(world_dir) -> dict:
    return json.loads((world_dir / "world.json").read_text())


@pytest.fixture(scope="module")
def passages(world_dir, world_json) -> dict[str, str]:
    """Entity id -> lowercased text of all its passages."""
    corpus = [json.loads(line) for line in (world_dir / "corpus.jsonl").read_text().splitlines()]
    return {e["id"]: "\n".join(corpus[int(p)]["contents"] for p in e["passages"]).lower()
            for e in world_json["entities"]}


def test_same_seed_gives_byte_identical_files(world_dir, tmp_path):
    generate(tmp_path, seed=0, n_entities=1000)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (world_dir / name).read_bytes(), name


def test_other_seed_gives_other_world(world_dir):
    other = build(seed=1, n_entities=1000)
    mine = build(seed=0, n_entities=1000)
    assert [e.name for e in other.entities.values()] != [e.name for e in mine.entities.values()]


def test_world_size_kinds_and_unique_names(world_json):
    ents = world_json["entities"]
    assert len(ents) >= 1000
    kinds = {e["kind"] for e in ents}
    assert {"person", "city", "country", "company", "river", "work", "mountain"} <= kinds
    names = [e["name"].lower() for e in ents]
    assert len(set(names)) == len(names)
    aliases = [a.lower() for e in ents for a in e["aliases"]]
    assert len(set(aliases)) == len(aliases), "an alias (e.g. a surname) names two entities"
    demo = {n.lower() for n in DEMO_NAMES}
    assert not demo & set(aliases)


def test_corpus_is_wiki18_shaped_with_several_passages_per_entity(world_dir, world_json):
    lines = (world_dir / "corpus.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == [str(i) for i in range(len(rows))]
    by_id = {e["id"]: e for e in world_json["entities"]}
    for e in world_json["entities"]:
        assert len(e["passages"]) >= 2
        for pid in e["passages"]:
            title, text = rows[int(pid)]["contents"].split("\n", 1)
            assert title == f'"{e["name"]}"' and len(text) > 20
    assert "zaxley" not in "\n".join(lines).lower() and "jexmoor" not in "\n".join(lines).lower()
    assert by_id  # world.json is complete enough to index


def test_parquet_schema_counts_and_disjoint_splits(world_dir, splits):
    train, test = splits
    assert len(train) == 2000 and len(test) == 200
    meta = json.loads((world_dir / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["entities"] == 1000 and meta["test"]["embedded_2hop"] == 60
    assert set(train.data_source) == {"embedded_1hop", "embedded_2hop"}
    assert (train.ability == "fact-reasoning").all()
    assert not set(train.question) & set(test.question)
    facts = lambda df: {(x["entity"], x["relation"]) for x in df.extra_info}  # noqa: E731
    assert not facts(train) & facts(test), "a fact is asked in both train and test"
    index = [x["index"] for x in pd.concat([train, test]).extra_info]
    assert len(set(index)) == len(index)
    assert {x["split"] for x in test.extra_info} == {"test"}
    row = train.iloc[0]
    assert [m["role"] for m in row.prompt] == ["system", "user", "assistant", "user"]
    assert row.question in row.prompt[-1]["content"]
    assert list(row.reward_model["ground_truth"]["target"]) == list(row.golden_answers)


def test_every_answer_is_in_the_passages_of_its_entity_or_bridge(splits, passages, world_json):
    names = {e["id"]: e["name"].lower() for e in world_json["entities"]}
    shortcut = n_two_hop = 0
    for df in splits:
        for q, answers, src, info in zip(df.question, df.golden_answers, df.data_source, df.extra_info):
            assert 1 <= len(q.split()) and all(len(a.split()) <= 4 for a in answers), q
            where = info["bridge"] if src == "embedded_2hop" else info["entity"]
            assert any(a.lower() in passages[where] for a in answers), (q, list(answers), where)
            assert names[info["entity"]] in q.lower()
            if src == "embedded_2hop":
                # The hop is findable too: the bridge is named in the entity's passages.
                assert names[info["bridge"]] in passages[info["entity"]], q
                n_two_hop += 1
                shortcut += any(a.lower() in passages[info["entity"]] for a in answers)
    # Two-hop really needs the second hop: the answer is (almost) never in the first entity's passages.
    assert n_two_hop >= 600 and shortcut <= 0.02 * n_two_hop


def test_people_answers_carry_surname_alias(splits):
    train, _ = splits
    who = train[train.question.str.startswith("Who wrote")]
    assert len(who) > 0
    for answers in who.golden_answers:
        assert len(answers) == 2 and answers[0].endswith(" " + answers[1])


def test_too_small_world_fails_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--entities"):
        generate(tmp_path, seed=0, n_entities=100)


def test_cli(tmp_path):
    out = tmp_path / "w"
    cmd = [sys.executable, "-m", "zerosearch.data.world", "--out", str(out), "--seed", "3", "--entities", "1000",
           "--train", "100", "--test", "20", "--style", "zeroshot"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["seed"] == 3
    train = check_parquet(out / "train.parquet")
    assert len(train) == 100 and len(train.iloc[0].prompt) == 1
    bad = subprocess.run([sys.executable, "-m", "zerosearch.data.world", "--out", str(out), "--entities", "5"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--entities must be at least" in bad.stderr
