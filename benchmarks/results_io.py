"""Benchmark records without machine paths: what the benchmarks append to benchmarks/results/*.jsonl.

A record carries the settings and the resolved overrides of its run, and some carry process command lines; left
as they are, those hold the absolute paths of the machine that ran it (the checkout, the temporary directories,
the home directory). `portable` rewrites every string of a record: paths inside the repository become relative to
its root (the trainer and the launchers run there), the temporary directory of a run becomes `<tmp>` and the home
directory `~`. `append_record` is the one writer the benchmarks use.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _rewriter(root: str, home: str, tmp: str):
    root, home, tmp = (s.rstrip("/") for s in (root, home, tmp))
    # a run's own temporary directory (e.g. <tempdir>/bench_scaling-0ommrf2p) is noise: one placeholder for all
    tmp_dir = re.compile(re.escape(tmp) + r"/[^/\s\]\[\"',;:=]+")

    def rewrite(s: str) -> str:
        s = s.replace(root + "/", "")
        s = re.sub(re.escape(root) + r"(?![\w.-])", ".", s)
        s = tmp_dir.sub("<tmp>", s)
        return re.sub(re.escape(home) + r"(?=/|$|\s)", "~", s)

    return rewrite


def portable(obj: Any, root: str | Path = ROOT, home: str | Path | None = None, tmp: str | None = None) -> Any:
    """`obj` (JSON-like) with every machine path rewritten: repository paths relative, temp dirs `<tmp>`, home `~`."""
    rewrite = _rewriter(str(root), str(home or Path.home()), tmp or tempfile.gettempdir())

    def walk(o: Any) -> Any:
        if isinstance(o, str):
            return rewrite(o)
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v) for v in o]
        return o

    return walk(obj)


def append_record(path: str | Path, rec: dict) -> dict:
    """Append `portable(rec)` as one JSON line to `path`; returns what was written."""
    out = portable(rec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(out) + "\n")
    return out


def pyplot(what: str):
    """`matplotlib.pyplot` on the Agg backend, or None (with one line saying so) when the bench extra is not
    installed: a benchmark's results are written before its plot, and a missing plotting library must not end the
    run in a traceback."""
    try:
        import matplotlib
    except ImportError:
        print(f"{what}: plot skipped, matplotlib is not installed (.venv/bin/pip install -e '.[bench]'); "
              "the results are saved", flush=True)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
