"""Shared fixtures: the project root, real corpora slices, a CLI runner, GPU skipping."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    """The suite computes in fp32 on every machine (as it did before --precision auto existed):
    the CPU is reported without native bf16 unless a test says otherwise, and the precision
    cache is a fresh folder, never the user's ~/.cache/mini-llm. Set here, before any test,
    so that the CLI subprocesses the tests start inherit both."""
    import tempfile
    os.environ["MINI_LLM_NATIVE_BF16"] = "0"
    os.environ["MINI_LLM_PRECISION_CACHE"] = tempfile.mkdtemp(prefix="mini-llm-precision-cache-")


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def corpus_slice(name: str, n_docs: int | None = None, n_chars: int | None = None) -> str:
    """The first documents (or characters) of ../shared/corpora/<name>; skip the test if absent."""
    path = CORPORA / name
    if not path.is_file():
        pytest.skip(f"real corpus {path} is absent (../shared/corpora not beside the project)")
    with open(path, encoding="utf-8") as f:
        text = f.read(n_chars if n_chars else 4_000_000)
    if n_docs is not None:
        docs = text.split("<|doc|>\n")[:n_docs]
        text = "<|doc|>\n".join(docs)
    return text


@pytest.fixture
def spanish_text():
    """~200 KB of Spanish encyclopedia summaries (real text, several documents)."""
    return corpus_slice("wiki_es.txt", n_chars=200_000)


def run_cli(*args, cwd=None, timeout=600, env=None, input=None):
    """Run `python main.py ...` as a user would; return CompletedProcess (text mode)."""
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONIOENCODING", "utf-8")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)],
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full_env, input=input)


@pytest.fixture
def cli():
    return run_cli


def assert_user_error(proc):
    """Exit code 2, exactly one `error:` line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr
