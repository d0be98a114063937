"""Run-level staging and completion records: a stage's output is complete or it is not there.

Every stage that writes workspace folders does so through :class:`StagedRun`:

1. leftovers of an earlier, interrupted run of the same stage (``WORK/.staging-<stage>-<pid>-*``
   whose process is gone) are removed; a live one means another run is going: refused;
2. the new output is written under ``WORK/.staging-<stage>-<pid>-<random>/<name>/``, beside the
   previous complete output, which stays in place and readable;
3. :meth:`StagedRun.commit` writes ``_RUN_COMPLETE.json`` (the run's inputs and counts) last and
   atomically into each new folder, then swaps each folder in by rename and removes the staging.

Downstream stages call :func:`require_complete` on the folders they read: it refuses (one line,
naming the folder and what to rerun) a folder whose producing stage was interrupted or is still
running, and a folder whose record lists files that are missing. A folder without a record (written
by hand, by a test or by another tool) is read as it is.

``ATC_IL_KILL_AT=<stage>:<n>`` (tests only) makes the process SIGKILL itself at the n-th
:func:`checkpoint` of that stage, so kill tests can stop a real run at chosen points.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from atc_il.errors import ConfigError, DataError

RUN_RECORD = "_RUN_COMPLETE.json"
KILL_ENV = "ATC_IL_KILL_AT"
_counts: dict[str, int] = {}


def checkpoint(stage: str) -> None:
    """A point where a kill test may stop the process (see the module doc); free otherwise."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != stage:
        return
    _counts[stage] = _counts.get(stage, 0) + 1
    if _counts[stage] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stagings(work: Path, stage: str) -> list[tuple[Path, int | None]]:
    """(folder, owner pid or None) of every staging folder of ``stage`` under ``work``."""
    out: list[tuple[Path, int | None]] = []
    if not work.is_dir():
        return out
    for p in work.glob(f".staging-{stage}-*"):
        pid = p.name[len(f".staging-{stage}-"):].split("-")[0]
        out.append((p, int(pid) if pid.isdigit() else None))
    return sorted(out)


def interrupted(work: Path, stage: str) -> str | None:
    """Why ``stage``'s output under ``work`` cannot be trusted now, or None."""
    for folder, pid in _stagings(Path(work), stage):
        if pid is not None and pid != os.getpid() and _alive(pid):
            return f"`atc-il {stage}` is running on {work} (process {pid}); wait for it to finish"
        return (f"the last `atc-il {stage}` on {work} was interrupted (leftover {folder.name}); "
                f"rerun `atc-il {stage}`")
    return None


def require_complete(folder: str | Path, stage: str, work: str | Path | None = None) -> None:
    """Refuse (DataError, one line) an output folder of ``stage`` that is incomplete (module doc)."""
    folder = Path(folder)
    why = interrupted(Path(work) if work is not None else folder.parent, stage)
    if why:
        raise DataError(f"{folder}: incomplete output: {why}")
    rec = folder / RUN_RECORD
    if not rec.exists():
        return
    try:
        files = json.loads(rec.read_text())["files"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise DataError(f"{rec}: unreadable completion record ({type(exc).__name__}); rerun `atc-il {stage}`") from None
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise DataError(f"{folder}: incomplete output: {len(missing)} file(s) of its completion record are missing "
                        f"(first: {missing[0]}); rerun `atc-il {stage}`")


def inside(path: str | Path, folders: Iterable[str | Path]) -> Path | None:
    """The first of ``folders`` that ``path`` is (or lies) inside, or None."""
    p = Path(path).resolve()
    for f in folders:
        f = Path(f).resolve()
        if p == f or f in p.parents:
            return f
    return None


class StagedRun:
    """Write a stage's output folders beside the old ones; swap them in only when complete."""

    def __init__(self, work: str | Path, stage: str, names: list[str]):
        self.work, self.stage, self.names = Path(work), stage, list(names)
        self.work.mkdir(parents=True, exist_ok=True)
        for folder, pid in _stagings(self.work, stage):
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise ConfigError(f"`atc-il {stage}` is already running on {self.work} (process {pid}); "
                                  f"wait for it or stop it first")
            shutil.rmtree(folder, ignore_errors=True)
        for old in self.work.glob(f".old-{stage}-*"):
            shutil.rmtree(old, ignore_errors=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".staging-{stage}-{os.getpid()}-", dir=self.work))
        for n in self.names:
            (self.dir / n).mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self, record: dict | None = None) -> None:
        from atc_il.io import write_json
        for n in self.names:
            staged = self.dir / n
            files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*")
                           if p.is_file() and not p.name.startswith(".tmp-"))
            write_json({"stage": self.stage, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "files": files, **(record or {})}, staged / RUN_RECORD)
        olds = []
        for n in self.names:
            dest = self.work / n
            if dest.exists():
                old = Path(tempfile.mkdtemp(prefix=f".old-{self.stage}-", dir=self.work))
                os.replace(dest, old / n)
                olds.append(old)
            os.replace(self.dir / n, dest)
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
