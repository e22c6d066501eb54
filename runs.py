"""The run folder: the lock that keeps two runs apart, SIGINT/SIGTERM handling, every file a
training run writes (atomically: checkpoints, history.json, config.json, loss.png), and the
library versions recorded in config.json. Under DDP only rank 0 will own a writing RunFolder.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from common import EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_TERMINATED, UserError, atomic_path, log, write_json

# =========================================================================== run lock and signals

class RunLock:
    """Cron-safe lock on a run folder: `outdir/train.lock` holds the owner's PID, host and start
    time, and the owner holds an exclusive flock on it (released by the kernel if it dies).

    A second run finds the flock taken: UserError with exit code 3. A lock file left by a
    dead run (flock free, content present) is taken over with a notice.
    """

    NAME = "train.lock"

    def __init__(self, outdir: str | os.PathLike):
        self.path = Path(outdir) / self.NAME
        self.fd: Optional[int] = None

    @staticmethod
    def _describe(text: str) -> str:
        try:
            info = json.loads(text)
            return f"PID {info['pid']} on {info['host']}, started {info['started']}"
        except (ValueError, KeyError, TypeError):
            return "owner unknown"

    def _locked_error(self, text: str) -> UserError:
        return UserError(f"{self.path.parent} is in use by another training run ({self._describe(text)}); "
                         f"wait for it to finish or use another --outdir", code=EXIT_LOCKED)

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # no flock (Windows): PID check only
            fcntl = None
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                os.close(fd)
                raise self._locked_error(text)
            # a run that was finishing may have unlinked the file we opened: lock the current one
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise UserError(f"could not lock {self.path}; try again", code=EXIT_LOCKED)
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        if previous.strip():
            if fcntl is None and _pid_alive_here(previous):
                os.close(fd)
                raise self._locked_error(previous)
            log.warning(f"notice: taking over the stale lock {self.path} ({self._describe(previous)}: "
                        f"that run is gone)")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = None


def _pid_alive_here(text: str) -> bool:
    try:
        info = json.loads(text)
        if info["host"] != socket.gethostname():
            return True  # cannot tell: assume alive
        os.kill(int(info["pid"]), 0)
        return True
    except ProcessLookupError:
        return False
    except (ValueError, KeyError, TypeError):
        return False
    except PermissionError:
        return True


class Interrupted(KeyboardInterrupt):
    """A signal that stops the run at once (before the loop, or a second signal)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.code = EXIT_TERMINATED if reason == "terminated" else EXIT_INTERRUPTED


class StopSignals:
    """SIGINT/SIGTERM handling. While `armed` (the training loop runs), the first signal only
    sets `reason`: the loop finishes its optimizer step, saves ckpt_last.pt and returns. A signal
    while not armed, or a second one, raises Interrupted at once (files are written atomically,
    so nothing half-written replaces a good file)."""

    SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}

    def __init__(self):
        self.reason: Optional[str] = None
        self._notice: Optional[str] = None
        self.armed = False
        self._old: dict = {}
        self._pid = os.getpid()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:   # a forked DataLoader worker: the main process decides
            return
        reason = self.SIGNALS[signum]
        if not self.armed or self.reason is not None:
            raise Interrupted(reason)
        self.reason = reason
        self._notice = (f"{signal.Signals(signum).name} received: finishing the current step, then saving "
                        f"ckpt_last.pt (send it again to stop at once)")

    def requested(self) -> Optional[str]:
        """The reason of a signal received while armed, else None. Logs the signal's notice once,
        here at a step boundary and never in the handler: a handler that logs can interrupt the
        same stream mid-write, and Python then fails with a reentrant-call error."""
        if self._notice is not None:
            log.warning(self._notice)
            self._notice = None
        return self.reason

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def exit_code(stopped_reason: str) -> int:
    return {"interrupted": EXIT_INTERRUPTED, "terminated": EXIT_TERMINATED}.get(stopped_reason, 0)


# =========================================================================== run folder (all file writing)

class RunFolder:
    """Every file a training run writes, written atomically. Under DDP only rank 0 gets one
    with `enabled=True`; the others skip writing."""

    def __init__(self, outdir: str | os.PathLike, enabled: bool = True):
        self.dir = Path(outdir)
        self.enabled = enabled
        self.ckpt_last = self.dir / "ckpt_last.pt"
        self.ckpt_best = self.dir / "ckpt_best.pt"
        self.history = self.dir / "history.json"
        self.config = self.dir / "config.json"
        self.log = self.dir / "train.log"
        self.plot = self.dir / "loss.png"
        self.divergence = self.dir / "diverged.json"     # written when a run diverges, read by the next
        self.cache = self.dir / "cache"

    def remove_stale_temp_files(self) -> None:
        """Temp files of a run that was killed mid-write (call while holding the run lock)."""
        if not self.enabled:
            return
        for target in self.outputs():
            for tmp in self.dir.glob(f".{target.name}.*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    log.debug(f"removed {tmp}, left by an interrupted write")

    def save_checkpoint(self, path: Path, state: dict) -> None:
        if self.enabled:
            import torch
            with atomic_path(path) as tmp:
                torch.save(state, tmp)

    def write_history(self, history: list[dict]) -> None:
        if self.enabled:
            write_json(self.history, history)

    def write_config(self, config: dict) -> None:
        if self.enabled:
            write_json(self.config, config)

    def write_divergence(self, note: dict) -> None:
        if self.enabled:
            write_json(self.divergence, note)

    def read_divergence(self) -> Optional[dict]:
        """The note of a run on this folder that diverged, if the run since has saved nothing."""
        with contextlib.suppress(OSError, ValueError):
            note = json.loads(self.divergence.read_text(encoding="utf-8"))
            return note if isinstance(note, dict) else None
        return None

    def clear_divergence(self) -> None:
        if self.enabled:
            with contextlib.suppress(FileNotFoundError):
                self.divergence.unlink()

    def outputs(self) -> tuple[Path, ...]:
        """Every file a run writes here (train.lock and cache/ aside)."""
        return (self.ckpt_last, self.ckpt_best, self.history, self.config, self.log, self.plot, self.divergence)

    def check_writable(self) -> None:
        """A folder (or anything but a file) where a run writes a file: one clear line now, not a
        traceback at the first save."""
        for p in self.outputs():
            if p.exists() and not p.is_file():
                raise UserError(f"{p} is not a file (a folder?); a run writes a file there: move it away "
                                f"or use another --outdir")

    def check_new_run(self, force: bool) -> None:
        """Before a new run (no ckpt_last.pt to continue): refuse to overwrite the checkpoint or
        history of an earlier run, or a config.json that no run wrote, unless `force`."""
        theirs = [p for p in (self.ckpt_best, self.history) if p.exists()]
        if self.config.exists() and not _is_run_config(self.config):
            theirs.append(self.config)
        if theirs and not force:
            raise UserError(f"--outdir {self.dir} already holds {', '.join(p.name for p in theirs)} and no "
                            f"{self.ckpt_last.name} to continue from; use another --outdir, or add --force "
                            f"to overwrite them")

    def write_plot(self, history: list[dict]) -> None:
        if self.enabled and history:
            from report import write_loss_png   # matplotlib: only when a plot is drawn
            write_loss_png(history, self.plot)


def _is_run_config(path: Path) -> bool:
    """config.json as train writes it (a run that stopped before its first checkpoint)."""
    with contextlib.suppress(OSError, ValueError):
        config = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(config, dict) and {"model", "train", "tokenizer", "corpus"} <= set(config)
    return False


def versions() -> dict:
    import tokenizers
    import torch
    return {"python": platform.python_version(), "torch": torch.__version__,
            "tokenizers": tokenizers.__version__, "numpy": np.__version__, "platform": platform.platform()}
