"""Domain adaptation: train --init-from (a checkpoint or an export folder), corpus mixtures with
weights and per-corpus validation, --select-on, and the refusals around them.

Tiny configs on two real Spanish slices of the shipped corpus (short encyclopedia-like
documents and the rest), CPU only.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import config as C
import dataset
import tokenizer
import training as T
from checkpoint import load_model
from common import UserError
from conftest import assert_user_error, corpus_slice
from model import document_positions

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, eval_batches=2, lr=3e-3,
            warmup_steps=2, log_every=1000, family="llama", optimizer="adamw")

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest.py


def write_corpus(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(f"{d}\n<|doc|>\n" for d in docs if d), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """"general": the first ~60 KB of the shipped corpus; "domain": 40 later documents (smaller);
    a 512-token tokenizer trained on the general part."""
    d = tmp_path_factory.mktemp("data")
    docs = [x.strip() for x in corpus_slice(n_chars=300_000).split("<|doc|>\n")[:-1]]
    general = write_corpus(d / "general.txt", docs[:100])
    domain = write_corpus(d / "domain.txt", docs[300:340])
    tok = d / "tok.json"
    tokenizer.train_tokenizer([general], vocab_size=512, out_path=tok, quiet=True)
    return {"dir": d, "general": general, "domain": domain, "tok": tok}


def run(data, outdir, corpus, **kw):
    overrides = {**TINY, **kw.pop("overrides", {})}
    return T.train(data["tok"], corpus, outdir, "custom", overrides, quiet=True, **kw)


@pytest.fixture(scope="module")
def source(data, tmp_path_factory):
    """A trained source run on the general corpus (its ckpt_last.pt is the --init-from input)."""
    out = tmp_path_factory.mktemp("source") / "run"
    run(data, out, data["general"], overrides=dict(max_steps=8, eval_every=4))
    return out / "ckpt_last.pt"


def weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def batch_loss(model, x, y) -> float:
    with torch.no_grad():
        _, loss = model(x, y, positions=document_positions(x, model.cfg.sep_token_id))
    return float(loss)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.exists() else None


# =========================================================================== --init-from

def test_init_from_starts_from_the_weights_with_fresh_training_state(data, source, tmp_path):
    src_model, _ = load_model(source)
    seen = {}

    def first_step(trainer):
        if trainer.state.step != 1:
            return
        idx = next(iter(trainer._sampler(0, 0)))                      # the batch step 1 trained on
        x, y = T._collate([trainer.train_ds[i] for i in idx])
        seen["source_loss"] = batch_loss(src_model, x, y)
        seen["step1_loss"] = trainer.state.window["loss_sum"]
        seen["history"] = list(trainer.state.history)
        seen["opt_steps"] = {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
        seen["lr"], seen["cfg"] = trainer.optimizer.param_groups[0]["lr"], trainer.cfg

    summary = run(data, tmp_path / "ft", data["domain"], init_from=source, overrides=dict(max_steps=3),
                  on_step=first_step)
    assert summary["steps"] == 3
    # the first step's loss is the source model's loss on that batch: the run started from its weights
    assert seen["step1_loss"] == pytest.approx(seen["source_loss"], abs=1e-6)
    assert seen["history"] == [] and seen["opt_steps"] == {1}         # empty optimizer, fresh history
    assert seen["lr"] == pytest.approx(C.lr_at(0, seen["cfg"]))       # the schedule from step 0
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    src_meta = torch.load(source, map_location="cpu", weights_only=True)["meta"]
    assert config["init_from"]["kind"] == "checkpoint" and config["init_from"]["step"] == src_meta["step"] == 8
    assert config["init_from"]["path"] == str(source.resolve())
    from common import file_sha256
    assert config["init_from"]["sha256"] == file_sha256(source)
    assert config["model"] == {**src_model.cfg.to_dict(), "dropout": 0.0}


def test_init_from_default_lr_is_the_presets_scaled(data, source, tmp_path):
    over = {k: v for k, v in TINY.items() if k not in ("lr", "warmup_steps")}
    T.train(data["tok"], data["domain"], tmp_path / "ft", "custom", {**over, "max_steps": 2}, quiet=True,
            init_from=source)
    train_cfg = json.loads((tmp_path / "ft" / "config.json").read_text())["train"]
    assert train_cfg["lr"] == pytest.approx(C.PRESETS["small"]["lr"] * C.INIT_FROM_LR_FACTOR)
    assert train_cfg["warmup_fraction"] == C.INIT_FROM_WARMUP_FRACTION


def test_init_from_an_export_equals_init_from_its_checkpoint(data, source, tmp_path):
    import export
    folder = export.export_hf(source, data["tok"], tmp_path / "hf")
    over = dict(max_steps=6, eval_every=3)
    run(data, tmp_path / "a", data["domain"], init_from=source, overrides=over)
    run(data, tmp_path / "b", data["domain"], init_from=folder, overrides=over)
    a, b = weights(tmp_path / "a" / "ckpt_last.pt"), weights(tmp_path / "b" / "ckpt_last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rec = json.loads((tmp_path / "b" / "config.json").read_text())["init_from"]
    assert rec["kind"] == "export" and rec["step"] == 8


def test_init_from_run_resumes_exactly(data, source, tmp_path):
    over = dict(max_steps=10, eval_every=4)
    run(data, tmp_path / "ref", data["domain"], init_from=source, overrides=over)

    def interrupt_at_5(trainer):
        if trainer.state.step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "resumed"
    first = run(data, out, data["domain"], init_from=source, overrides=over, on_step=interrupt_at_5)
    assert first["stopped_reason"] == "interrupted"
    second = run(data, out, data["domain"], overrides=over, resume=True)   # --resume, without --init-from
    assert second["steps"] == 10
    a, b = weights(tmp_path / "ref" / "ckpt_last.pt"), weights(out / "ckpt_last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "config.json").read_text())["init_from"]["sha256"] == \
        json.loads((tmp_path / "ref" / "config.json").read_text())["init_from"]["sha256"]


def test_init_from_refusals_are_one_line_and_change_nothing(data, source, tmp_path, cli):
    other_tok = tmp_path / "other_tok.json"
    tokenizer.train_tokenizer([data["domain"]], vocab_size=512, out_path=other_tok, quiet=True)
    existing = tmp_path / "existing"
    run(data, existing, data["domain"], overrides=dict(max_steps=2))
    not_ckpt = tmp_path / "notes.txt"
    not_ckpt.write_text("no es un modelo", encoding="utf-8")
    base = ["train", "--corpus", data["domain"], "--config", "custom", "--n-layer", "2", "--n-head", "2",
            "--n-embd", "32", "--block-size", "32", "--max-steps", "2"]
    cases = [
        (["--tokenizer", data["tok"], "--outdir", existing, "--init-from", source], "already holds a run"),
        (["--tokenizer", data["tok"], "--outdir", existing, "--init-from", source, "--resume"], "do not go together"),
        (["--tokenizer", data["tok"], "--outdir", tmp_path / "new1", "--init-from", source, "--n-embd", "64"],
         "contradicts"),
        (["--tokenizer", other_tok, "--outdir", tmp_path / "new2", "--init-from", source], "another tokenizer"),
        (["--tokenizer", data["tok"], "--outdir", tmp_path / "new3", "--init-from", not_ckpt], "cannot be loaded"),
        (["--tokenizer", data["tok"], "--outdir", tmp_path / "new4", "--init-from", tmp_path], "not an export"),
    ]
    for extra, words in cases:
        out = Path(extra[extra.index("--outdir") + 1])
        before = snapshot(out)
        proc = cli(*base, *extra)
        assert_user_error(proc)
        assert words in proc.stderr, proc.stderr
        assert snapshot(out) == before, extra                      # nothing created, nothing changed
    proc = cli(*base, "--tokenizer", data["tok"], "--outdir", existing, "--init-from", source, "--force")
    assert proc.returncode == 0, proc.stderr                        # --force starts over there
    assert json.loads((existing / "config.json").read_text())["init_from"]["path"] == str(source.resolve())


# =========================================================================== mixtures

def corpus_windows(data, name, tmp_path):
    store = dataset.load_or_build_token_store(data[name], data["tok"], tmp_path / "cache", quiet=True)
    train_w, val_w, _ = dataset.make_split_windows(store, TINY["block_size"], TINY["block_size"],
                                                   C.DEFAULT_VAL_FRACTION, 1337)
    return store, train_w, val_w


@pytest.mark.parametrize("weights_", [(0.7, 0.3), (0.2, 0.8)])
def test_mixture_token_shares_match_the_weights(data, tmp_path, weights_):
    parts = [corpus_windows(data, name, tmp_path) for name in ("domain", "general")]
    tokens = [w[:, 1] - 1 for _, w, _ in parts]
    counts = dataset.mixture_counts(tokens, list(weights_))
    sampler = dataset.MixtureSampler([len(t) for t in tokens], counts, 4, seed=7)
    offsets = np.cumsum([0] + [len(t) for t in tokens])
    all_tokens = np.concatenate(tokens)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        idx = np.concatenate(list(sampler))
        assert len(idx) == counts.sum()
        per_corpus = [all_tokens[idx[(idx >= lo) & (idx < hi)]].sum() for lo, hi in zip(offsets, offsets[1:])]
        shares = np.array(per_corpus) / sum(per_corpus)
        assert np.abs(shares - np.array(weights_)).max() < 0.02, shares
    # the small corpus is repeated evenly: every window of it appears, none twice before all once
    small = idx[idx < offsets[1]]
    assert len(small) > len(tokens[0]) or weights_[0] < 0.5


def test_mixture_run_resumes_with_the_same_order(data, tmp_path):
    corpus = [f"{data['domain']}:0.6", f"{data['general']}:0.4"]
    over = dict(max_steps=12, eval_every=4, eval_batches=50)
    ref = run(data, tmp_path / "ref", corpus, overrides=over)

    def interrupt_at_6(trainer):
        if trainer.state.step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "resumed"
    assert run(data, out, corpus, overrides=over, on_step=interrupt_at_6)["stopped_reason"] == "interrupted"
    second = run(data, out, corpus, overrides=over)
    assert second["steps"] == 12 and second["tokens_seen"] == ref["tokens_seen"]
    a, b = weights(tmp_path / "ref" / "ckpt_last.pt"), weights(out / "ckpt_last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "ref" / "history.json").read_text())
    hb = json.loads((out / "history.json").read_text())
    assert [(h["step"], h["val_loss_by_corpus"]) for h in ha] == [(h["step"], h["val_loss_by_corpus"]) for h in hb]
    config = json.loads((out / "config.json").read_text())
    assert [c["name"] for c in config["corpora"]] == ["domain", "general"]
    assert [c["weight"] for c in config["corpora"]] == pytest.approx([0.6, 0.4])


def test_per_corpus_validation_equals_scoring_each_split(data, tmp_path):
    corpus = [f"{data['domain']}:0.6", f"{data['general']}:0.4"]
    run(data, tmp_path / "mix", corpus, overrides=dict(max_steps=4, eval_every=4, eval_batches=10_000))
    last = json.loads((tmp_path / "mix" / "history.json").read_text())[-1]
    model, _ = load_model(tmp_path / "mix" / "ckpt_last.pt")
    direct = {}
    for name in ("domain", "general"):          # each corpus's validation split, scored on its own
        store, _, val_w = corpus_windows(data, name, tmp_path)
        ds = dataset.WindowDataset(store, val_w, TINY["block_size"])
        x, y = T._collate([ds[i] for i in range(len(ds))])
        n = int((y != -1).sum())
        direct[name] = (batch_loss(model, x, y), n)
    for name, (loss, _) in direct.items():
        assert last["val_loss_by_corpus"][name] == pytest.approx(loss, rel=1e-5)
    assert last["val_loss"] == pytest.approx(0.6 * direct["domain"][0] + 0.4 * direct["general"][0], rel=1e-5)


def test_select_on_picks_the_best_checkpoint_by_one_corpus(data, tmp_path):
    corpus = [f"{data['domain']}:0.5", f"{data['general']}:0.5"]
    summary = run(data, tmp_path / "sel", corpus, overrides=dict(max_steps=12, eval_every=2, select_on="domain",
                                                                  lr=2e-2, patience=0))
    history = json.loads((tmp_path / "sel" / "history.json").read_text())
    losses = [h["val_loss_by_corpus"]["domain"] for h in history]
    assert summary["best_val_loss"] == pytest.approx(min(losses))
    assert summary["best_step"] == history[int(np.argmin(losses))]["step"]
    best = torch.load(tmp_path / "sel" / "ckpt_best.pt", map_location="cpu", weights_only=True)
    assert best["meta"]["step"] == summary["best_step"]


def test_mixture_refusals(data, tmp_path, cli):
    base = ["train", "--tokenizer", data["tok"], "--config", "custom", "--n-layer", "2", "--n-head", "2",
            "--n-embd", "32", "--block-size", "32", "--max-steps", "2"]
    cases = [
        (["--corpus", f"{data['domain']}:0", data["general"]], "positive number"),
        (["--corpus", f"{data['domain']}:x", data["general"]], "positive number"),
        (["--corpus", data["domain"], data["domain"]], "twice"),
        (["--corpus", data["domain"], "--select-on", "domain"], "several --corpus"),
        (["--corpus", data["domain"], data["general"], "--select-on", "historia"], "not one of the corpora"),
    ]
    for i, (extra, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        proc = cli(*base, *extra, "--outdir", out)
        assert_user_error(proc)
        assert words in proc.stderr, proc.stderr
        assert not out.exists()
    with pytest.raises(UserError, match="changed|differ"):
        corpus = [f"{data['domain']}:0.6", f"{data['general']}:0.4"]
        run(data, tmp_path / "w", corpus, overrides=dict(max_steps=2))
        run(data, tmp_path / "w", [f"{data['domain']}:0.5", f"{data['general']}:0.5"],
            overrides=dict(max_steps=4))                # another mixture is another corpus


def test_report_shows_the_lineage_and_each_corpus(data, source, tmp_path):
    import report
    corpus = [f"{data['domain']}:0.6", f"{data['general']}:0.4"]
    run(data, tmp_path / "mix", corpus, init_from=source, overrides=dict(max_steps=4, eval_every=2))
    page = report.write_report([source.parent, tmp_path / "mix"], tmp_path / "r.html").read_text(encoding="utf-8")
    figure = page[page.index('id="plot-val_by_corpus"'):]
    figure = figure[:figure.index("</figure>")]
    assert "<svg" in figure and "domain" in figure and "general" in figure
    assert "initialised from" in page and str(source.resolve()) in page
    assert "last val loss, domain" in page and "weight 0.6" in page
    one = report.write_report([source.parent], tmp_path / "one.html").read_text(encoding="utf-8")
    assert 'id="plot-val_by_corpus"' not in one and 'id="plot-loss"' in one   # one corpus: no such figure
