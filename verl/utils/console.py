"""The run log and a quiet console: what the terminal of a training run shows, and where everything else goes.

The terminal shows progress bars (`verl.utils.progress`), one metrics line per step (`verl.utils.tracking`),
warnings and errors that matter, and the failure paragraph (`verl.utils.failure`). Everything else goes to
`<trainer.default_local_dir>/logs/train.log`: INFO records of the driver and of every worker, the raw stdout/stderr
of the worker processes and of the processes they spawn (vLLM engine cores), Ray's driver-side messages, and the
known-harmless warnings (`HARMLESS`).

How:
- driver (`setup_run_logging`, called by the CLI `verl.trainer.main_ppo`): the root logger gets a file handler (INFO,
  DEBUG at log level DEBUG) and a console handler on stderr at `trainer.log_level`, which drops harmless records;
  Python warnings are captured into logging; library loggers that bring their own handlers (ray, transformers,
  vllm) hand their records to the root logger; file descriptor 1 (where Ray prints its raylet messages and
  libraries print) is pointed at the log file. Stderr stays the terminal.
- Ray (`init_ray`): worker output is streamed to the driver (`log_to_driver`), but routed by us: what a worker writes
  to its console stream goes to the terminal, everything else Ray streams (raylet / GCS errors) to the log file.
- workers (`redirect_worker_output`, called by the Ray worker host before the worker is built): file descriptors 1
  and 2 go to the log file, so whatever the worker and its child processes print lands there; a console handler
  writes records at the console level to the worker's original stderr, which Ray streams to the driver.
`trainer.verbose=true` turns all of this off: everything on the console as before (the file still gets the driver's
records). A record logged with `extra=SHOW` is shown on the console at any level; `extra=FILE_ONLY` never.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from verl.utils.redact import redact_argv

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_NAME = "train.log"
SHOW = {"console": True}  # logger.info(..., extra=SHOW): on the console whatever the level
FILE_ONLY = {"console": False}  # logger.error(..., extra=FILE_ONLY): the log file only
ENV_LOG, ENV_LEVEL = "VERL_RUN_LOG", "VERL_CONSOLE_LEVEL"  # what a worker needs to redirect its output
# loggers that install their own stream handler (and do not propagate): their records go through ours instead
LIBRARY_LOGGERS = ("ray", "transformers", "vllm", "wandb", "datasets", "urllib3", "filelock")
RAY_DAEMONS = ("raylet", "gcs_server", "autoscaler")
FILE_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"

# (logger name prefix, text in the message): known-harmless records, kept out of the console (the file has them)
HARMLESS: tuple[tuple[str, str], ...] = (
    ("py.warnings", "FutureWarning"),
    ("py.warnings", "DeprecationWarning"),
    ("py.warnings", "PendingDeprecationWarning"),
    ("vllm", "Triton"),  # "Triton is installed, but doesn't include CPU backend. Disabling Triton."
    ("vllm", "NUMA"),  # automatic NUMA binding skipped on a 1-node CPU box
    ("vllm", "numactl"),
    ("ray", "Token authentication is enabled"),
    ("ray", "Unhandled error"),  # errors of other ranks' calls after a failure: the failure report covers them
    ("transformers", "is deprecated"),
)


def check_level(level: str, key: str = "trainer.log_level") -> str:
    name = str(level).upper()
    if name not in LOG_LEVELS:
        raise ValueError(f"{key} must be one of {', '.join(LOG_LEVELS)} (case-insensitive), got {level!r}")
    return name


def is_harmless(record: logging.LogRecord) -> bool:
    try:
        msg = record.getMessage()
    except Exception:  # a bad format string: show it
        return False
    return any(record.name.startswith(prefix) and text in msg for prefix, text in HARMLESS)


class ConsoleFilter(logging.Filter):
    """Console gate: the record's `console` flag if set, else level >= `level` and (when quiet) not harmless."""

    def __init__(self, level: int, quiet: bool = True) -> None:
        super().__init__()
        self.level, self.quiet = level, quiet

    def filter(self, record: logging.LogRecord) -> bool:
        flag = getattr(record, "console", None)
        if flag is not None:
            return bool(flag)
        return record.levelno >= self.level and not (self.quiet and is_harmless(record))


_write_lock = threading.Lock()


def console_write(text: str, stream: TextIO | None = None) -> None:
    """Write a line to the console without breaking live progress bars (tqdm clears and redraws them)."""
    from tqdm import tqdm

    with _write_lock:
        tqdm.write(text.rstrip("\n"), file=stream or sys.stderr)


class ConsoleFormatter(logging.Formatter):
    """`LEVEL logger: message`; a record shown with `extra=SHOW` (a status line for the user) is its message only."""

    def __init__(self, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "console", None) and record.levelno < logging.WARNING:
            return record.getMessage()
        return super().format(record)


class ConsoleHandler(logging.Handler):
    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console_write(self.format(record), self.stream)
        except Exception:
            self.handleError(record)


@dataclass
class RunLog:
    path: Path
    level: str  # console level
    verbose: bool


_run: RunLog | None = None


def current() -> RunLog | None:
    """The run log set up in this process (None: no `setup_run_logging`, e.g. `run(cfg)` from a test)."""
    return _run


def adopt_library_loggers(names: tuple[str, ...] = LIBRARY_LOGGERS) -> None:
    """Drop the stream handlers libraries install on their top logger; their records reach the root's handlers."""
    for name in names:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


def _install(root_level: int, file_stream: logging.Handler, console: logging.Handler, console_level: int,
             quiet: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):  # Hydra's or basicConfig's console handler
        root.removeHandler(h)
    root.setLevel(root_level)
    file_stream.setLevel(root_level)
    console.addFilter(ConsoleFilter(console_level, quiet))
    root.addHandler(file_stream)
    root.addHandler(console)
    logging.captureWarnings(True)


def setup_run_logging(log_dir: str | Path, level: str = "WARNING", verbose: bool = False,
                      redirect_stdout: bool = True) -> RunLog:
    """Driver side: `<log_dir>/train.log` for everything, the console for what matters (see the module doc)."""
    global _run
    level = check_level(level)
    path = Path(log_dir) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    file_level = logging.DEBUG if level == "DEBUG" else logging.INFO
    fh = logging.FileHandler(path, mode="a", encoding="utf-8")
    fh.setFormatter(logging.Formatter(FILE_FORMAT))
    ch = ConsoleHandler(sys.stderr)
    ch.setFormatter(ConsoleFormatter())
    console_level = min(logging.INFO, getattr(logging, level)) if verbose else getattr(logging, level)
    _install(file_level, fh, ch, console_level, quiet=not verbose)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} run started (pid {os.getpid()}): "
                f"{' '.join(redact_argv(sys.argv))}\n")
    if not verbose:
        adopt_library_loggers()
        os.environ.setdefault("WANDB_SILENT", "true")  # wandb's banner and run summary (the run dir is logged)
        if redirect_stdout:
            sys.stdout.flush()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, 1)
            os.close(fd)
    _run = RunLog(path, level, verbose)
    return _run


def setup_command_logging(log_path: str | Path, level: str = "WARNING",
                          verbose: bool = False) -> tuple[TextIO, TextIO]:
    """A standalone command with engines in its own process tree (evaluation, inference): like `setup_run_logging`,
    with the log at `log_path`, and file descriptors 1 and 2 (so `sys.stdout` / `sys.stderr`, and the engine
    processes it spawns, which inherit them) pointed at it too. Returns (out, err): streams on the original stdout,
    where the command writes its results, and stderr, where console records go and progress bars belong.
    Verbose: nothing redirected, (sys.stdout, sys.stderr)."""
    global _run
    level = check_level(level, "LOG_LEVEL")
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} started (pid {os.getpid()}): {' '.join(sys.argv)}\n")
    fh = logging.FileHandler(path, mode="a", encoding="utf-8")
    fh.setFormatter(logging.Formatter(FILE_FORMAT))
    file_level = logging.DEBUG if level == "DEBUG" else logging.INFO
    if verbose:
        ch = ConsoleHandler(sys.stderr)
        ch.setFormatter(ConsoleFormatter())
        _install(file_level, fh, ch, min(logging.INFO, getattr(logging, level)), quiet=False)
        _run = RunLog(path, level, verbose)
        return sys.stdout, sys.stderr
    sys.stdout.flush()
    sys.stderr.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    ch = ConsoleHandler(err)
    ch.setFormatter(ConsoleFormatter())
    _install(file_level, fh, ch, getattr(logging, level), quiet=True)
    adopt_library_loggers()
    os.environ.setdefault("WANDB_SILENT", "true")
    _run = RunLog(path, level, verbose)
    return out, err


def worker_env() -> dict[str, str]:
    """Environment a worker needs to send its output to this run's log (empty: leave the worker's output alone)."""
    if _run is None or _run.verbose:
        return {}
    return {ENV_LOG: str(_run.path), ENV_LEVEL: _run.level}


def redirect_worker_output(label: str) -> bool:
    """Worker side, before the worker is built: fds 1 and 2 -> the run log (children inherit them); a console
    handler on the original stderr (streamed by Ray to the driver) at the console level. False: nothing to do."""
    path = os.environ.get(ENV_LOG)
    if not path:
        return False
    level = check_level(os.environ.get(ENV_LEVEL, "WARNING"), ENV_LEVEL)
    if level == "DEBUG":
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "DEBUG")
    sys.stdout.flush()
    sys.stderr.flush()
    console = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    file_level = logging.DEBUG if level == "DEBUG" else logging.INFO
    fh = logging.FileHandler(path, mode="a", encoding="utf-8")
    fh.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(process)d [{label}] %(name)s: %(message)s"))
    ch = logging.StreamHandler(console)
    ch.setFormatter(ConsoleFormatter(f"%(levelname)s [{label}] %(name)s: %(message)s"))
    _install(file_level, fh, ch, getattr(logging, level), quiet=True)
    adopt_library_loggers()
    return True


def library_output_wanted() -> bool:
    """A quiet worker whose console level is INFO or DEBUG: libraries' records should reach the console too."""
    return bool(os.environ.get(ENV_LOG)) and os.environ.get(ENV_LEVEL, "WARNING") in ("DEBUG", "INFO")


def _on_ray_stream(data: dict[str, Any]) -> None:
    """Ray's log stream on the driver: workers' console lines -> the terminal; anything else -> the log file."""
    lines = data.get("lines") or []
    source = str(data.get("pid"))
    if data.get("is_err") and source not in RAY_DAEMONS:
        for line in lines:
            console_write(line)
        return
    log = logging.getLogger("ray.stream")
    for line in lines:
        log.info("(%s) %s", source, line, extra=FILE_ONLY)


def init_ray(**kwargs: Any) -> None:
    """`ray.init(**kwargs)`; in a quiet run Ray's own logs go through our handlers and its stream is routed."""
    import ray

    quiet = _run is not None and not _run.verbose
    if quiet:
        adopt_library_loggers(("ray",))
        kwargs["log_to_driver"] = True  # the workers' console lines; _on_ray_stream routes the rest to the file
        kwargs.setdefault("logging_level", logging.INFO)
    ray.init(**kwargs)
    if not quiet:
        return
    adopt_library_loggers(("ray",))
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        dispatcher.remove_handler("ray_print_logs")  # Ray's printer, replaced under its name (ray.shutdown drops it)
        dispatcher.add_handler("ray_print_logs", _on_ray_stream)
    except (ImportError, AttributeError):  # another Ray: keep its own printing
        logging.getLogger(__name__).debug("Ray's log dispatcher not found; Ray prints worker output itself")
