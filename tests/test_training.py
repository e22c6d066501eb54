"""training.py in-process: presets and configs, the LR schedule, overfitting, early stopping,
checkpoint format, exact resume after a real SIGINT, divergence handling, the run lock.

Tiny configs (2 layers, 32 wide, block 32) on a real Spanish slice, CPU only.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tokenizer
import config as C
import runs as R
import training as T
from common import EXIT_LOCKED, UserError, file_sha256
from conftest import corpus_slice

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, eval_batches=2, lr=3e-3,
            warmup_steps=2, log_every=1000)


def write_corpus(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(f"{d}\n<|doc|>\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A real Spanish corpus slice (~120 documents) and a 512-token tokenizer trained on it."""
    d = tmp_path_factory.mktemp("data")
    docs = [x.strip() for x in corpus_slice("wiki_es.txt", n_chars=60_000).split("<|doc|>\n")[:-1]]
    corpus = write_corpus(d / "corpus.txt", [x for x in docs if x])
    tok = d / "tok.json"
    tokenizer.train_tokenizer([corpus], vocab_size=512, out_path=tok, quiet=True)
    return {"dir": d, "corpus": corpus, "tok": tok, "docs": docs}


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest.py


def run(data, outdir, corpus=None, tok=None, **kw):
    overrides = {**TINY, **kw.pop("overrides", {})}
    return T.train(tok or data["tok"], corpus or data["corpus"], outdir, "custom", overrides, quiet=True, **kw)


def first_words_prompt(sample: str, docs: list[str]) -> str:
    """The prompt `sample` starts with: the first three words of one of `docs` (or fail)."""
    prompts = [" ".join(d.split()[:3]) for d in docs if d.strip()]
    found = [p for p in prompts if sample.startswith(p)]
    assert found, f"the sample {sample!r} starts with no document's first words"
    return found[0]


def model_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# =========================================================================== configs and schedule

def test_lr_schedule_edges():
    cfg = C.TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=101)
    assert C.lr_at(0, cfg) == pytest.approx(1e-3 / 11) and C.lr_at(0, cfg) > 0   # never 0 at step 0
    assert C.lr_at(9, cfg) == pytest.approx(1e-3 * 10 / 11)                      # last warmup step
    assert C.lr_at(10, cfg) == pytest.approx(1e-3)                               # end of warmup: peak
    assert C.lr_at(100, cfg) == pytest.approx(1e-4)                              # last step: min_lr
    assert C.lr_at(99, cfg) > 1e-4
    assert C.lr_at(150, cfg) == pytest.approx(1e-4)
    assert C.lr_at(55, cfg) == pytest.approx((1e-3 + 1e-4) / 2)                  # cosine midpoint
    lrs = [C.lr_at(s, cfg) for s in range(101)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))                       # rising warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))                       # decaying after
    no_warmup = C.TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=5)
    assert C.lr_at(0, no_warmup) == pytest.approx(1e-3) and C.lr_at(4, no_warmup) == 0.0
    one = C.TrainConfig(lr=1e-3, warmup_steps=0, min_lr=0.0, total_steps=1)
    assert C.lr_at(0, one) == pytest.approx(1e-3)


def test_warmup_stable_decay_edges():
    cfg = C.TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=101, decay_start=60)
    assert C.lr_at(0, cfg) == pytest.approx(1e-3 / 11)                          # the same warmup
    assert C.lr_at(10, cfg) == C.lr_at(59, cfg) == pytest.approx(1e-3)          # stable at the peak
    assert C.lr_at(60, cfg) == pytest.approx(1e-3)                              # decay starts at the peak
    assert C.lr_at(80, cfg) == pytest.approx(1e-3 + (1e-4 - 1e-3) * 20 / 40)    # linear
    assert C.lr_at(100, cfg) == pytest.approx(1e-4) and C.lr_at(120, cfg) == pytest.approx(1e-4)
    lrs = [C.lr_at(s, cfg) for s in range(60, 101)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    # a decay that starts inside the warmup starts from the lr reached there
    early = C.TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=10, total_steps=9, decay_start=4)
    assert C.lr_at(4, early) == pytest.approx(1e-3 * 5 / 11) and C.lr_at(8, early) == 0.0
    # before the length is known, the lr after warmup does not depend on total_steps
    a = C.TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=5, total_steps=500, decay_start=500)
    b = C.TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=5, total_steps=900, decay_start=900)
    assert [C.lr_at(s, a) for s in range(200)] == [C.lr_at(s, b) for s in range(200)]


def test_resolve_schedule_defaults():
    cfg = C.resolve_schedule(C.TrainConfig(lr=1e-3, epochs=3), steps_per_epoch=1000)
    assert cfg.total_steps == 3000 and cfg.warmup_steps == 150 and cfg.min_lr == pytest.approx(1e-4)
    capped = C.resolve_schedule(C.TrainConfig(epochs=3, max_steps=40, warmup_steps=7), steps_per_epoch=1000)
    assert capped.total_steps == 40 and capped.warmup_steps == 7
    assert cfg.decay_start is None and capped.decay_start is None                  # cosine


def test_wsd_schedule_decays_over_the_last_fifth():
    cfg = C.resolve_schedule(C.TrainConfig(lr=1e-3, max_steps=500, schedule="wsd"), steps_per_epoch=1000)
    assert (cfg.total_steps, cfg.warmup_steps, cfg.decay_start) == (500, 25, 400)
    assert C.lr_at(25, cfg) == C.lr_at(400, cfg) == pytest.approx(1e-3)
    assert C.lr_at(450, cfg) == pytest.approx(1e-3 - 0.9e-3 * 50 / 99)
    assert C.lr_at(499, cfg) == pytest.approx(1e-4)
    short = C.resolve_schedule(C.TrainConfig(max_steps=4, warmup_steps=3, schedule="wsd"), steps_per_epoch=10)
    assert short.decay_start == 3                                                # never inside the warmup


def test_presets_exact_names_and_field_overrides():
    m, t = C.make_configs("small", {}, vocab_size=32000)
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == (4, 4, 256, 256)
    assert (t.batch_size, t.epochs, t.lr, t.gradient_checkpointing) == (8, 30, 4e-3, False)
    assert (m.family, t.optimizer) == ("neox", "muon")
    m, t = C.make_configs("large", {"n_layer": 6, "lr": None}, vocab_size=32000)
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == (6, 10, 640, 1024)   # only n_layer changed
    assert (t.batch_size, t.epochs, t.lr, t.gradient_checkpointing) == (8, 15, 1.6e-3, True)
    m, t = C.make_configs("medium", {"batch_size": 4}, vocab_size=100)
    assert (m.n_layer, m.n_embd, m.block_size, t.batch_size, t.lr) == (10, 384, 512, 4, 2.4e-3)
    m, t = C.make_configs("custom", {"n_layer": 2, "n_head": 2, "n_embd": 32}, vocab_size=100)
    assert (m.n_layer, m.block_size, t.batch_size, t.lr, m.family) == (2, 256, 8, 4e-3, "neox")  # small's
    with pytest.raises(ValueError, match="--config custom needs --n-head, --n-embd"):
        C.make_configs("custom", {"n_layer": 2}, vocab_size=100)
    with pytest.raises(ValueError, match="unknown preset 'Small'"):
        C.make_configs("Small", {}, vocab_size=100)                              # exact names only


def test_config_errors_are_collected():
    with pytest.raises(ValueError) as e:
        C.make_configs("small", {"n_head": 6, "batch_size": 0, "val_fraction": 1.5, "min_lr": 1.0,
                                 "z_loss": -1e-4}, vocab_size=100)
    msg = str(e.value)
    assert "z_loss=-0.0001 must be >= 0" in msg
    assert "n_embd=256 is not divisible by n_head=6" in msg
    assert "batch_size=0" in msg and "val_fraction=1.5" in msg and "min_lr=1.0 must not exceed lr" in msg
    with pytest.raises(ValueError, match="stride=64 must not exceed block_size=32"):
        C.make_configs("custom", {**{k: TINY[k] for k in ("n_layer", "n_head", "n_embd", "block_size")},
                                  "stride": 64}, vocab_size=100)


def _train_help() -> str:
    import main
    parser = main.build_parser()
    sub = next(a for a in parser._actions if a.dest == "stage")
    return " ".join(sub.choices["train"].format_help().split())   # unwrapped


def test_train_help_is_derived_from_presets_and_fields():
    text = _train_help()
    configs = {name: C.make_configs(name, {}, vocab_size=100) for name in C.PRESETS}
    for field in sorted({k for values in C.PRESETS.values() for k in values}):
        # the value each preset really gives the field, in the flag's help: (preset: small 256, medium 512, ...)
        shown = ", ".join(f"{name} {C._shown(getattr(m if field in C.MODEL_FIELDS else t, field))}"
                          for name, (m, t) in configs.items())
        assert f"--{field.replace('_', '-')}" in text and f"(preset: {shown})" in text, field
    for name in C.PRESETS:
        assert f"{name} ~{C.preset_parameters(name) / 1e6:.0f}M" in text
    assert "(default: 1337)" in text and "(default: 5% of the schedule, 20% with --init-from; at most 500)" in text


def test_every_flag_field_reaches_its_config(data):
    """A field with flag metadata is a train flag; its value lands in that field of the configs."""
    import main
    samples = {"int>=1": ("3", 3), "int>=0": ("0", 0), "int": ("7", 7), "float": ("0.25", 0.25),
               "fraction": ("0.2", 0.2), "duration": ("2m", "2m"),
               "text": ("Hola", "Hola"), "bool": (None, True), "precision": ("fp32", "fp32")}
    for flag in C.train_flags():
        text, value = (flag.choices[-1],) * 2 if flag.kind == "choice" else samples[flag.kind]
        argv = ["train", "--tokenizer", "t", "--corpus", "c", "--outdir", "o", flag.option] + ([text] if text else [])
        args = main.build_parser().parse_args(argv)
        assert getattr(args, flag.name) == value, flag.name
        assert flag.name in C.CLI_OVERRIDES
    m, t = C.make_configs("small", {"n_embd": 64, "n_head": 2, "eval_batches": 3, "compile": True},
                          vocab_size=100)
    assert (m.n_embd, m.n_head, t.eval_batches, t.compile) == (64, 2, 3, True)


def test_model_config_counts_the_parameters_of_the_network():
    from model import GPT
    for preset in C.PRESETS:
        for bias in (True, False):
            shape = {k: v for k, v in C.PRESETS[preset].items() if k in C.MODEL_FIELDS}
            shape.update(family="neox" if bias else shape.get("family", "neox"))   # only neox has biases
            cfg = C.ModelConfig(vocab_size=300, bias=bias, **shape)
            assert cfg.num_parameters() == GPT(cfg).num_parameters(), (preset, bias)


# =========================================================================== learning

def test_tiny_model_overfits_tiny_corpus(data, tmp_path):
    corpus = write_corpus(tmp_path / "tiny.txt", data["docs"][:2])   # ~600 tokens, all training
    s = run(data, tmp_path / "run", corpus=corpus,
            overrides=dict(val_fraction=0.0, epochs=1000, max_steps=80, eval_every=1000, lr=1e-2,
                           warmup_steps=5))
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert s["stopped_reason"] == "max_steps" and s["steps"] == 80
    assert hist[-1]["val_loss"] is None and hist[-1]["train_loss"] < 1.0, hist[-1]
    assert (tmp_path / "run" / "ckpt_best.pt").is_file()     # no validation set: best = latest


def test_early_stopping_stops_and_keeps_the_best(data, tmp_path):
    corpus = write_corpus(tmp_path / "small.txt", data["docs"][:16])
    out = tmp_path / "run"
    s = run(data, out, corpus=corpus,
            overrides=dict(val_fraction=0.25, max_steps=600, eval_every=10, patience=2, lr=1e-2))
    hist = json.loads((out / "history.json").read_text())
    assert s["stopped_reason"] == "early_stopping" and s["steps"] < 600
    vals = [h["val_loss"] for h in hist]
    best = min(range(len(vals)), key=vals.__getitem__)
    assert len(hist) - 1 - best == 2                      # stopped after exactly `patience` bad evals
    assert s["best_step"] == hist[best]["step"] and s["best_val_loss"] == pytest.approx(vals[best])
    best_ckpt = torch.load(out / "ckpt_best.pt", map_location="cpu", weights_only=True)
    assert best_ckpt["state"]["step"] == s["best_step"]
    assert best_ckpt["state"]["best_val"] == pytest.approx(vals[best])
    assert torch.load(out / "ckpt_last.pt", map_location="cpu", weights_only=True)["state"]["step"] == s["steps"]


# =========================================================================== checkpoints and resume

def test_checkpoint_format_loads_with_weights_only(data, tmp_path):
    import checkpoint as CK
    out = tmp_path / "run"
    out.mkdir()
    (out / ".ckpt_last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")   # from a killed write
    s = run(data, out, overrides=dict(max_steps=6, eval_every=3))
    assert not list(out.glob(".*.tmp"))
    ckpt = torch.load(out / "ckpt_last.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"version", "model", "model_config", "meta", "optimizer", "scaler", "train_config", "state"}
    assert ckpt["version"] == CK.CHECKPOINT_VERSION == 2
    assert ckpt["state"]["step"] == 6 and ckpt["meta"]["step"] == 6
    state = CK.TrainState.from_checkpoint(ckpt)          # the round trip is exact
    again = state.to_dict()
    assert {k: v for k, v in again.items() if k != "rng"} == {k: v for k, v in ckpt["state"].items() if k != "rng"}
    assert all(torch.equal(again["rng"]["torch"], ckpt["state"]["rng"]["torch"]) for _ in [0])
    assert state.best_step == s["best_step"] and state.world_size == 1 and state.n_windows > 0
    assert ckpt["meta"]["tokenizer_hash"] == file_sha256(data["tok"])
    assert ckpt["meta"]["corpus_hash"] == file_sha256(data["corpus"])
    assert ckpt["meta"]["vocab_size"] == 512
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])
    rng = ckpt["state"]["rng"]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["numpy"][1], list)
    loaded, meta = CK.load_model(out / "ckpt_best.pt", tokenizer=tokenizer.load_identity(data["tok"]))
    assert meta["step"] == s["best_step"] and loaded.num_parameters() == s["params"]
    hist = json.loads((out / "history.json").read_text())
    assert [tuple(h) for h in hist] == [T.HISTORY_KEYS] * len(hist) and [h["step"] for h in hist] == [3, 6]
    prompt = first_words_prompt(hist[0]["sample"], data["docs"])       # a validation document's first words
    assert all(h["sample"].startswith(prompt) for h in hist)
    cfg = json.loads((out / "config.json").read_text())
    assert set(cfg) >= {"model", "train", "tokenizer", "corpus", "versions"}
    assert cfg["tokenizer"]["hash"] == ckpt["meta"]["tokenizer_hash"] and cfg["model"]["n_embd"] == 32
    assert set(cfg["versions"]) >= {"python", "torch", "tokenizers", "numpy"}


def optimizer_states(ckpt: dict) -> list[dict]:
    """Per-parameter optimizer states of a checkpoint, for AdamW and for the Muon + AdamW pair."""
    parts = ckpt["optimizer"].get("optimizers", [ckpt["optimizer"]])
    return [s for part in parts for s in part["state"].values()]


@pytest.mark.parametrize("optimizer", C.OPTIMIZERS)
def test_resume_after_sigint_is_bit_identical(data, tmp_path, optimizer):
    """Dropout (RNG), gradient accumulation and evaluations on both sides of the interruption."""
    over = dict(max_steps=24, eval_every=5, dropout=0.1, accumulation_steps=2, batch_size=4, optimizer=optimizer)
    ref = run(data, tmp_path / "ref", overrides=over)
    assert ref["stopped_reason"] == "max_steps"

    def interrupt_at_9(trainer):
        if trainer.state.step == 9:
            os.kill(os.getpid(), signal.SIGINT)      # a real signal through the real handler

    out = tmp_path / "resumed"
    first = run(data, out, overrides=over, on_step=interrupt_at_9)
    assert first["stopped_reason"] == "interrupted" and first["steps"] == 9
    assert R.exit_code(first["stopped_reason"]) == 130
    assert torch.load(out / "ckpt_last.pt", map_location="cpu", weights_only=True)["state"]["step"] == 9
    second = run(data, out, overrides=over)             # new objects, same command
    assert second["stopped_reason"] == "max_steps" and second["steps"] == 24
    a = torch.load(tmp_path / "ref" / "ckpt_last.pt", map_location="cpu", weights_only=True)
    b = torch.load(out / "ckpt_last.pt", map_location="cpu", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    states_a, states_b = optimizer_states(a), optimizer_states(b)
    assert len(states_a) == len(states_b) > 0
    for pa, pb in zip(states_a, states_b):
        assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    ha = json.loads((tmp_path / "ref" / "history.json").read_text())
    hb = json.loads((out / "history.json").read_text())
    assert [(h["step"], h["val_loss"], h["train_loss"], h["sample"]) for h in ha] == \
           [(h["step"], h["val_loss"], h["train_loss"], h["sample"]) for h in hb]
    assert (second["best_val_loss"], second["best_step"], second["tokens_seen"]) == \
           (ref["best_val_loss"], ref["best_step"], ref["tokens_seen"])


def test_the_host_reads_the_steps_only_at_log_and_evaluation_points(data, tmp_path, monkeypatch):
    """The statistics of each step stay on the device until a read point (the first step, every
    log_every steps, each evaluation, the end): one host read there covers the steps since the
    last. Reading every step instead (an on_step hook forces it) gives the same run: weights,
    tokens, train losses, gradient norms and history."""
    over = dict(max_steps=13, eval_every=6, log_every=4)
    reads = []
    real_read = T.Trainer.read_steps

    def counted(self):
        reads.append([step for step, _, _ in self._unread])
        real_read(self)

    monkeypatch.setattr(T.Trainer, "read_steps", counted)
    late = run(data, tmp_path / "late", overrides=over)
    assert [r for r in reads if r] == [[1], [2, 3, 4], [5, 6], [7, 8], [9, 10, 11, 12], [13]]
    reads.clear()
    every = run(data, tmp_path / "every", overrides=over, on_step=lambda trainer: None)
    assert [r for r in reads if r] == [[step] for step in range(1, 14)]

    assert (late["tokens_seen"], late["best_val_loss"]) == (every["tokens_seen"], every["best_val_loss"])
    a = torch.load(tmp_path / "late" / "ckpt_last.pt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "every" / "ckpt_last.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    keys = ("step", "tokens_seen", "train_loss", "grad_norm", "val_loss", "sample")
    ha, hb = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("late", "every"))
    assert [[h[k] for k in keys] for h in ha] == [[h[k] for k in keys] for h in hb] and len(ha) == 3
    assert all(h["train_loss"] is not None and h["grad_norm"] > 0 for h in ha)
    log = (tmp_path / "late" / "train.log").read_text(encoding="utf-8")
    assert "step 4/13" in log and "step 8/13" in log and "step 5/13" not in log


def test_resume_keeps_the_preset_values_the_run_started_with(data, tmp_path, monkeypatch):
    """The same command goes on continuing a run after the presets change (the family and the
    optimizer have): a field no flag sets keeps the run's recorded value; a flag still decides."""
    out, tiny = tmp_path / "run", {k: v for k, v in TINY.items() if k not in ("lr", "batch_size")}
    T.train(data["tok"], data["corpus"], out, "custom", {**tiny, "max_steps": 3, "eval_every": 3}, quiet=True)
    later = {**C.PRESETS["small"], "family": "qwen3", "optimizer": "adamw", "lr": 1e-3, "batch_size": 4}
    monkeypatch.setitem(C.PRESETS, "small", later)                 # the presets of a later version
    s = T.train(data["tok"], data["corpus"], out, "custom", {**tiny, "max_steps": 6, "eval_every": 3}, quiet=True)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert s["steps"] == 6 and config["model"]["family"] == "neox"
    assert (config["train"]["optimizer"], config["train"]["lr"], config["train"]["batch_size"]) == ("muon", 4e-3, 8)
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "continuing the run with the custom preset's values it started with (flags override them): " \
           "--batch-size 8 --lr 0.004 --family neox --optimizer muon" in log
    with pytest.raises(UserError, match=r"family neox -> qwen3.*--family neox to continue"):
        T.train(data["tok"], data["corpus"], out, "custom", {**tiny, "max_steps": 9, "family": "qwen3"}, quiet=True)
    fresh = T.train(data["tok"], data["corpus"], tmp_path / "new", "custom", {**tiny, "max_steps": 2}, quiet=True)
    new_config = json.loads((tmp_path / "new" / "config.json").read_text(encoding="utf-8"))
    assert new_config["model"]["family"] == "qwen3" and fresh["steps"] == 2          # a new run: the new presets


def test_resume_refuses_other_shape_tokenizer_or_corpus(data, tmp_path):
    out = tmp_path / "run"
    run(data, out, overrides=dict(max_steps=3, eval_every=3))
    with pytest.raises(UserError, match="model shape differs.*n_embd 32 -> 64"):
        run(data, out, overrides=dict(max_steps=6, n_embd=64))
    with pytest.raises(UserError, match=r"model shape differs.*family neox -> llama.*--family neox to continue"):
        run(data, out, overrides=dict(max_steps=6, family="llama"))
    with pytest.raises(UserError, match="trained with --optimizer muon, not adamw"):
        run(data, out, overrides=dict(max_steps=6, optimizer="adamw"))
    other_tok = tmp_path / "other_tok.json"
    tokenizer.train_tokenizer([write_corpus(tmp_path / "o.txt", data["docs"][40:])], vocab_size=512,
                              out_path=other_tok, quiet=True)
    with pytest.raises(UserError, match="tokenizer differ.*--force"):
        run(data, out, tok=other_tok, overrides=dict(max_steps=6))
    other_corpus = write_corpus(tmp_path / "c.txt", data["docs"][:60])
    with pytest.raises(UserError, match="corpus differ"):
        run(data, out, corpus=other_corpus, overrides=dict(max_steps=6))
    s = run(data, out, corpus=other_corpus, overrides=dict(max_steps=6), force=True)
    assert s["steps"] == 6
    with pytest.raises(UserError, match="nothing to resume"):
        run(data, tmp_path / "fresh", resume=True)


def test_divergence_stops_after_three_nonfinite_steps_and_keeps_best(data, tmp_path):
    out = tmp_path / "run"
    run(data, out, overrides=dict(max_steps=4, eval_every=2))
    best_hash = file_sha256(out / "ckpt_best.pt")
    last_hash = file_sha256(out / "ckpt_last.pt")
    # lr 1e30 really blows the weights up: the next forward passes give a NaN loss
    with pytest.raises(UserError, match="diverged") as e:
        run(data, out, overrides=dict(max_steps=40, eval_every=100, lr=1e30))
    assert e.value.code == T.EXIT_DIVERGED == 1
    assert file_sha256(out / "ckpt_best.pt") == best_hash
    assert file_sha256(out / "ckpt_last.pt") == last_hash
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "3/3 in a row" in log and "step skipped" in log


def test_rerun_of_a_finished_run_trains_nothing(data, tmp_path):
    out = tmp_path / "run"
    run(data, out, overrides=dict(max_steps=4, eval_every=2))
    before = (out / "ckpt_last.pt").read_bytes()
    s = run(data, out, overrides=dict(max_steps=4, eval_every=2))
    assert s["steps"] == 4 and s["stopped_reason"] == "max_steps"
    assert (out / "ckpt_last.pt").read_bytes() == before
    assert "nothing to train" in (out / "train.log").read_text(encoding="utf-8")
    longer = run(data, out, overrides=dict(max_steps=6, eval_every=2))   # a larger budget continues
    assert longer["steps"] == 6


BUDGET = dict(epochs=100_000, eval_every=100, patience=0, min_lr=1e-4)


def test_time_budget_ends_on_time_with_the_lr_decayed(data, tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    s = run(data, out, overrides=dict(BUDGET, time_budget=20.0))
    wall = time.monotonic() - t0
    assert s["stopped_reason"] == "time_budget" and R.exit_code("time_budget") == 0
    assert 0.75 * 20 <= s["elapsed_seconds"] <= 20 * 1.05, s      # counted from the start of the run
    assert wall <= 20 * 1.05 + 3, wall
    hist = json.loads((out / "history.json").read_text())
    assert hist[-1]["step"] == s["steps"] and hist[-1]["lr"] == pytest.approx(1e-4)   # fully decayed
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert cfg["total_steps"] == s["steps"] and cfg["time_budget"] == 20.0
    assert 0 < cfg["warmup_steps"] < cfg["decay_start"] < cfg["total_steps"]
    ckpt = torch.load(out / "ckpt_last.pt", map_location="cpu", weights_only=True)
    assert ckpt["train_config"]["total_steps"] == s["steps"] and ckpt["state"]["budget_fixed"]
    logged = re.findall(r"step ([\d,]+)/([\d,]+) .* eta (\S+)", (out / "train.log").read_text(encoding="utf-8"))
    assert logged and all(int(a.replace(",", "")) <= int(b.replace(",", "")) for a, b, _ in logged), logged
    assert not any(eta.startswith("-") for *_, eta in logged), logged


def test_time_budget_estimate_follows_the_measured_steps():
    """The probe's guess is replaced by the measured step times at each read point: a run whose
    steps turn out 3x slower than probed expects about a third of the steps."""
    from budget import TimeBudget
    req = C.TrainConfig(epochs=100_000, eval_every=100, patience=0, time_budget=100.0)
    budget = TimeBudget(req, steps_per_epoch=50, costs={"step": 0.1, "eval": 1.0})
    cfg, fixed = budget.plan(0, 0.0)
    assert not fixed and 700 < budget.estimate < 780         # 0.1 s + evaluations every 50 steps
    for _ in range(20):
        budget.record(0.3)
    assert 250 < budget.refresh(cfg, 20, 6.0) < 320 and budget.estimate < 320
    capped = C.TrainConfig(epochs=100_000, eval_every=100, patience=0, time_budget=100.0, max_steps=100)
    assert budget.refresh(C.resolve_schedule(capped, 50), 20, 6.0) == 100    # never past --max-steps


def test_time_budget_resume_after_the_steps_are_fixed_is_exact(data, tmp_path):
    """Killed (a real SIGINT) after the step count is fixed; resumed by the same command; the
    final weights equal those of an uninterrupted run of that schedule (which also shows that
    the probe at the start leaves no trace)."""
    over = dict(BUDGET, time_budget=6.0, dropout=0.1, eval_every=40)

    def interrupt_after_fix(trainer):
        if trainer.state.budget_fixed and trainer.state.step == trainer.cfg.decay_start + 3:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "budget"
    first = run(data, out, overrides=over, on_step=interrupt_after_fix)
    assert first["stopped_reason"] == "interrupted"
    fixed = torch.load(out / "ckpt_last.pt", map_location="cpu", weights_only=True)["train_config"]
    assert fixed["decay_start"] + 3 == first["steps"] < fixed["total_steps"]
    second = run(data, out, overrides=over)
    assert second["stopped_reason"] == "time_budget" and second["steps"] == fixed["total_steps"]

    ref_over = dict(BUDGET, dropout=0.1, eval_every=40, max_steps=fixed["total_steps"],
                    warmup_steps=fixed["warmup_steps"], decay_start=fixed["decay_start"])
    ref = run(data, tmp_path / "ref", overrides=ref_over)
    assert ref["steps"] == fixed["total_steps"]
    a, b = model_state(tmp_path / "ref" / "ckpt_last.pt"), model_state(out / "ckpt_last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_time_budget_larger_than_the_epochs_keeps_the_cosine_schedule(data, tmp_path):
    s = run(data, tmp_path / "run", overrides=dict(epochs=1, patience=0, time_budget=3600.0))
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert s["stopped_reason"] == "completed" and cfg["decay_start"] is None
    assert s["steps"] == cfg["total_steps"]


def test_max_time_stops_cleanly_and_saves(data, tmp_path):
    out = tmp_path / "run"
    s = run(data, out, overrides=dict(max_time=1e-3, eval_every=1000))
    assert s["stopped_reason"] == "max_time" and s["steps"] == 1 and R.exit_code("max_time") == 0
    # saved where it stopped, without an evaluation the uninterrupted run would not make
    assert not (out / "history.json").exists() and not (out / "ckpt_best.pt").exists()
    assert torch.load(out / "ckpt_last.pt", map_location="cpu", weights_only=True)["state"]["step"] == 1


def test_sample_prompt_overrides_the_validation_document(data, tmp_path):
    run(data, tmp_path / "run", overrides=dict(max_steps=2, eval_every=2, sample_prompt="¿Qué es la ñandú?"))
    hist = json.loads((tmp_path / "run" / "history.json").read_text(encoding="utf-8"))
    assert hist[0]["sample"].startswith("¿Qué es la ñandú?")


def test_bf16_autocast_with_workers_and_lowercase_prompt(data, tmp_path):
    lower = write_corpus(tmp_path / "lower.txt", [d.lower() for d in data["docs"][:40]])
    out = tmp_path / "run"
    s = run(data, out, corpus=lower, overrides=dict(max_steps=4, eval_every=2, precision="bf16", num_workers=1,
                                                    accumulation_steps=2, batch_size=4))
    assert s["stopped_reason"] == "max_steps" and math.isfinite(s["best_val_loss"])
    ckpt = torch.load(out / "ckpt_last.pt", map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())   # autocast keeps fp32 weights
    hist = json.loads((out / "history.json").read_text())
    assert first_words_prompt(hist[0]["sample"], [d.lower() for d in data["docs"][:40]])  # the corpus's case


def test_bad_max_time_is_one_error_line(capsys):
    import main
    assert main.main(["train", "--tokenizer", "t.json", "--corpus", "c.txt", "--outdir", "o",
                      "--max-time", "soon"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--max-time" in err and "Traceback" not in err


# =========================================================================== lock

def test_lock_live_refuses_and_stale_is_taken_over(tmp_path):
    with R.RunLock(tmp_path):
        info = json.loads((tmp_path / "train.lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(UserError, match=f"in use by another training run .PID {os.getpid()}") as e:
            R.RunLock(tmp_path).__enter__()
        assert e.value.code == EXIT_LOCKED
    assert not (tmp_path / "train.lock").exists()          # released and removed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "train.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                     "started": "2020-01-01T00:00:00"}))
    with R.RunLock(tmp_path):                                # stale: taken over
        assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()


def test_out_of_memory_is_a_user_error_with_advice(data, tmp_path):
    # the widest model the config allows: refused before anything is allocated (it needs ~50 TiB)
    with pytest.raises(UserError, match="out of memory building the model.*parameters need .* GiB.*smaller model"):
        run(data, tmp_path / "run", overrides=dict(n_embd=C.MODEL_LIMITS["n_embd"], n_head=2, max_steps=1))
    with pytest.raises(UserError, match="n_embd=2,147,483,648 is beyond what mini-llm builds"):
        run(data, tmp_path / "run", overrides=dict(n_embd=2**31, n_head=2, max_steps=1))


def test_device_choices():
    cpu = torch.device("cpu")
    assert T.resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            T.resolve_device("cuda")


def test_perplexity_and_json_safety():
    assert T.perplexity(math.log(50.0)) == pytest.approx(50.0)
    assert T.perplexity(float("nan")) is None and T.perplexity(1e4) is None and T.perplexity(None) is None
    assert T._finite(float("inf")) is None and T._finite(2) == 2.0
