"""Soak: thousands of training steps with an evaluation and two checkpoint writes every 10 steps.
Memory stays flat, no file handle leaks, and history.json is valid JSON whenever it is read.

Marked `soak`: excluded from the default run (pytest.ini); run it with
    .venv/bin/python -m pytest -m soak tests/test_soak.py
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import pytest

import tokenizer
from conftest import ROOT, corpus_slice

STEPS = int(os.environ.get("MINI_LLM_SOAK_STEPS", "3000"))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.soak
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc (Linux)")
def test_thousands_of_steps_keep_memory_and_file_handles_flat(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_slice("wiki_es.txt", n_chars=60_000), encoding="utf-8")
    tok = tmp_path / "tok.json"
    tokenizer.train_tokenizer([corpus], vocab_size=300, out_path=tok, quiet=True)
    out = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "main.py"), "train", "--tokenizer", str(tok), "--corpus", str(corpus),
            "--outdir", str(out), "--config", "custom", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--block-size", "16", "--batch-size", "2", "--eval-batches", "1", "--eval-every", "10",
            "--max-steps", str(STEPS), "--patience", "0", "--epochs", "1000", "--quiet"]
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    samples, reads = [], 0
    while proc.poll() is None:
        try:
            samples.append((_rss_kb(proc.pid), len(os.listdir(f"/proc/{proc.pid}/fd"))))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            break
        if (out / "history.json").exists():
            json.loads((out / "history.json").read_text(encoding="utf-8"))   # never half-written
            reads += 1
        time.sleep(0.2)
    err = proc.stderr.read()
    assert proc.wait() == 0, err
    history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    assert history[-1]["step"] == STEPS and len(history) >= STEPS // 10   # (and one per epoch end)
    assert reads >= 20 and len(samples) >= 40, (reads, len(samples))
    # warmed up after the first fifth; the last tenth sees the end of the run (the plot imports matplotlib)
    steady = samples[len(samples) // 5: len(samples) * 9 // 10]
    rss = [r for r, _ in steady]
    fds = [n for _, n in steady]
    print(f"soak: RSS {rss[0] / 1024:.1f} -> {rss[-1] / 1024:.1f} MB (max {max(rss) / 1024:.1f}), "
          f"descriptors {statistics.median(fds):.0f} (max {max(fds)}), {len(samples)} samples, {reads} reads; RSS by "
          f"fifths: {[round(rss[i * len(rss) // 5] / 1024, 1) for i in range(5)]}")
    assert max(rss) - rss[0] < 16_000, f"RSS grew by {(max(rss) - rss[0]) / 1024:.1f} MB"
    # a file being written holds a descriptor for a moment; a leak would hold them for good
    quarter = len(fds) // 4
    assert statistics.median(fds[-quarter:]) <= statistics.median(fds[:quarter]) and max(fds) < 32, fds
