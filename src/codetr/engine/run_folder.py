"""A training run's folder: one run owns it at a time, and a new run never destroys an old one.

* ``holds_run(path)``: the folder has a run in it (a checkpoint, a log or a saved config);
* ``next_free(path)``: ``path``, else ``path-2``, ``path-3``, ... (for default folders);
* ``RunLock``: an exclusive ``flock`` on ``<folder>/.lock`` held while a run trains there. The
  kernel drops it when the process dies, so a killed run never blocks its ``--resume``;
* ``remove_temp_files``: checkpoint temporaries (``.last.ckpt.*.tmp``) left by a kill mid-save;
* ``rewind_metrics``: ``metrics.jsonl`` cut back to what a checkpoint has seen, so a resumed run
  logs each step once.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from .checkpoint import atomic_open

log = logging.getLogger("codetr")

LAST, BEST = "last.ckpt", "best.ckpt"
RUN_FILES = (LAST, BEST, "metrics.jsonl", "config.json")
LOCK_NAME = ".lock"
METRICS_NAME = "metrics.jsonl"

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs there are not guarded against each other
    fcntl = None  # type: ignore[assignment]


class RunFolderError(RuntimeError):
    """A run folder that cannot be used: it holds another run, another process trains there,
    or it cannot be written."""


def holds_run(folder: str | Path) -> list[str]:
    """The run files (``RUN_FILES``) present in ``folder``; empty when it holds no run."""
    folder = Path(folder)
    return [name for name in RUN_FILES if (folder / name).exists()]


def numbered(folder: str | Path) -> Iterator[Path]:
    """``folder``, ``folder-2``, ``folder-3``, ... (the default run folders of one model)."""
    folder = Path(folder)
    yield folder
    for n in itertools.count(2):
        yield folder.with_name(f"{folder.name}-{n}")


def next_free(folder: str | Path, inside: str = "") -> Path:
    """The first of ``numbered(folder)`` whose ``inside`` sub-folder holds no run."""
    return next(f for f in numbered(folder) if not holds_run(f / inside))


def latest_run(folder: str | Path) -> Path:
    """Of ``numbered(folder)``, the one whose last.ckpt was written last (``folder`` when none has one)."""
    runs = list(itertools.takewhile(lambda f: f.exists(), numbered(folder)))
    saved = [f for f in runs if (f / LAST).is_file()]
    return max(saved, key=lambda f: (f / LAST).stat().st_mtime) if saved else Path(folder)


def refuse_existing_run(folder: str | Path) -> None:
    """Raise when ``folder`` already holds a run (training into it would overwrite it)."""
    found = holds_run(folder)
    if found:
        raise RunFolderError(f"run folder {str(folder)!r} already holds a run ({', '.join(found)}); continue "
                             f"it with --resume, or train into a new folder with --out")


class RunLock:
    """Exclusive ownership of a run folder for as long as the context is open.

    The lock is an ``flock`` on ``<folder>/.lock``, which holds the owner's pid for the error
    message. ``flock`` locks belong to the open file, so they vanish with the process that holds
    them: a run killed with SIGKILL leaves no stale lock."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RunFolderError(f"cannot write to run folder {str(self.folder)!r}: {e.strerror}") from e
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunFolderError(f"run folder {str(self.folder)!r} is in use by another run (pid {owner}); "
                                     "wait for it to end or stop it, or train into another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None


def check_free(folder: str | Path) -> None:
    """Raise ``RunFolderError`` when another process holds ``folder``'s lock (a quick early check;
    ``RunLock`` is what guards)."""
    if (Path(folder) / LOCK_NAME).exists():
        with RunLock(folder):
            pass


def checkpoint_to_resume(folder: str | Path, resume: str | Path | None, quiet: bool = False) -> Path | None:
    """The checkpoint a run into ``folder`` starts from. ``resume`` None: none, and ``folder`` must
    hold no run; ``"auto"``: ``folder``/last.ckpt, or none (a warning unless ``quiet``) when it
    does not exist; a path: that checkpoint, which must exist."""
    folder = Path(folder)
    if resume is None:
        refuse_existing_run(folder)
        return None
    if resume == "auto":
        if (folder / LAST).is_file():
            return folder / LAST
        if not quiet:
            log.warning("nothing to resume: %r does not exist; training from scratch", str(folder / LAST))
        return None
    if Path(resume).is_dir() or not Path(resume).is_file():
        kind = "is a folder, not a checkpoint" if Path(resume).is_dir() else "not found"
        raise FileNotFoundError(f"checkpoint to resume from {kind}: {str(resume)!r}")
    return Path(resume)


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporaries of interrupted atomic writes (``.<name>.<random>.tmp``) in
    ``folder``; only safe while holding its ``RunLock``. Returns what was removed."""
    removed = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.info("removed %d temporary file(s) of an interrupted save in %s", len(removed), folder)
    return removed


def rewind_metrics(folder: str | Path, step: int, eval_pending: bool = False) -> int:
    """Cut ``metrics.jsonl`` back to the records of the first ``step`` steps, the point a resumed
    run restarts from (with ``eval_pending``, that step's evaluation is redone, so its record goes
    too). Unreadable lines (a write cut by a kill) are dropped. Returns the records removed."""
    path = Path(folder) / METRICS_NAME
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _logged_before(line, step, eval_pending)]
    if len(kept) != len(lines):
        with atomic_open(path, "w") as f:
            f.write("".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def _logged_before(line: str, step: int, eval_pending: bool) -> bool:
    try:
        record = json.loads(line)
        logged = int(record["step"])
    except (ValueError, KeyError, TypeError):
        return False
    if record.get("type") == "eval" and eval_pending:
        return logged < step
    return logged <= step
