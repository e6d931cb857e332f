"""One training process per run folder, and run-folder checks made before anything is written.

:class:`RunLock` puts ``.vox2vox.lock`` (JSON: pid, host, start time) in the run folder, created
atomically (``os.link`` of a finished temporary file, which fails if the lock exists). A second
``train`` on the same folder stops with one line naming the holder. A lock whose process is gone
(same host, pid not running) or that cannot be read is stale: it is replaced, with a note. A lock
held on another host cannot be checked from here: the message says to delete it if that run is
over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from vox2vox.atomic import ensure_folder
from vox2vox.errors import Vox2VoxError
from vox2vox.rundir import LOCK_NAME, RunDir


def check_run_folder(run_dir: str | Path, *, resume: bool) -> None:
    """Before anything is read or written: ``resume`` needs the run's last checkpoint; a new run
    must not overwrite one."""
    run_dir = Path(run_dir)
    last = RunDir(run_dir).last
    if resume and not last.is_file():
        raise Vox2VoxError(f"{run_dir}: nothing to resume (no checkpoints/last.safetensors); "
                           "drop --resume to start a new run there")
    if not resume and last.exists():
        raise Vox2VoxError(f"{run_dir}: already holds a run; pass --resume to continue it or choose a new --out")


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('started', '?')}"


class RunLock:
    """The lock of one run folder; :meth:`acquire` then :meth:`release` (or use ``with``)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = RunDir(self.run_dir).lock
        self.me = {"pid": os.getpid(), "host": socket.gethostname(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> RunLock:
        ensure_folder(self.run_dir)
        for _ in range(3):
            if self._try_create():
                self.held = True
                return self
            holder = self._read_holder()
            if holder is not None and not self._is_stale(holder):
                raise Vox2VoxError(
                    f"{self.run_dir}: in use by another training process ({_describe(holder)}; lock file "
                    f"{self.path}); wait for it to finish, or delete the lock file if that process is gone"
                )
            self._remove_stale(holder)
        raise Vox2VoxError(f"{self.path}: cannot take the run lock (it keeps changing); is another run starting?")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._read_holder() == self.me:
            try:
                self.path.unlink()
            except OSError:
                pass

    # ---- internals --------------------------------------------------------------------------------
    def _try_create(self) -> bool:
        tmp = self.run_dir / f"{LOCK_NAME}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(self.me) + "\n")
                handle.flush()
            try:
                os.link(tmp, self.path)  # atomic: fails when the lock exists
            except FileExistsError:
                return False
            return True
        except OSError as err:
            if isinstance(err, FileExistsError):
                return False
            raise Vox2VoxError(f"{self.path}: cannot write the run lock ({err.strerror}); "
                               "choose a writable --out") from err
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass

    def _read_holder(self) -> dict[str, Any] | None:
        """The lock's content; None when missing or unreadable (a lock cut short is stale)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        pid = holder.get("pid")
        if holder.get("host") != self.me["host"] or isinstance(pid, bool) or not isinstance(pid, int):
            return False
        if pid == os.getpid():
            return False  # this very process holds it (a second fit in one process)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OverflowError, ValueError):
            return isinstance(pid, int) and pid <= 0
        return False

    def _remove_stale(self, holder: dict[str, Any] | None) -> None:
        # Move it aside under a unique name first, so two processes recovering at once cannot
        # delete the lock the other one has just taken.
        aside = self.run_dir / f"{LOCK_NAME}.stale.{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        except OSError as err:
            raise Vox2VoxError(f"{self.path}: cannot replace a stale run lock ({err.strerror})") from err
        if holder is not None:
            try:
                moved = json.loads(aside.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError):
                moved = None
            if moved != holder:  # another process took the lock meanwhile: give it back
                try:
                    os.link(aside, self.path)
                except OSError:
                    pass
                aside.unlink(missing_ok=True)
                return
        try:
            aside.unlink()
        except OSError:
            pass
        what = _describe(holder) if holder is not None else "unreadable"
        print(f"note: {self.run_dir}: replaced a stale run lock ({what}; that process is gone)", file=sys.stderr)
