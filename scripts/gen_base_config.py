"""Write configs/ppo_trainer.yaml from the dataclass defaults of verl/trainer/config.py.

Run after adding a config field: `python scripts/gen_base_config.py`; tests/verl/trainer/test_config.py
fails when the YAML and the dataclasses disagree.
"""

import dataclasses
from pathlib import Path

import yaml

from verl.trainer.config import PPOConfig

HEADER = (
    "# Base trainer config (verl key names). Every key here mirrors a field of verl/trainer/config.py;\n"
    "# tests/verl/trainer/test_config.py keeps the two in sync (regenerate: python scripts/gen_base_config.py).\n"
    "# Override with key=value on the command line.\n"
)


def main() -> None:
    d = dataclasses.asdict(PPOConfig())
    # Hydra must not configure logging nor write files (main_ppo.log, .hydra/) into the working directory.
    d = {"defaults": [{"override hydra/job_logging": "none"}, {"override hydra/hydra_logging": "none"}, "_self_"],
         **d}
    d["hydra"] = {"run": {"dir": "."}, "output_subdir": None, "job": {"chdir": False}}
    out = Path(__file__).resolve().parents[1] / "configs" / "ppo_trainer.yaml"
    out.write_text(HEADER + yaml.safe_dump(d, sort_keys=False))
    print(out)


if __name__ == "__main__":
    main()
