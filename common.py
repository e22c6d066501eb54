"""Shared plumbing for every stage: user errors, atomic file writes, JSON, progress.

All file writing in the project goes through `atomic_path` / `write_text` /
`write_json` here, so that an interrupted run never leaves a truncated output
in place of a good one (and so that "only rank 0 writes" has one place to live).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

log = logging.getLogger("mini_llm")

DEVICES = ("auto", "cpu", "cuda", "mps")   # --device choices (resolve_device)

# Exit codes, documented in the README and stable across versions.
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class UserError(Exception):
    """Bad user input or environment: main.py prints `error: <message>` and exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- files

@functools.lru_cache(maxsize=None)
def _umask() -> int:
    """The process umask (read once, when the first output is written; nothing runs at import)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary file lives in the same folder (same filesystem) so `os.replace`
    is atomic. On any exception, KeyboardInterrupt included, the temporary file is
    removed and an existing `path` is left untouched. A write that the system refuses (disk
    full, file too large, no permission, a folder where the file should be, a parent that is
    a file) becomes a UserError naming the file.
    """
    path = Path(path)
    tmp_path = None
    try:
        _check_output_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as e:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
        if isinstance(e, OSError) or is_write_failure(e):
            raise UserError(f"cannot write {path}: {write_failure_reason(e)}; the previous file (if any) is "
                            f"intact") from None
        raise


def _check_output_path(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"cannot write {path}: a folder is in the way; move it or choose another output path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot write {path}: {parent} is a file, not a folder; choose another "
                                f"output path")
            break


def is_write_failure(e: BaseException) -> bool:
    """An OSError, or how libraries report one: torch's C++ zip writer ("PytorchStreamWriter failed
    writing file", "[enforce fail at inline_container.cc] unexpected pos"), the Rust `tokenizers` and `safetensors` ("... (os error 28)")."""
    if isinstance(e, OSError):
        return True
    text = str(e).lower()
    return isinstance(e, Exception) and ("failed writing" in text or "file write failed" in text
                                         or "inline_container" in text      # torch's zip writer
                                         or re.search(r"\(os error \d+\)", text) is not None)


def write_failure_reason(e: BaseException) -> str:
    if isinstance(e, OSError):
        import errno
        advice = {errno.ENOSPC: "the disk is full; free some space and run again",
                  errno.EDQUOT: "the disk quota is exceeded; free some space and run again",
                  errno.EFBIG: "the file is larger than this system allows",
                  errno.EACCES: "permission denied; choose a folder you can write to",
                  errno.EROFS: "the file system is read-only; choose another folder"}.get(e.errno)
        return advice or (e.strerror or str(e))
    code = re.search(r"\(os error (\d+)\)", str(e))
    if code:
        return write_failure_reason(OSError(int(code.group(1)), os.strerror(int(code.group(1)))))
    return "the write failed (disk full?); free some space and run again"


def write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8; characters that cannot be UTF-8 (a path's non-UTF-8 bytes) are written escaped."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e}); pass the right file")


def cache_dir() -> Path:
    """The user's cache folder for mini-llm ($XDG_CACHE_HOME/mini-llm, else ~/.cache/mini-llm)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "mini-llm"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Check that `path` is a readable, non-empty regular file; return it as a Path."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not path.is_file():
        raise UserError(f"{what} is not a regular file: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{what} is empty: {path}")
    return path


def refuse_same_file(inputs: Iterable[str | os.PathLike], output: str | os.PathLike) -> None:
    """Refuse to overwrite an input file with its own output."""
    out = Path(output)
    if not out.exists():
        return
    for p in inputs:
        p = Path(p)
        if p.exists() and os.path.samefile(p, out):
            raise UserError(f"output {out} is also an input; choose another --output path")


def available_memory(device) -> Optional[int]:
    """Bytes free for new tensors on `device` (a torch.device): MemAvailable on a Linux CPU, the
    free memory of a CUDA GPU; None where it cannot be known."""
    if device.type == "cuda":
        import torch
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        with contextlib.suppress(OSError, ValueError, StopIteration):
            with open("/proc/meminfo") as f:
                return 1024 * int(next(line.split()[1] for line in f if line.startswith("MemAvailable:")))
    return None


# --------------------------------------------------------------------------- metrics

def perplexity(loss) -> Optional[float]:
    """exp(mean token loss); None where it is undefined (None, NaN, inf) or overflows a float."""
    if loss is None or not math.isfinite(loss):
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return None


# --------------------------------------------------------------------------- devices

def resolve_device(name: str):
    """--device auto|cpu|cuda|mps -> torch.device; UserError when the asked device is absent."""
    import torch
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise UserError(f"--device cuda was asked but CUDA is not available ({why}); "
                        f"use --device cpu or --device auto")
    if name == "mps" and not mps_ok:
        raise UserError("--device mps was asked but Apple MPS is not available; use --device cpu or --device auto")
    return torch.device(name)


# --------------------------------------------------------------------------- logging and progress

def setup_logging(quiet: bool = False, logfile: Optional[str | os.PathLike] = None) -> None:
    """Logs go to stderr (never stdout, which --json keeps for its one object)."""
    log.handlers.clear()
    log.setLevel(logging.DEBUG)
    log.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if logfile is not None:
        add_log_file(logfile)


def add_log_file(path: str | os.PathLike) -> None:
    """Append every log record, with a timestamp, to `path` (e.g. runs/x/train.log)."""
    handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)


# =========================================================================== the C allocator

ALLOCATOR_ENV = "MINI_LLM_ALLOCATOR"   # "default": leave the C allocator as it is
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20              # the largest glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30


def tune_allocator() -> str:
    """Have glibc's malloc keep the memory of freed tensors for the next ones instead of giving
    it back to the system at once. By default every block over 128 KB-32 MB is a fresh mmap and a
    munmap when freed, so each activation of a forward pass is first touched page by page (a
    page fault per 4 KB): on 2 CPU cores that was up to a fifth of an evaluation's time (a
    training step's gain was within the noise). Blocks up to MMAP_THRESHOLD now come from the heap, and
    the heap's top is kept up to TRIM_THRESHOLD (the memory stays with the process, up to its
    peak, as with any caching allocator).

    Returns what it did, for the log: "" where it did nothing: not glibc, MINI_LLM_ALLOCATOR=default,
    or the user chose already (MALLOC_*_ environment variables, GLIBC_TUNABLES, or another
    allocator in LD_PRELOAD)."""
    import ctypes
    import platform
    if os.environ.get(ALLOCATOR_ENV, "").strip().lower() == "default":
        return ""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return ""
    chosen = any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"))
    if chosen or "malloc" in os.environ.get("GLIBC_TUNABLES", "") or \
            any(a in os.environ.get("LD_PRELOAD", "") for a in ("jemalloc", "tcmalloc", "mimalloc")):
        return ""
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and \
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return ""
    return f"glibc malloc keeps freed blocks up to {MMAP_THRESHOLD >> 20} MB ({ALLOCATOR_ENV}=default: off)" \
        if done else ""


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """A progress bar on a terminal, plain periodic log lines otherwise (cron, pipes).

    Usage:
        with Progress("encoding", total=n_bytes, unit="B") as p:
            p.update(k, loss=1.23)
    `quiet` hides everything. Extra keyword fields passed to update() are shown
    after the bar (terminal) or in the log line (non-terminal).
    """

    def __init__(self, desc: str, total: Optional[float] = None, unit: str = "it",
                 quiet: bool = False, log_every_s: float = 10.0):
        self.desc, self.total, self.unit, self.quiet = desc, total, unit, quiet
        self.log_every_s = log_every_s
        self.n = 0.0
        self.fields: dict = {}
        self._bar = None
        self._start = time.monotonic()
        self._last_log = self._start

    def __enter__(self) -> "Progress":
        if not self.quiet and stderr_is_terminal():
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit,
                             unit_scale=self.unit == "B", dynamic_ncols=True, file=sys.stderr,
                             leave=False)
        return self

    def update(self, n: float = 1, **fields) -> None:
        self.n += n
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.update(n)
            if fields:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.fields.items()}, refresh=False)
        elif not self.quiet:
            now = time.monotonic()
            if now - self._last_log >= self.log_every_s:
                self._last_log = now
                log.info(self._line(now))

    def set_total(self, total: float) -> None:
        """A new total (a schedule fixed after the bar started)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def _line(self, now: float) -> str:
        elapsed = now - self._start
        done = f"{_fmt(self.n)}"
        if self.total:
            pct = 100.0 * self.n / self.total
            eta = elapsed * (self.total - self.n) / self.n if self.n else float("nan")
            done = f"{_fmt(self.n)}/{_fmt(self.total)} {self.unit} ({pct:.1f}%, eta {format_seconds(eta)})"
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in self.fields.items())
        return f"{self.desc}: {done} elapsed {format_seconds(elapsed)} {extra}".rstrip()

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_seconds(s: float) -> str:
    if s != s or s == float("inf"):  # NaN or inf
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def parse_duration(text: str) -> float:
    """'90m' -> 5400.0, '2h' -> 7200.0, '45s' or '45' -> 45.0, '1h30m' -> 5400.0."""
    import re
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise ValueError(f"cannot parse duration {text!r}; use e.g. 2h, 90m, 1h30m, 45s")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(a) * scale[b] for a, b in parts)
