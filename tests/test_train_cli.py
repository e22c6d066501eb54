"""`python main.py train` as a user runs it: outputs on a real Spanish slice, SIGINT / SIGTERM /
SIGKILL then resume (bit-identical to an uninterrupted run), the run lock, bad input."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tokenizer
import runs as R
import training as T
from conftest import ROOT, assert_user_error, corpus_and_tokenizer, run_cli

ENV = {"OMP_NUM_THREADS": "1"}    # tiny models: one thread is fastest and keeps a busy box calm
TINY = ["--config", "custom", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
        "--batch-size", "8", "--eval-batches", "2", "--lr", "3e-3", "--warmup-steps", "2"]
# the interrupted runs: dropout (RNG), accumulation, evaluations every 10 steps, a log line per step
RESUME = ["--max-steps", "40", "--eval-every", "10", "--dropout", "0.1", "--accumulation-steps", "2",
          "--batch-size", "4", "--log-every", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus_and_tokenizer(tmp_path_factory.mktemp("cli_data"))


def train_args(data, outdir, *extra, tok=None, corpus=None):
    return ["train", "--tokenizer", tok or data["tok"], "--corpus", corpus or data["corpus"],
            "--outdir", outdir, *TINY, *extra]


def train(data, outdir, *extra, **kw):
    return run_cli(*train_args(data, outdir, *extra, **kw), env=ENV)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# =========================================================================== a full run

@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    out.mkdir()
    (out / "train.lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(),
                                                "started": "2020-01-01T00:00:00"}))
    proc = train(data, out, "--max-steps", "12", "--eval-every", "6", "--json")
    return out, proc


def test_train_writes_every_output(full_run):
    out, proc = full_run
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)                      # exactly one JSON object on stdout
    assert set(summary) == {"best_val_loss", "best_val_perplexity", "best_step", "steps", "tokens_seen",
                            "elapsed_seconds", "params", "outdir", "stopped_reason"}
    assert summary["steps"] == 12 and summary["stopped_reason"] == "max_steps"
    assert summary["best_val_perplexity"] == pytest.approx(2.718281828 ** summary["best_val_loss"], rel=1e-6)
    assert "taking over the stale lock" in proc.stderr
    assert f"{summary['params']:,} parameters" in proc.stderr
    for name in ("ckpt_best.pt", "ckpt_last.pt", "history.json", "config.json", "train.log", "loss.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / "train.lock").exists()
    assert not list(out.glob(".*.tmp"))                    # no temp files left behind
    hist = json.loads((out / "history.json").read_text(encoding="utf-8"))
    assert [h["step"] for h in hist] == [6, 12]
    assert all(list(h) == list(T.HISTORY_KEYS) for h in hist)
    assert hist[-1]["val_loss"] < hist[0]["val_loss"] and hist[-1]["tokens_seen"] == summary["tokens_seen"]
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert cfg["model"]["n_layer"] == 2 and cfg["train"]["max_steps"] == 12
    assert cfg["tokenizer"]["vocab_size"] == 512 and len(cfg["tokenizer"]["hash"]) == 64
    assert len(cfg["corpus"]["hash"]) == 64 and cfg["versions"]["torch"] == torch.__version__
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "eval step 12" in log and "sample:" in log


def test_resume_with_another_tokenizer_is_refused(data, full_run, tmp_path):
    out, _ = full_run
    other = tmp_path / "other.json"
    text = tmp_path / "t.txt"
    text.write_text("".join(f"{x}\n<|doc|>\n" for x in data["docs"][60:]), encoding="utf-8")
    tokenizer.train_tokenizer([text], vocab_size=512, out_path=other, quiet=True)
    proc = train(data, out, "--max-steps", "20", tok=other)
    assert_user_error(proc)
    assert "tokenizer differ" in proc.stderr and "--force" in proc.stderr


# =========================================================================== interrupt and resume

@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = train(data, out, *RESUME)
    assert proc.returncode == 0, proc.stderr
    return weights(out / "ckpt_last.pt")


def start_and_wait(data, out, min_step: int) -> tuple[subprocess.Popen, list[str]]:
    """Start a training run; return once it logs a step line for step >= min_step (and the lines so far)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, train_args(data, out, *RESUME))],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    seen = []
    for line in proc.stderr:
        seen.append(line)
        m = re.match(r"step (\d+)/", line)
        if m and int(m.group(1)) >= min_step:
            return proc, seen
    proc.wait()
    raise AssertionError(f"never saw step {min_step}:\n{''.join(seen)}")


def interrupt(data, out, min_step: int, sig) -> tuple[int, str]:
    proc, seen = start_and_wait(data, out, min_step)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, "".join(seen) + err


def saved_step(out: Path) -> int:
    return torch.load(out / "ckpt_last.pt", map_location="cpu", weights_only=True)["state"]["step"]


def test_sigterm_sigint_sigkill_then_resume_is_bit_identical(data, reference, tmp_path):
    """One run stopped three times (SIGTERM, SIGINT, SIGKILL), each time continued by re-running the
    same command: the final weights equal the uninterrupted run's, bit for bit."""
    out = tmp_path / "run"
    code, err = interrupt(data, out, 5, signal.SIGTERM)     # finishes its step, saves, exits 143
    assert code == 143 and "Traceback" not in err and "saved" in err, err
    first = saved_step(out)
    assert 5 <= first < 40 and not (out / "train.lock").exists()

    code, err = interrupt(data, out, 15, signal.SIGINT)     # resumes there; Ctrl-C: exit 130
    assert code == 130 and "Traceback" not in err, err
    assert f"resumed from {out / 'ckpt_last.pt'} at step {first}" in err
    second = saved_step(out)
    assert max(first, 15) <= second < 40

    code, _ = interrupt(data, out, 22, signal.SIGKILL)      # no chance to save: the last
    assert code == -signal.SIGKILL                           # evaluation's checkpoint remains
    assert second <= saved_step(out) < 40 and (out / "train.lock").exists()

    again = train(data, out, *RESUME)
    assert again.returncode == 0, again.stderr
    assert "taking over the stale lock" in again.stderr
    assert_same_weights(weights(out / "ckpt_last.pt"), reference)
    hist = json.loads((out / "history.json").read_text(encoding="utf-8"))
    assert [h["step"] for h in hist] == [10, 20, 30, 40]
    assert not list(out.glob(".*.tmp")) and not (out / "train.lock").exists()


# =========================================================================== lock and bad input

def test_live_lock_gives_exit_3(data, tmp_path):
    out = tmp_path / "run"
    with R.RunLock(out):                                   # held by this (live) process
        proc = train(data, out, "--max-steps", "2")
    assert proc.returncode == 3, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "in use by another training run" in errors[0] and str(os.getpid()) in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (out / "ckpt_last.pt").exists()


def _bad_cases(data, tmp: Path):
    short = tmp / "short.txt"
    short.write_text("".join(f"{x}\n<|doc|>\n" for x in data["docs"][:3]), encoding="utf-8")
    return {
        "missing corpus": (train_args(data, tmp / "a", corpus=tmp / "nope.txt"), "corpus file not found"),
        "n_head does not divide n_embd": (train_args(data, tmp / "b", "--n-embd", "30", "--n-head", "4"),
                                          "n_embd=30 is not divisible by n_head=4"),
        "not a tokenizer": (train_args(data, tmp / "c", tok=data["corpus"]), "not a valid tokenizer"),
        "block larger than the corpus": (train_args(data, tmp / "d", "--block-size", "2048", corpus=short),
                                         "larger than the corpus can fill"),
    }


@pytest.mark.parametrize("case", ["missing corpus", "n_head does not divide n_embd", "not a tokenizer",
                                  "block larger than the corpus"])
def test_bad_input_gives_one_error_line(data, tmp_path, case):
    args, message = _bad_cases(data, tmp_path)[case]
    proc = run_cli(*args, env=ENV)
    assert_user_error(proc)
    assert message in proc.stderr, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_asked_but_absent(data, tmp_path):
    proc = run_cli(*train_args(data, tmp_path / "run", "--device", "cuda"), env=ENV)
    assert_user_error(proc)
    assert "CUDA is not available" in proc.stderr
    assert not (tmp_path / "run").exists()                 # refused before touching the outdir
