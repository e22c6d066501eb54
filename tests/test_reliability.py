"""Nothing lost under any stop or fault: --max-time resumes exactly, non-finite steps and exploded
weights never reach a checkpoint, a damaged token cache is rebuilt, SIGKILL at three precise
moments (mid-step, mid-evaluation, mid-checkpoint-write) resumes at the last saved step, a full
disk leaves every previous output intact, and files the user owns are never overwritten."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import dataset
import tokenizer
import training as T
from common import UserError, file_sha256
from conftest import ROOT, assert_user_error, corpus_and_tokenizer, run_cli

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, eval_batches=2, lr=3e-3,
            warmup_steps=2, dropout=0.1, accumulation_steps=2, log_every=1,
            family="neox", optimizer="adamw")   # AdamW: a huge gradient blows the weights up (Muon normalises it)
TINY_ARGS = ["--config", "custom", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
             "--batch-size", "4", "--eval-batches", "2", "--lr", "3e-3", "--warmup-steps", "2", "--dropout", "0.1",
             "--accumulation-steps", "2", "--log-every", "1", "--family", "neox", "--optimizer", "adamw"]
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus_and_tokenizer(tmp_path_factory.mktemp("reliability"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest.py


def run(data, outdir, on_step=None, **overrides):
    return T.train(data["tok"], data["corpus"], outdir, "custom", {**TINY, **overrides}, quiet=True,
                   on_step=on_step)


def weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def decisions(path) -> list:
    """What an evaluation decides from, per evaluation: step, validation loss, sample."""
    return [(h["step"], h["val_loss"], h["sample"]) for h in json.loads(Path(path).read_text(encoding="utf-8"))]


def hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# =========================================================================== --max-time

def test_resume_after_max_time_is_exact_with_patience_and_accumulation(data, tmp_path):
    """The nightly cron recipe: a run cut by --max-time again and again ends with the weights,
    best checkpoint, history and stopping step of the uninterrupted run (patience on: it stops
    early, so an extra evaluation counted toward patience would change where)."""
    common = dict(max_steps=120, eval_every=3, patience=1, lr=3e-2)
    ref = run(data, tmp_path / "ref", **common)
    assert ref["stopped_reason"] == "early_stopping" and ref["steps"] < 120, ref
    out, runs = tmp_path / "cut", 0
    while True:
        s = run(data, out, max_time=0.02, **common)
        runs += 1
        if s["stopped_reason"] != "max_time":
            break
        assert runs < 400
    assert runs >= 3 and s["stopped_reason"] == ref["stopped_reason"] and s["steps"] == ref["steps"]
    assert_same_weights(weights(out / "ckpt_last.pt"), weights(tmp_path / "ref" / "ckpt_last.pt"))
    assert_same_weights(weights(out / "ckpt_best.pt"), weights(tmp_path / "ref" / "ckpt_best.pt"))
    assert decisions(out / "history.json") == decisions(tmp_path / "ref" / "history.json")


# =========================================================================== non-finite steps and weights

def _nan_loss_on(trainer, steps: set):
    """A forward hook that makes the loss NaN during the given (1-based) optimizer steps."""
    def hook(module, args, output):
        if trainer.state.step + 1 in steps and module.training:
            logits, loss = output
            return logits, loss * float("nan")
        return output
    return trainer.model.register_forward_hook(hook)


def test_one_or_two_nonfinite_steps_are_skipped_and_the_run_recovers(data, tmp_path):
    seen, hooked = {}, []

    def on_step(trainer):
        if not hooked:
            hooked.append(_nan_loss_on(trainer, {5, 6}))
        seen[trainer.state.step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    s = run(data, tmp_path / "run", on_step=on_step, max_steps=12, eval_every=3)
    assert s["stopped_reason"] == "max_steps" and s["steps"] == 12
    assert_same_weights(seen[4], seen[5])                  # skipped: no update ...
    assert_same_weights(seen[4], seen[6])
    assert not all(torch.equal(seen[6][k], seen[7][k]) for k in seen[6])   # ... and training goes on
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "step 5: non-finite loss" in log and "(2/3 in a row)" in log
    hist = json.loads((tmp_path / "run" / "history.json").read_text(encoding="utf-8"))
    assert 6 not in [h["step"] for h in hist]              # no evaluation right after a skipped step


@pytest.mark.parametrize("blow_up", [1e30, float("inf")], ids=["huge-but-finite", "inf"])
def test_exploded_weights_are_never_saved_and_a_rerun_resumes_from_the_last_good_state(
        data, tmp_path, monkeypatch, blow_up):
    """An update that blows the weights up while its loss was still finite, right before an
    evaluation: nothing is written, the run stops (exit 1), and a re-run with a lower --lr
    continues from the last good checkpoint and says so."""
    out = tmp_path / "run"
    run(data, out, max_steps=6, eval_every=3)
    before = hashes(out)
    real_step, steps = T.optimizer_step, [6]

    def exploding_step(model, *args, **kw):
        result = real_step(model, *args, **kw)
        steps[0] += 1
        if steps[0] == 9:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(blow_up)
        return result

    monkeypatch.setattr(T, "optimizer_step", exploding_step)
    with pytest.raises(UserError, match="diverged: the weights or the validation loss were not finite "
                                        r"\(at step 9\).*re-running resumes from step 6") as e:
        run(data, out, max_steps=12, eval_every=3)
    assert e.value.code == 1
    for name in ("ckpt_last.pt", "ckpt_best.pt", "history.json"):
        assert file_sha256(out / name) == before[name], name
    monkeypatch.setattr(T, "optimizer_step", real_step)
    s = run(data, out, max_steps=12, eval_every=3, lr=1e-3)  # the README's advice: a lower --lr
    assert s["stopped_reason"] == "max_steps" and s["steps"] == 12
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "diverged at step 9; continuing from the last good checkpoint, step 6" in log
    assert not (out / "diverged.json").exists()
    assert all(torch.isfinite(v).all() for v in weights(out / "ckpt_last.pt").values())


def test_three_nonfinite_steps_exit_1_through_the_cli(data, tmp_path):
    out = tmp_path / "run"
    first = run_cli("train", "--tokenizer", data["tok"], "--corpus", data["corpus"], "--outdir", out, *TINY_ARGS,
                    "--max-steps", "4", "--eval-every", "2", env=ENV)
    assert first.returncode == 0, first.stderr
    best = file_sha256(out / "ckpt_best.pt")
    proc = run_cli("train", "--tokenizer", data["tok"], "--corpus", data["corpus"], "--outdir", out, *TINY_ARGS,
                   "--max-steps", "40", "--lr", "1e30", env=ENV)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.startswith("error:")][0].startswith("error: training diverged")
    assert file_sha256(out / "ckpt_best.pt") == best


# =========================================================================== token cache

def _cache_file(out: Path) -> Path:
    (path,) = (out / "cache").glob("tokens-*.bin")
    return path


def _flip_a_bit(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[dataset.HEADER_BYTES + 101] ^= 0x40
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _bad_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[20:40] = b"x" * 20
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [_flip_a_bit, _truncate, _bad_header], ids=["bit-flip", "truncated", "header"])
def test_a_damaged_token_cache_is_detected_and_rebuilt(data, tmp_path, damage, caplog):
    out = tmp_path / "run"
    run(data, out, max_steps=2, eval_every=2)
    cache = _cache_file(out)
    good = cache.read_bytes()
    damage(cache)
    s = run(data, out, max_steps=4, eval_every=2)          # resume: reads the cache again
    assert s["steps"] == 4
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "is not usable" in log and "rebuilding it" in log
    assert cache.read_bytes() == good                       # rebuilt, byte for byte


def test_a_token_cache_of_another_tokenizer_is_never_used(data, tmp_path):
    other = tmp_path / "other.json"
    tokenizer.train_tokenizer([data["corpus"]], vocab_size=300, out_path=other, quiet=True)
    a = dataset.load_or_build_token_store(data["corpus"], data["tok"], tmp_path / "a", quiet=True)
    b = dataset.load_or_build_token_store(data["corpus"], other, tmp_path / "b", quiet=True)
    os.replace(b.path, a.path)                               # another tokenizer's tokens under a's name
    store = dataset.load_or_build_token_store(data["corpus"], data["tok"], tmp_path / "a", quiet=True)
    assert store.tokenizer_hash == tokenizer.tokenizer_hash(data["tok"]) and store.vocab_size == 512


# =========================================================================== SIGKILL at precise moments

KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import main, training, runs
    moment, at_step = sys.argv[1], int(sys.argv[2])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if moment == "mid-step":
        real_step = training.optimizer_step
        def optimizer_step(model, *a, **kw):
            out = real_step(model, *a, **kw)
            if trainer_step[0] + 1 == at_step:
                die()                                # the update is done, the step not yet counted
            return out
        training.optimizer_step = optimizer_step
    elif moment == "mid-evaluation":
        real_val = training.Trainer.validation_losses
        def validation_losses(self):
            value = real_val(self)
            if self.state.step == at_step:
                die()
            return value
        training.Trainer.validation_losses = validation_losses
    elif moment == "mid-checkpoint-write":
        real_save = runs.RunFolder.save_checkpoint
        def save_checkpoint(self, path, state):
            if state["state"]["step"] == at_step and path.name == "ckpt_last.pt":
                import common
                with common.atomic_path(path) as tmp:
                    tmp.write_bytes(b"half a checkpoint")
                    die()
            real_save(self, path, state)
        runs.RunFolder.save_checkpoint = save_checkpoint
    trainer_step = [0]
    real_advance = training.Trainer._advance
    def _advance(self, *a):
        result = real_advance(self, *a)
        trainer_step[0] = self.state.step
        return result
    training.Trainer._advance = _advance
    sys.exit(main.main(sys.argv[3:]))
""")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = run_cli(*_train_argv(data, out), env=ENV)
    assert proc.returncode == 0, proc.stderr
    return out


def _train_argv(data, out):
    return ["train", "--tokenizer", data["tok"], "--corpus", data["corpus"], "--outdir", out, *TINY_ARGS,
            "--max-steps", "24", "--eval-every", "6", "--patience", "3"]


@pytest.mark.parametrize("moment,at_step,saved", [("mid-step", 9, 6), ("mid-evaluation", 12, 6),
                                                  ("mid-checkpoint-write", 18, 12)])
def test_sigkill_then_resume_starts_at_the_last_saved_step_and_ends_bit_identical(
        data, tmp_path, uninterrupted, moment, at_step, saved):
    out = tmp_path / "run"
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT)), encoding="utf-8")
    argv = [str(a) for a in _train_argv(data, out)]
    proc = subprocess.run([sys.executable, str(script), moment, str(at_step), *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **ENV})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert torch.load(out / "ckpt_last.pt", map_location="cpu", weights_only=True)["state"]["step"] == saved
    again = run_cli(*_train_argv(data, out), env=ENV)
    assert again.returncode == 0, again.stderr
    assert f"at step {saved} (epoch" in again.stderr and "taking over the stale lock" in again.stderr
    assert_same_weights(weights(out / "ckpt_last.pt"), weights(uninterrupted / "ckpt_last.pt"))
    assert_same_weights(weights(out / "ckpt_best.pt"), weights(uninterrupted / "ckpt_best.pt"))
    assert decisions(out / "history.json") == decisions(uninterrupted / "history.json")
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_sigterm_save_and_exit_within_seconds_saying_how_to_resume(data, tmp_path, sig, code):
    out = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "main.py"), *map(str, _train_argv(data, out)[:-6]), "--max-steps", "100000"]
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
    for line in proc.stderr:
        if line.startswith("step 3/"):
            break
    t = time.monotonic()
    proc.send_signal(sig)
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == code and time.monotonic() - t < 5, err
    assert "run the same command again to continue" in err and "Traceback" not in err
    assert torch.load(out / "ckpt_last.pt", map_location="cpu", weights_only=True)["state"]["step"] >= 3


# =========================================================================== disk full

def _limited(max_bytes: int):
    """A child whose writes past `max_bytes` fail (EFBIG: the kernel's file-size limit, the same
    refusal a full disk gives a writer), with SIGXFSZ ignored so the write returns the error."""
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return preexec


def _run_limited(args, max_bytes: int, cwd=None):
    env = {**os.environ, **ENV, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=300, env=env, preexec_fn=_limited(max_bytes))


def test_a_full_disk_leaves_every_previous_output_intact(data, tmp_path):
    """For each kind of output, a good one is written first; the same command then runs where
    writes past a few KB fail: one error line, exit 2, the good file unchanged, no temp files."""
    work = tmp_path / "w"
    work.mkdir()
    raw = work / "raw.txt"
    raw.write_text(data["corpus"].read_text(encoding="utf-8") * 3, encoding="utf-8")
    run_dir = work / "run"
    cases = [
        (["prepare-corpus", "--input", raw, "--output", work / "clean.txt"], 8_000),
        (["init-tokenizer", "--files", data["corpus"], "--vocab-size", "400", "--out", work / "tok.json"], 8_000),
        (["train", "--tokenizer", data["tok"], "--corpus", data["corpus"], "--outdir", run_dir, *TINY_ARGS,
          "--max-steps", "2", "--eval-every", "2"], 60_000),
        (["export", "--ckpt", run_dir / "ckpt_best.pt", "--tokenizer", data["tok"], "--out", work / "hf"], 8_000),
        (["generate", "--tokenizer", data["tok"], "--ckpt", run_dir / "ckpt_best.pt", "--prompt", "La",
          "--max-tokens", "100", "--temperature", "0", "--output", work / "gen.txt"], 40),
        (["report", run_dir, "--out", work / "report.html"], 8_000),
    ]
    for args, limit in cases:
        good = run_cli(*args, env=ENV)
        assert good.returncode == 0, (args[0], good.stderr)
        before = hashes(work)
        if args[0] == "train":     # two more steps to save, on a disk with room for no checkpoint
            args = [*args[:-4], "--max-steps", "4", "--eval-every", "2"]
        proc = _run_limited(args, limit)
        assert_user_error(proc)
        assert "cannot write" in proc.stderr, (args[0], proc.stderr)
        after = hashes(work)
        if args[0] == "train":     # the log gets its lines and config.json the new --max-steps;
            for name in ("run/train.log", "run/config.json"):     # checkpoints and history do not change
                after.pop(name, None), before.pop(name, None)
        assert after == before, args[0]
        assert not [p for p in work.rglob("*") if p.name.endswith(".tmp")], args[0]


# =========================================================================== files the user owns

def test_a_foreign_config_json_in_outdir_is_never_overwritten_without_force(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}', encoding="utf-8")
    with pytest.raises(UserError, match="config.json.*--force"):
        run(data, out, max_steps=2)
    assert (out / "config.json").read_text(encoding="utf-8") == '{"my": "settings"}'
    assert not (out / "ckpt_last.pt").exists()
    s = T.train(data["tok"], data["corpus"], out, "custom", {**TINY, "max_steps": 2}, quiet=True, force=True)
    assert s["steps"] == 2


def test_an_earlier_run_without_ckpt_last_is_not_overwritten(data, tmp_path):
    out = tmp_path / "run"
    run(data, out, max_steps=2, eval_every=2)
    (out / "ckpt_last.pt").unlink()
    best = file_sha256(out / "ckpt_best.pt")
    with pytest.raises(UserError, match="ckpt_best.pt, history.json and no ckpt_last.pt.*--force"):
        run(data, out, max_steps=2)
    assert file_sha256(out / "ckpt_best.pt") == best


def test_a_folder_where_a_run_file_should_be_is_one_error_line(data, tmp_path):
    out = tmp_path / "run"
    (out / "history.json").mkdir(parents=True)
    with pytest.raises(UserError, match="history.json is not a file"):
        run(data, out, max_steps=2)
    assert (out / "history.json").is_dir()


def test_reexport_never_deletes_files_the_user_added(data, tmp_path):
    out = tmp_path / "run"
    run(data, out, max_steps=2, eval_every=2)
    hf = tmp_path / "hf"
    assert run_cli("export", "--ckpt", out / "ckpt_best.pt", "--tokenizer", data["tok"], "--out", hf).returncode == 0
    (hf / "notas.txt").write_text("mis notas", encoding="utf-8")
    before = hashes(hf)
    proc = run_cli("export", "--ckpt", out / "ckpt_best.pt", "--tokenizer", data["tok"], "--out", hf)
    assert_user_error(proc)
    assert "notas.txt" in proc.stderr and hashes(hf) == before


def test_enospc_names_the_full_disk_and_keeps_the_previous_file(tmp_path):
    """The kernel's ENOSPC (what a full disk gives a writer) as the block's write raises it."""
    import errno

    from common import atomic_path, write_text
    target = tmp_path / "history.json"
    write_text(target, "[]\n")
    with pytest.raises(UserError, match=r"cannot write .*history.json: the disk is full; free some space"):
        with atomic_path(target) as tmp:
            tmp.write_text("[{\"step\": 1", encoding="utf-8")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_text(encoding="utf-8") == "[]\n" and [p.name for p in tmp_path.iterdir()] == ["history.json"]
