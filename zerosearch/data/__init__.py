"""Datasets of the project: the embedded fictional world, real QA sets (FlashRAG), prompts, schema checks.

- `world`: deterministic fictional encyclopedia (corpus + questions) for training without a search engine.
- `prepare`: NQ / TriviaQA / PopQA / HotpotQA / 2Wiki / Musique / Bamboogle into the parquet schema.
- `prompts`: the search-agent instruction and the one-shot demonstration for small models.
- `schema`: `check_parquet` / `check_dataframe` run before the trainer reads any file.
"""

from zerosearch.data.prompts import INSTRUCTION, build_prompt
from zerosearch.data.schema import SchemaError, check_dataframe, check_parquet

__all__ = ["INSTRUCTION", "SchemaError", "build_prompt", "check_dataframe", "check_parquet"]
