"""Fake secrets for the reliability suite: keys that must reach no file a run writes, the suite's SerpAPI stand-in on
127.0.0.1 (`serp_server`, tests/conftest.py: it records every request) expecting the configured one, and the byte scan
that looks for the keys.

The fault chain (`test_faults.py`) runs its sessions with these keys, so one run, killed and resumed six times, is
also the run whose every written file is scanned; `test_secrets.py` adds a run that fails at start-up."""

from __future__ import annotations

import base64
import os
import re
from datetime import datetime
from pathlib import Path

import pytest

RAY_ROOT = Path("/tmp/ray")


class FakeKeys:
    """The keys, where a run gets them (environment and one override), and the scan for them."""

    WANDB = "fakewandbsecret" + "4" * 25  # 40 characters, the shape of a real W&B key
    SER_ENV, SERPAPI_ENV, SERP_CFG = "fakeserenv31415926", "fakeserpapienv2718281", "fakeserpcfg1618033"
    ALL = (WANDB, SER_ENV, SERPAPI_ENV, SERP_CFG)
    # launcher arguments: Google (the fake) for validation, the configured key as an override
    ARGS = ["SEARCH_ENGINE", "google", f"+search.serpapi_key={SERP_CFG}"]

    def __init__(self, serp) -> None:
        self.serp = serp

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = {**(os.environ if base is None else base), "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline",
               "WANDB_API_KEY": self.WANDB, "SER_API_KEY": self.SER_ENV, "SERPAPI_API_KEY": self.SERPAPI_ENV,
               "SERPAPI_BASE_URL": self.serp.url}
        env.pop("WANDB_RUN_ID", None)
        return env

    @staticmethod
    def forms(key: str) -> list[bytes]:
        """The key as bytes, UTF-16, and the part of its base64 encoding that does not depend on the bytes around it
        (at each of the 3 alignments)."""
        raw = key.encode()
        forms = [raw, key.encode("utf-16-le")]
        for shift in range(3):
            enc = base64.b64encode(b"\0" * shift + raw)
            forms.append(enc[4 if shift else 0:-4])
        return forms

    def leaks(self, data: bytes) -> list[str]:
        return [key for key in self.ALL if any(form in data for form in self.forms(key))]

    def scan(self, paths: list[Path]) -> tuple[int, list[str]]:
        """(files read, '<key> in <path>' for each key found) over the files under `paths`."""
        n, found = 0, []
        for root in paths:
            for path in [root] if root.is_file() else root.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    try:
                        data = path.read_bytes()
                    except OSError:  # a socket or a file that went away
                        continue
                    n += 1
                    found += [f"{key} in {path}" for key in self.leaks(data)]
        return n, found

    @staticmethod
    def ray_sessions_since(t0: float) -> list[Path]:
        """Ray session dirs created after `t0` (their names carry the start time)."""
        out = []
        for d in RAY_ROOT.glob("session_2*"):
            m = re.match(r"session_(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)", d.name)
            if m and d.is_dir() and datetime.strptime(m.group(1), "%Y-%m-%d_%H-%M-%S").timestamp() >= t0 - 1:
                out.append(d)
        return out


@pytest.fixture
def fake_keys(serp_server):
    serp_server.key = FakeKeys.SERP_CFG  # the key a run must send to SerpAPI
    return FakeKeys(serp_server)
