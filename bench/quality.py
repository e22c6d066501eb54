"""Held-out quality at equal compute: our training recipe against a transformers Llama, same data and budget.

    .venv/bin/python bench/quality.py [--budget A|B|both] [--only ours|peer|both] [--json]
                                      [--ours-args "--family llama --lr 1e-3"] [--tag NAME]
                                      [--corpus FILE] [--workdir DIR] [--quick]
    .venv/bin/python bench/quality.py --show result.json     # the table of a saved --json result

Protocol (issue 12):
- Data: the documents of --corpus (novelas_es.txt) are split into the last --heldout-docs (20)
  for evaluation and, from the start of the file, the first --train-bytes (30 MB) cut at a
  document boundary for training. The held-out novels are never trained on and never seen by the
  tokenizer. Each held-out novel is cut to its first --heldout-doc-bytes (64 KB, at a line break;
  0 = whole novels) so that one evaluation takes about a minute on 2 cores, not eight.
- Tokenizer: `main.py init-tokenizer --vocab-size 8192` on the training part (cached).
- Ours: `main.py train --config custom --n-layer 6 --n-head 8 --n-embd 256 --block-size 256`
  with everything else our presets' defaults (plus --ours-args, for ablations), then
  `main.py evaluate --stride 256 --json` on the held-out file with ckpt_best.pt.
- Peer: LlamaForCausalLM from a config (hidden 256, 6 layers, 8 heads, intermediate 683, tied
  embeddings), AdamW lr 1e-3, betas (0.9, 0.95), weight decay 0.1 on matrices, fused; warmup 5%
  then cosine to 10% of the peak; batch 16 x 256; clip 1.0; random windows of the same training
  documents ours trains on (our validation split excluded); bf16 autocast where the CPU has
  native bf16, else fp32 (emulated bf16 is 20x slower and would only shrink its budget B).
  Evaluated in this process by evaluation.evaluate_tokens, the code `main.py evaluate` runs, on
  the same token stream, the same windows (stride 256: non-overlapping windows inside each
  document) and the same byte count.
- Budgets: A = --tokens (2.5M) training tokens (targets, i.e. non-padding labels); B = --seconds
  (600) of training wall time: ours by `--time-budget 10m` (evaluations and saves inside it), the
  peer by a step count fitted to a timed calibration of 8 steps, and stopped at the deadline.
- Result: bits per byte (and loss, perplexity) of each, the ratio ours / peer per budget, and
  the targets (<= 0.93 at A, <= 0.90 at B). --json prints one object.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "novelas_es.txt"
QUICK_CORPUS = ROOT / "tests" / "data" / "corpus_es.txt"
DEFAULT_WORKDIR = ROOT / "bench" / ".work" / "quality"
DOC_END = b"<|doc|>\n"                 # corpus format: doc<|doc|>\ndoc<|doc|>\n...
TARGETS = {"A": 0.93, "B": 0.90}       # ours / peer held-out bits per byte, at most
PEER = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1,
            batch_size=16, warmup_fraction=0.05, min_lr_ratio=0.1, clip=1.0)
CALIBRATION_STEPS = 8

DEFAULTS = dict(corpus=str(DEFAULT_CORPUS), train_bytes=30_000_000, heldout_docs=20, heldout_doc_bytes=65536,
                vocab_size=8192, n_layer=6, n_head=8, n_embd=256, block_size=256, tokens=2_500_000, seconds=600.0)
QUICK = dict(corpus=str(QUICK_CORPUS), train_bytes=150_000, heldout_docs=4, heldout_doc_bytes=4096, vocab_size=512,
             n_layer=2, n_head=4, n_embd=64, block_size=64, tokens=20_000, seconds=8.0)


from compare import BenchError, machine_info  # noqa: E402  (bench/ is on sys.path when this runs as a script)


# =========================================================================== data

def split_corpus(path: Path, train_bytes: int, heldout_docs: int, heldout_doc_bytes: int) -> tuple[bytes, bytes, dict]:
    """(training text, held-out text, info), both in corpus format."""
    docs = path.read_bytes().split(DOC_END)
    if docs and not docs[-1].strip():
        docs.pop()
    if len(docs) < heldout_docs + 2:
        raise BenchError(f"{path} has {len(docs)} documents; need more than {heldout_docs + 1} "
                         f"(--heldout-docs {heldout_docs} plus training documents)")
    held, rest = docs[-heldout_docs:], docs[:-heldout_docs]
    train, size = [], 0
    for d in rest:
        if train and size + len(d) + len(DOC_END) > train_bytes:
            break
        train.append(d)
        size += len(d) + len(DOC_END)
    if heldout_doc_bytes:
        held = [cut_at_line(d, heldout_doc_bytes) for d in held]
    info = {"corpus": str(path), "documents": len(docs), "train_documents": len(train), "train_bytes": size,
            "heldout_documents": len(held), "heldout_bytes": sum(len(d) + len(DOC_END) for d in held),
            "heldout_doc_bytes": heldout_doc_bytes or None}
    return b"".join(d + DOC_END for d in train), b"".join(d + DOC_END for d in held), info


def cut_at_line(doc: bytes, n: int) -> bytes:
    """The first n bytes of doc, ending at a line break (so UTF-8 stays whole)."""
    if len(doc) <= n:
        return doc
    cut = doc.rfind(b"\n", 0, n)
    return doc[:cut + 1] if cut > 0 else doc[:n].decode("utf-8", "ignore").encode("utf-8")


def main_py(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python main.py ARGS` with --quiet --json; BenchError with its last lines when it fails."""
    cmd = [sys.executable, str(ROOT / "main.py"), *args, "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise BenchError(f"main.py {args[0]} exited {proc.returncode}: {tail}")
    return proc


def prepare(a, log) -> dict:
    """Training and held-out files and the tokenizer, in a folder named by their content (cached)."""
    source = Path(a.corpus)
    train, held, info = split_corpus(source, a.train_bytes, a.heldout_docs, a.heldout_doc_bytes)
    digest = hashlib.sha256(train + b"\0" + held).hexdigest()[:12]
    folder = Path(a.workdir) / f"data-{digest}-v{a.vocab_size}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"train": folder / "train.txt", "heldout": folder / "heldout.txt", "tokenizer": folder / "tokenizer.json"}
    for key, text in (("train", train), ("heldout", held)):
        if not files[key].exists() or files[key].stat().st_size != len(text):
            tmp = files[key].with_suffix(".tmp")
            tmp.write_bytes(text)
            tmp.replace(files[key])
    if not files["tokenizer"].exists():
        log(f"init-tokenizer: {a.vocab_size:,} tokens on {len(train) / 1e6:.1f} MB ({folder})")
        main_py("init-tokenizer", "--files", str(files["train"]), "--vocab-size", str(a.vocab_size),
                "--out", str(files["tokenizer"]))
    info.update(folder=str(folder), sha256_12=digest, vocab_size=a.vocab_size)
    return {"files": files, "folder": folder, "info": info}


# =========================================================================== ours

def ours_flag(extra: list[str], name: str, default: int) -> int:
    """The value of --name in the extra train flags, else default."""
    for i, arg in enumerate(extra):
        if arg == name and i + 1 < len(extra):
            return int(extra[i + 1])
        if arg.startswith(name + "="):
            return int(arg.split("=", 1)[1])
    return default


INITS = ("scaled", "zero-proj", "plain")


def budget_a_steps(a, extra: list[str]) -> int:
    """Optimizer steps worth --tokens at the batch the extra train flags give."""
    import config
    batch = ours_flag(extra, "--batch-size", config.PRESETS[config.CUSTOM_BASE]["batch_size"])
    return max(2, math.ceil(a.tokens / (batch * ours_flag(extra, "--accumulation-steps", 1) * a.block_size)))


def init_checkpoint(a, data: dict, budget: str, extra: list[str], path: Path) -> list[str]:
    """For --init other than the model's own ("scaled": N(0, 0.02) with residual projections at
    0.02 / sqrt(2 n_layer)), an --activation other than the family's or --untied-head, which no
    train flag sets (the MLP width of an --intermediate-size among the train flags is applied too):
    a step-0 checkpoint at `path` built that way ("zero-proj": the residual projections zeroed;
    "plain": every matrix N(0, 0.02)), and the train flags that start from it with the schedule of
    a fresh run (--init-from would otherwise halve the lr)."""
    import torch
    import config
    from common import atomic_path
    from model import GPT
    from tokenizer import load_identity
    identity = load_identity(data["files"]["tokenizer"])
    shape = {"n_layer": a.n_layer, "n_head": a.n_head, "n_embd": a.n_embd, "block_size": a.block_size}
    family = next((extra[i + 1] for i, x in enumerate(extra[:-1]) if x == "--family"), None)
    mcfg, tcfg = config.make_configs("custom", shape | {"family": family}, vocab_size=identity.vocab_size,
                                     sep_token_id=identity.special["sep"])
    if a.activation:
        mcfg = dataclasses.replace(mcfg, activation=a.activation)
    mcfg = dataclasses.replace(mcfg, tie_embeddings=not a.untied_head,
                               intermediate_size=ours_flag(extra, "--intermediate-size", mcfg.intermediate_size))
    torch.manual_seed(a.seed)
    model = GPT(mcfg)
    with torch.no_grad():
        for block in model.blocks if a.init != "scaled" else ():
            for proj in (block.attn.proj, block.mlp.proj):
                if a.init == "zero-proj":
                    proj.weight.zero_()
                else:
                    proj.weight.normal_(0.0, 0.02)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"version": 2, "model": model.state_dict(), "model_config": mcfg.to_dict(),
                    "meta": {"tokenizer_hash": identity.sha256, "vocab_size": identity.vocab_size, "step": 0}}, tmp)
    flags = ["--init-from", str(path)]
    if "--lr" not in extra:
        flags += ["--lr", f"{tcfg.lr:g}"]
    if budget == "A" and "--warmup-steps" not in extra:  # B: the init-from warmup share, 5% as a fresh run's
        flags += ["--warmup-steps", str(min(config.WARMUP_MAX, int(budget_a_steps(a, extra) * config.WARMUP_FRACTION)))]
    return flags


def train_ours(a, data: dict, budget: str, log) -> dict:
    """`main.py train` at budget A (a step cap worth --tokens) or B (--time-budget), then evaluate."""
    files = data["files"]
    extra = shlex.split(a.ours_args)
    outdir = data["folder"] / "runs" / f"ours-{a.tag}-{budget}"
    if outdir.exists():
        shutil.rmtree(outdir)
    args = ["train", "--tokenizer", str(files["tokenizer"]), "--corpus", str(files["train"]), "--outdir", str(outdir),
            "--config", "custom", "--n-layer", str(a.n_layer), "--n-head", str(a.n_head), "--n-embd", str(a.n_embd),
            "--block-size", str(a.block_size), "--json"]
    if budget == "A":
        args += ["--max-steps", str(budget_a_steps(a, extra))]
    else:
        args += ["--time-budget", f"{a.seconds:g}s"]
    if a.init != "scaled" or a.activation or a.untied_head:
        extra += init_checkpoint(a, data, budget, extra, outdir.parent / f"init-{a.tag}-{budget}.pt")
    log(f"ours, budget {budget}: main.py {' '.join(args[1:2])} ... {' '.join(args[-2:] + extra)}")
    t = time.perf_counter()
    summary = json.loads(main_py(*args, *extra).stdout)
    wall = time.perf_counter() - t
    history = json.loads((outdir / "history.json").read_text(encoding="utf-8"))
    ev = json.loads(main_py("evaluate", "--tokenizer", str(files["tokenizer"]), "--ckpt", str(outdir / "ckpt_best.pt"),
                            "--test-file", str(files["heldout"]), "--stride", str(a.block_size), "--json").stdout)
    cfg = json.loads((outdir / "config.json").read_text(encoding="utf-8"))
    return {"bits_per_byte": ev["bits_per_byte"], "loss": ev["loss"], "perplexity": ev["perplexity"],
            "eval_tokens": ev["tokens"], "eval_bytes": ev["bytes"],
            "train_tokens": summary["tokens_seen"], "steps": history[-1]["step"],
            "train_seconds": summary["elapsed_seconds"], "process_seconds": round(wall, 1),
            "tokens_per_second": summary["tokens_seen"] / summary["elapsed_seconds"],
            "val_loss": min(h["val_loss"] for h in history), "args": args[1:] + extra,
            "params": summary["params"], "family": cfg["model"].get("family", "neox")}


# =========================================================================== peer

def peer_model(a, special: dict, vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(a.seed)
    from config import default_intermediate_size
    lc = LlamaConfig(vocab_size=vocab_size, hidden_size=a.n_embd, intermediate_size=default_intermediate_size("llama", a.n_embd),
                     num_hidden_layers=a.n_layer, num_attention_heads=a.n_head, num_key_value_heads=a.n_head,
                     max_position_embeddings=a.block_size, hidden_act="silu", tie_word_embeddings=True,
                     attention_bias=False, mlp_bias=False, use_cache=False,
                     bos_token_id=special["sep"], eos_token_id=special["eos"], pad_token_id=special["pad"])
    return LlamaForCausalLM(lc)


class PeerScorer(torch.nn.Module):
    """The transformers model behind the interface evaluation.score_documents uses: cfg.block_size,
    cfg.sep_token_id = None (no document packing: transformers has no document mask) and
    token_losses(x, y) = per-token cross-entropy, 0 where y == -1."""

    def __init__(self, hf, block_size: int):
        super().__init__()
        self.hf = hf
        self.cfg = argparse.Namespace(block_size=block_size, sep_token_id=None)

    def token_losses(self, x, y, positions=None):
        logits = self.hf(input_ids=x, use_cache=False).logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), y.clamp(min=0).flatten(), reduction="none").view_as(y)
        return loss.masked_fill(y == -1, 0.0)


def peer_lr(step: int, total: int) -> float:
    """Linear warmup over 5% of the steps, then cosine to 10% of the peak."""
    warmup = max(1, round(PEER["warmup_fraction"] * total))
    if step < warmup:
        return PEER["lr"] * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = PEER["lr"] * PEER["min_lr_ratio"]
    return floor + (PEER["lr"] - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_peer(a, data: dict, stores: dict, budget: str, log) -> dict:
    import numpy as np
    import dataset
    import evaluation
    from precision import cpu_native_bf16
    from tokenizer import load_identity

    identity = load_identity(data["files"]["tokenizer"])
    train_store, held_store = stores["train"], stores["heldout"]
    train_ids, _ = dataset.split_documents(train_store.n_docs, a.val_fraction, a.seed)    # ours' training docs
    ds = train_store.doc_starts
    stream = np.concatenate([np.asarray(train_store.tokens[ds[d]:ds[d + 1]], dtype=np.int64) for d in train_ids])
    T, B = a.block_size, PEER["batch_size"] if not a.quick else 4
    rng = np.random.default_rng(a.seed)
    offsets = np.arange(T + 1)

    def batch():
        starts = rng.integers(0, len(stream) - T - 1, size=B)
        span = torch.from_numpy(stream[starts[:, None] + offsets])                    # (B, T + 1)
        return span[:, :-1], span[:, 1:]

    amp = cpu_native_bf16() is not None
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def make():
        model = peer_model(a, identity.special, identity.vocab_size).train()
        decay = [p for p in model.parameters() if p.dim() >= 2]
        rest = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": PEER["weight_decay"]},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=PEER["lr"], betas=PEER["betas"], eps=1e-8, fused=True)
        return model, opt

    def step(model, opt, lr):
        x, y = batch()
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast():          # our own loss: transformers' `labels` would be shifted once more
            logits = model(input_ids=x, use_cache=False).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), PEER["clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    if budget == "A":
        total = max(2, math.ceil(a.tokens / (B * T)))
        deadline = None
    else:                                               # fit the step count to the clock on a throwaway copy
        model, opt = make()
        t = time.perf_counter()
        for i in range(CALIBRATION_STEPS):
            step(model, opt, PEER["lr"])
        per_step = (time.perf_counter() - t) / CALIBRATION_STEPS
        total = max(2, int(a.seconds / per_step))
        deadline = a.seconds
        del model, opt
    model, opt = make()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"peer, budget {budget}: Llama {n_params:,} parameters, {total} steps of {B} x {T} "
        f"({'bf16 autocast' if amp else 'fp32'})")
    t0 = time.perf_counter()
    done = 0
    for i in range(total):
        loss = step(model, opt, peer_lr(i, total))
        done += 1
        if not math.isfinite(loss):
            raise BenchError(f"the peer's loss became {loss} at step {i}")
        if deadline is not None and time.perf_counter() - t0 >= deadline:
            break
        if done % max(1, total // 10) == 0:
            log(f"  peer step {done}/{total}, loss {loss:.3f}, {done * B * T / (time.perf_counter() - t0):,.0f} tok/s")
    seconds = time.perf_counter() - t0
    ev = evaluation.evaluate_tokens(PeerScorer(model, T), identity.tokenizer, held_store.tokens,
                                    held_store.doc_starts, stride=T, batch_size=16, pad_id=held_store.pad_id,
                                    quiet=True)
    return {"bits_per_byte": ev["bits_per_byte"], "loss": ev["loss"], "perplexity": ev["perplexity"],
            "eval_tokens": ev["tokens"], "eval_bytes": ev["bytes"], "train_tokens": done * B * T, "steps": done,
            "planned_steps": total, "train_seconds": round(seconds, 1), "tokens_per_second": done * B * T / seconds,
            "params": n_params, "precision": "bf16" if amp else "fp32"}


# =========================================================================== report

def build_report(a, data: dict, results: dict, machine: dict) -> dict:
    ratios = {}
    for budget in a.budgets:
        ours, peer = results.get(("ours", budget)), results.get(("peer", budget))
        if ours and peer:
            r = ours["bits_per_byte"] / peer["bits_per_byte"]
            ratios[budget] = {"ratio": r, "target": TARGETS[budget], "ok": r <= TARGETS[budget]}
    return {"machine": machine, "data": data["info"], "tag": a.tag, "ours_args": a.ours_args,
            "budgets": {"A": {"tokens": a.tokens}, "B": {"seconds": a.seconds}},
            "results": {f"{who}.{budget}": r for (who, budget), r in results.items()}, "ratios": ratios}


def print_report(rep: dict) -> None:
    m, d = rep["machine"], rep["data"]
    print(f"held-out quality, {m['date']}, {m['cpu']} ({m['cpus']} CPUs, native bf16: "
          f"{'yes' if m['native_bf16'] else 'no'})")
    print(f"data: {d['train_documents']} training documents ({d['train_bytes'] / 1e6:.1f} MB), "
          f"{d['heldout_documents']} held-out ({d['heldout_bytes'] / 1e6:.2f} MB), vocabulary {d['vocab_size']:,}"
          + (f"; ours with {rep['ours_args']}" if rep["ours_args"] else ""))
    print(f"{'run':<10} {'budget':<14} {'steps':>6} {'train tok':>10} {'tok/s':>7} {'held-out bpb':>13} {'ppl':>8}")
    for key, r in rep["results"].items():
        who, budget = key.split(".")
        spec = f"{rep['budgets']['A']['tokens'] / 1e6:g}M tokens" if budget == "A" \
            else f"{rep['budgets']['B']['seconds']:g} s"
        print(f"{who:<10} {budget + ' ' + spec:<14} {r['steps']:>6} {r['train_tokens']:>10,} "
              f"{r['tokens_per_second']:>7,.0f} {r['bits_per_byte']:>13.4f} {r['perplexity']:>8.2f}")
    for budget, x in rep["ratios"].items():
        print(f"budget {budget}: ours / peer = {x['ratio']:.3f} (target <= {x['target']}: "
              f"{'met' if x['ok'] else 'not met'})")


# =========================================================================== command line

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="defaults (full run): " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items()))
    ap.add_argument("--budget", choices=["A", "B", "both"], default="both")
    ap.add_argument("--only", choices=["ours", "peer", "both"], default="both")
    ap.add_argument("--ours-args", default="", help="extra `main.py train` flags for our run (ablations)")
    ap.add_argument("--init", choices=INITS, default="scaled",
                    help="residual projections at init: scaled (the model's), zero-proj (zeros) or plain (0.02)")
    from config import ACTIVATIONS
    ap.add_argument("--activation", choices=sorted({x for acts in ACTIVATIONS.values() for x in acts}), default=None,
                    help="the MLP's activation, where the family allows it (default: the family's own)")
    ap.add_argument("--untied-head", action="store_true",
                    help="an output head of its own instead of the embedding (for equal parameters, fewer "
                         "layers or a narrower MLP: --n-layer, --ours-args '--intermediate-size N')")
    ap.add_argument("--tag", default=None, help="name of our run folder (default: from --ours-args)")
    ap.add_argument("--quick", action="store_true", help="tiny configuration on the shipped test corpus (tests)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout (progress on stderr)")
    ap.add_argument("--show", metavar="FILE", default=None, help="print the table of a saved --json result, and exit")
    ap.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="cache of the data, tokenizer and runs")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--val-fraction", type=float, default=0.05, help="our training's default")
    for key, value in DEFAULTS.items():
        ap.add_argument("--" + key.replace("_", "-"), type=type(value), default=None,
                        help=f"default {value} ({QUICK.get(key, value)} with --quick)")
    a = ap.parse_args(argv)
    for key, value in DEFAULTS.items():
        if getattr(a, key) is None:
            setattr(a, key, QUICK.get(key, value) if a.quick else value)
    a.budgets = ["A", "B"] if a.budget == "both" else [a.budget]
    a.who = ["ours", "peer"] if a.only == "both" else [a.only]
    if a.tag is None:
        a.tag = hashlib.sha256(a.ours_args.encode()).hexdigest()[:8] if a.ours_args.strip() else "default"
    return a


def run(a, log) -> dict:
    import dataset
    from tokenizer import load_identity
    data = prepare(a, log)
    stores = {}
    if "peer" in a.who:
        identity = load_identity(data["files"]["tokenizer"])
        cache = data["folder"] / "cache"
        stores = {k: dataset.load_or_build_token_store(data["files"][k], identity, cache, quiet=True)
                  for k in ("train", "heldout")}
    results = {}
    for budget in a.budgets:
        for who in a.who:
            r = train_ours(a, data, budget, log) if who == "ours" else train_peer(a, data, stores, budget, log)
            log(f"{who}, budget {budget}: held-out {r['bits_per_byte']:.4f} bits per byte "
                f"(perplexity {r['perplexity']:.2f}) after {r['train_tokens']:,} tokens, {r['tokens_per_second']:,.0f} tok/s")
            results[(who, budget)] = r
    return build_report(a, data, results, machine_info())


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.show:
        print_report(json.loads(Path(a.show).read_text(encoding="utf-8")))
        return 0
    if not Path(a.corpus).is_file():
        sys.stderr.write(f"error: corpus {a.corpus} not found; pass --corpus FILE (a corpus made by "
                         f"'main.py prepare-corpus')\n")
        return 2
    from compare import need_transformers
    need_transformers()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from common import tune_allocator
    tune_allocator()        # the peer trains in this process under the allocator main.py gives ours
    try:
        rep = run(a, log)
    except BenchError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    if a.json:
        print(json.dumps(rep))
    else:
        print_report(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
