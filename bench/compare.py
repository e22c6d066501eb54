"""Our training, generation and evaluation speed against Hugging Face transformers, same machine, same data.

    .venv/bin/python bench/compare.py [--quick] [--json] [--rounds 3] [--train-steps 20]
                                      [--corpus FILE] [--workdir DIR] [--threads N]
    .venv/bin/python bench/compare.py --show result.json     # the table of a saved --json result

Models. Ours (model.GPT) at 6 layers, 8 heads, width 256, block 256, vocabulary 8,000 (6.8M
parameters), and two transformers models: GPTNeoXForCausalLM built from our weights
(export.hf_config / export.hf_state_dict: the same function, checked here on real text) and a
parameter-matched LlamaForCausalLM (same width, depth and heads, SwiGLU intermediate size chosen
so the parameter count is within 2% of ours, tied embeddings). Nothing is downloaded.

Data. The first --corpus-bytes (3 MB) of --corpus cut at a document boundary, a byte-level BPE
with our tokenizer code (tokenizer.train_tokenizer, as `main.py init-tokenizer`), and our token
store; all cached in --workdir (bench/.work by default, ignored by git).

What is timed, in rounds (ours, then each transformers variant, round after round; the median of
the rounds is reported):
- training: OUR REAL PATH, `python main.py train ... --max-steps N` in a subprocess (data loading,
  document-aware windows, an evaluation with checkpoint saves every N/4 steps), read from its
  history.json. Two figures: "optimizer steps" = tokens / seconds inside optimizer_step (the
  history's per-window tokens_per_second), and "whole loop" = tokens_seen / elapsed_seconds
  between the first and the last evaluation (data loading, evaluations, sample, saves included).
  Both leave out the first evaluation window (warm-up). Against: the transformers `Trainer`
  (what run_clm.py users get: same batch, Trainer's default AdamW (fused in transformers 5), cosine,
  weight decay, clip 1.0, no evaluation, no logging, no saving; our training windows in random
  order) and a hand-written loop (torch.optim.AdamW(fused=True), clip 1.0, the same windows),
  each for GPT-NeoX and Llama, both timed over the steps after the same warm-up.
  The targets use the optimizer-steps figure. fp32 always; bf16 autocast only where the CPU has
  native bf16 (precision.cpu_native_bf16()), else the bf16 rows are skipped and the report says so.
- generation: greedy, --new-tokens (200) new tokens from short prompts of held-out text, batch 1
  and batch 8; ours through generation.generate_batch (the decoding loop of `main.py generate`)
  on the model loaded and set up as the generate stage does (checkpoint.load_model of the trained
  run, inference.resolve_precision_for and inference.prepare): `--precision fp32`, `--precision
  auto` (where its measured choice is not fp32), `--quantize int8` and, unless --no-compile,
  `--quantize int8 --compile` (its compilation, in the untimed warm-up, is reported apart);
  against `model.generate(do_sample=False, max_new_tokens=N, min_new_tokens=N)` with the same
  weights, in float32 (what a transformers user gets by default) and, where the CPU has
  native bf16, cast to bfloat16. End-of-text stopping is off on both sides, so both produce
  exactly N tokens; the report says whether the greedy tokens agree over the first 20 (ours fp32
  against transformers, and each of our half-precision settings against our fp32). The batch-1
  target is checked on our fastest CLI settings (int8, eager and compiled) over transformers
  fp32; every other pairing is in the table too.
- evaluation: evaluation.evaluate_tokens over held-out text (the validation documents of the
  training split) with stride = block size, batch 16, ours at --precision fp32 and auto and with
  --quantize int8, against a plain loop of model(input_ids, labels=input_ids) under
  torch.no_grad over the same non-overlapping windows (float32, and bfloat16 where the CPU has it
  natively). The target is checked on auto and int8 (the losses of every side are reported).
- MFU: our training FLOP/s (6N + 12 L C T per token, N with the tied embedding counted once, as
  bench/bench_train.py) as a fraction of a 2048 x 2048 fp32 matmul timed in the same run. Beside
  the training and evaluation targets: the fraction of that peak ours would need to reach them
  (forward only, 2N + 4 L C T per token, for evaluation); above 100% a target is out of reach.

--json prints one object: machine, config, rows, ratios (with targets and pass/fail), checks.
--quick is a tiny configuration (seconds, for tests/test_compare.py) on the shipped test corpus.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.util
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "novelas_es.txt"
QUICK_CORPUS = ROOT / "tests" / "data" / "corpus_es.txt"
DEFAULT_WORKDIR = ROOT / "bench" / ".work"
SEPARATOR_LINE = b"\n<|doc|>\n"          # corpus format: doc<|doc|>\ndoc<|doc|>\n...
AGREE_TOKENS = 20                        # greedy tokens compared between ours and transformers
LLAMA_MATCH = 0.02                       # the Llama model's parameters within 2% of ours
PEAK_N = 2048                            # the matmul that stands for the CPU's fp32 peak

# The goals beside each ratio (ours / theirs unless said otherwise).
TARGETS = {
    "train.fp32.vs_hf_loop": 1.3, "train.fp32.vs_trainer": 1.5,
    "train.bf16.vs_hf_loop": 1.5, "train.bf16.vs_trainer": 1.5,
    "train.fp32.mfu": 0.65,
    "generate.b1.vs_hf": 3.0, "generate.ours_b8_over_b1": 4.0,
    "evaluate.vs_hf": 2.0,
}

# Full and quick configurations; every key is also a command-line option.
DEFAULTS = dict(corpus=str(DEFAULT_CORPUS), corpus_bytes=3_000_000, vocab_size=8000, n_layer=6, n_head=8,
                n_embd=256, block_size=256, batch_size=8, train_steps=20, eval_batches=4, rounds=5,
                new_tokens=200, prompt_tokens=8, gen_batch=8, eval_tokens=16384, eval_batch=16, lr=5e-4)
QUICK = dict(corpus=str(QUICK_CORPUS), corpus_bytes=200_000, vocab_size=512, n_layer=2, n_head=4, n_embd=64,
             block_size=64, batch_size=4, train_steps=4, eval_batches=2, rounds=1, new_tokens=24,
             prompt_tokens=6, gen_batch=8, eval_tokens=1024, eval_batch=16)


class BenchError(Exception):
    """A problem to report as one line (missing corpus, a failed training run)."""


def need_transformers():
    try:
        import transformers
    except ImportError:
        sys.stderr.write(f"error: bench/{Path(sys.argv[0]).name} needs transformers (a test/benchmark dependency): "
                         ".venv/bin/pip install -r requirements-dev.txt\n")
        sys.exit(2)
    transformers.logging.set_verbosity_error()
    return transformers


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# =========================================================================== machine

def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("model name", "cpu model", "hardware"):
                return value.strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch
    import transformers
    from precision import cpu_native_bf16
    acc = importlib.util.find_spec("accelerate")
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "native_bf16": cpu_native_bf16() is not None, "native_bf16_feature": cpu_native_bf16(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": __import__("accelerate").__version__ if acc else None,
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_average_start": os.getloadavg()[0]}


def matmul_peak(n: int = PEAK_N, seconds: float = 1.5) -> float:
    """FLOP/s of an n x n fp32 matmul (the best of repeated runs over `seconds`)."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


# =========================================================================== data

@dataclass
class Data:
    corpus: Path              # the slice, in the work folder
    tokenizer: Path
    identity: object          # tokenizer.TokenizerIdentity
    store: object             # dataset.TokenStore of the slice
    train_windows: object     # dataset.WindowDataset (our training split)
    eval_stream: object       # np.ndarray: SEP doc ... SEP of held-out documents, eval_tokens + 1 long
    eval_doc_starts: object   # np.ndarray: the SEP positions of eval_stream, then its last index
    info: dict = field(default_factory=dict)


def corpus_slice(path: Path, max_bytes: int) -> bytes:
    """The first documents of `path` within `max_bytes`, ending after a separator line (or, for a
    first document longer than that, at the last line break)."""
    with open(path, "rb") as f:
        head = f.read(max_bytes + 1)
    if len(head) <= max_bytes:
        return head
    cut = head.rfind(SEPARATOR_LINE, 0, max_bytes - len(SEPARATOR_LINE) + 1)
    if cut >= 0:
        return head[:cut + len(SEPARATOR_LINE)]
    cut = head.rfind(b"\n", 0, max_bytes)
    if cut < 0:
        raise BenchError(f"{path}: no line break in the first {max_bytes:,} bytes; pass a corpus made by "
                         f"'main.py prepare-corpus'")
    return head[:cut + 1] + b"<|doc|>\n"


def check_corpus(path: str) -> Path:
    source = Path(path)
    if not source.is_file():
        hint = " (../shared/corpora is not there)" if source == DEFAULT_CORPUS else ""
        raise BenchError(f"corpus {source} not found{hint}; pass --corpus FILE (a corpus made by "
                         f"'main.py prepare-corpus')")
    return source


def prepare_data(a, log) -> Data:
    """Corpus slice, tokenizer (trained once, cached by the slice's hash and the vocabulary size),
    token store, our training windows and the held-out evaluation text."""
    import numpy as np
    import dataset
    import tokenizer as tokenizer_lib

    source = check_corpus(a.corpus)
    text = corpus_slice(source, a.corpus_bytes)
    digest = hashlib.sha256(text).hexdigest()[:12]
    folder = Path(a.workdir) / f"data-{digest}-v{a.vocab_size}"
    folder.mkdir(parents=True, exist_ok=True)
    corpus, tok = folder / "corpus.txt", folder / "tokenizer.json"
    if not corpus.exists() or corpus.read_bytes() != text:
        corpus.write_bytes(text)
    if not tok.exists():
        log(f"training a {a.vocab_size:,}-token BPE on {len(text) / 1e6:.1f} MB of {source.name} "
            f"(cached in {folder})")
        tokenizer_lib.train_tokenizer([corpus], vocab_size=a.vocab_size, out_path=tok, quiet=True)
    identity = tokenizer_lib.load_identity(tok)
    store = dataset.load_or_build_token_store(corpus, identity, folder / "cache", quiet=True)
    train_w, val_w, _ = dataset.make_split_windows(store, a.block_size, a.block_size, a.val_fraction, a.seed)
    _, val_ids = dataset.split_documents(store.n_docs, a.val_fraction, a.seed)
    if len(val_ids) == 0:
        raise BenchError(f"the corpus slice has {store.n_docs} document(s): too few to hold one out; "
                         f"raise --corpus-bytes")

    # held-out text: the validation documents (SEP + text each), cut to whole windows, closed by a SEP
    ds = store.doc_starts
    held = np.concatenate([np.asarray(store.tokens[ds[d]:ds[d + 1]], dtype=np.int64) for d in val_ids])
    n = min(a.eval_tokens, len(held) - 1) // a.block_size * a.block_size
    if n < a.block_size:
        raise BenchError(f"the held-out documents have {len(held)} tokens, less than one window of "
                         f"{a.block_size}; raise --corpus-bytes")
    stream = np.concatenate([held[:n], [store.sep_id]])
    doc_starts = np.concatenate([np.flatnonzero(stream[:n] == store.sep_id), [n]]).astype(np.int64)
    info = {"corpus": str(source), "slice_bytes": len(text), "slice_sha256_12": digest, "documents": store.n_docs,
            "tokens": len(store), "train_windows": len(train_w), "held_out_documents": len(val_ids),
            "eval_tokens": n, "tokenizer": str(tok), "vocab_size": identity.vocab_size}
    return Data(corpus, tok, identity, store, dataset.WindowDataset(store, train_w, a.block_size),
                stream, doc_starts, info)


# =========================================================================== models

def our_config(a, vocab_size: int):
    from model import ModelConfig
    return ModelConfig(vocab_size=vocab_size, block_size=a.block_size, n_layer=a.n_layer, n_head=a.n_head,
                       n_embd=a.n_embd, sep_token_id=0)


def hf_neox(ours, special: dict):
    """transformers GPTNeoXForCausalLM with exactly our weights (export.py's mapping)."""
    import export
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    hf = GPTNeoXForCausalLM(GPTNeoXConfig(**export.hf_config(ours.cfg, special)))
    missing, unexpected = hf.load_state_dict(export.hf_state_dict(ours), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight", "embed_out.weight"}, (missing, unexpected)
    hf.tie_weights()
    return hf.train(ours.training)


def llama_intermediate(cfg) -> int:
    """SwiGLU width (a multiple of 8) that brings a Llama of our width, depth and heads, with tied
    embeddings and no biases, closest to our parameter count."""
    C, L = cfg.n_embd, cfg.n_layer
    fixed = cfg.vocab_size * C + C + L * (4 * C * C + 2 * C)   # embedding, final norm, attention, norms
    per_unit = 3 * C * L                                       # gate, up, down per intermediate unit
    return max(8, round((cfg.num_parameters() - fixed) / per_unit / 8) * 8)


def hf_llama(cfg, special: dict, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    lc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=llama_intermediate(cfg),
                     num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
                     max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
                     rope_theta=cfg.rope_base,
                     rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
                     tie_word_embeddings=True, attention_bias=False, mlp_bias=False, use_cache=False,
                     bos_token_id=special["sep"], eos_token_id=special["eos"], pad_token_id=special["pad"])
    return LlamaForCausalLM(lc)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())   # a tied tensor is yielded once


def logits_check(ours, hf, stream, T: int) -> float:
    """Max |logit difference| between ours and the GPT-NeoX model on two windows of held-out text."""
    import torch
    sep = int(stream[0])
    text = stream[stream != sep]     # one document per row (transformers has no document mask): SEP + text
    rows = [[sep] + text[i * (T - 1):(i + 1) * (T - 1)].tolist() for i in range(min(2, len(text) // (T - 1)))]
    x = torch.tensor(rows, dtype=torch.long)
    was = ours.training, hf.training
    ours.eval(), hf.eval()
    with torch.no_grad():
        want, _ = ours(x)
        got = hf(input_ids=x).logits
    ours.train(was[0]), hf.train(was[1])
    return float((got - want).abs().max())


# =========================================================================== training

def lr_schedule(a):
    import config
    cfg = config.TrainConfig(lr=a.lr, max_steps=a.train_steps, batch_size=a.batch_size)
    return config.resolve_schedule(cfg, steps_per_epoch=a.train_steps)


def train_ours(a, data: Data, precision: str, outdir: Path, threads_env: dict) -> dict:
    """`python main.py train` for --train-steps steps; tokens/s from its history.json."""
    if outdir.exists():
        shutil.rmtree(outdir)
    (outdir / "cache").mkdir(parents=True)
    shutil.copy2(data.store.path, outdir / "cache" / data.store.path.name)   # tokenized once, as a re-run would
    cmd = [sys.executable, str(ROOT / "main.py"), "train", "--tokenizer", str(data.tokenizer),
           "--corpus", str(data.corpus), "--outdir", str(outdir), "--config", "custom",
           "--n-layer", str(a.n_layer), "--n-head", str(a.n_head), "--n-embd", str(a.n_embd),
           "--block-size", str(a.block_size), "--batch-size", str(a.batch_size), "--lr", str(a.lr),
           "--family", "neox", "--optimizer", "adamw",      # GPT-NeoX with AdamW, as the transformers side
           "--max-steps", str(a.train_steps), "--eval-every", str(a.eval_every),
           "--eval-batches", str(a.eval_batches), "--val-fraction", str(a.val_fraction), "--seed", str(a.seed),
           "--precision", precision, "--quiet", "--json"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **threads_env}, cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise BenchError(f"main.py train exited {proc.returncode}: {tail}")
    history = json.loads((outdir / "history.json").read_text(encoding="utf-8"))
    if len(history) < 2:
        raise BenchError(f"main.py train wrote {len(history)} evaluation(s); need 2 (raise --train-steps)")
    later = history[1:]                               # the first window holds the warm-up steps
    tokens = later[-1]["tokens_seen"] - history[0]["tokens_seen"]
    step_seconds = sum((e["tokens_seen"] - p["tokens_seen"]) / e["tokens_per_second"]
                       for p, e in zip(history, later))
    loop_seconds = later[-1]["elapsed_seconds"] - history[0]["elapsed_seconds"]
    summary = json.loads(proc.stdout)
    return {"step": tokens / step_seconds, "loop": tokens / loop_seconds,
            "process_wall_seconds": wall, "steps_timed": later[-1]["step"] - history[0]["step"],
            "end_to_end": summary["tokens_seen"] / summary["elapsed_seconds"]}


class _HFWindows:
    """Our training windows as transformers examples: labels = input_ids, padding -> -100.
    Counts the target tokens handed out (our definition of a training token)."""

    def __init__(self, windows):
        self.windows = windows
        self.tokens = 0

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i):
        x, y = self.windows[int(i)]                    # (T,), (T,); y == -1 where x is padding
        self.tokens += int((y != -1).sum())
        return {"input_ids": x, "labels": x.masked_fill(y == -1, -100)}


def train_hf_trainer(model, data: Data, a, amp: bool, workdir: Path) -> float:
    """transformers Trainer as run_clm.py sets it up; tokens/s over the steps after the warm-up."""
    from transformers import Trainer, TrainerCallback, TrainingArguments
    sched = lr_schedule(a)
    examples = _HFWindows(data.train_windows)
    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), examples.tokens))

    args = TrainingArguments(
        output_dir=str(workdir / "hf-trainer"), per_device_train_batch_size=a.batch_size, max_steps=a.train_steps,
        learning_rate=a.lr, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=sched.warmup_steps, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=True, bf16=amp, dataloader_num_workers=0, seed=a.seed)
    trainer = Trainer(model=model, args=args, train_dataset=examples, callbacks=[Clock()])
    trainer.train()
    (t0, k0), (t1, k1) = marks[a.eval_every - 1], marks[-1]
    return (k1 - k0) / (t1 - t0)


def train_hf_loop(model, data: Data, a, amp: bool) -> float:
    """A hand-written loop: fused AdamW (decay on matrices), our lr schedule, clip 1.0, the same
    windows in a random order; tokens/s over the steps after the warm-up."""
    import numpy as np
    import torch
    from config import lr_at
    sched = lr_schedule(a)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    order = np.random.default_rng(a.seed).permutation(len(data.train_windows))
    order = np.resize(order, a.train_steps * a.batch_size)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    t0 = tokens = None
    for step in range(a.train_steps):
        if step == a.eval_every:                       # the warm-up steps are not timed
            t0, tokens = time.perf_counter(), 0
        items = [data.train_windows[int(i)] for i in order[step * a.batch_size:(step + 1) * a.batch_size]]
        x = torch.stack([it[0] for it in items])       # (B, T)
        y = torch.stack([it[1] for it in items])       # (B, T)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, sched)
        with autocast():
            loss = model(input_ids=x, labels=x.masked_fill(y == -1, -100), use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if tokens is not None:
            tokens += int((y != -1).sum())
    return tokens / (time.perf_counter() - t0)


def bench_training(a, data: Data, precision: str, log) -> tuple[dict, dict]:
    """All training variants in `precision`, alternating round by round: {variant: [tok/s per round]}."""
    import torch
    from model import GPT
    cfg = our_config(a, data.identity.vocab_size)
    special = data.identity.special
    amp = precision == "bf16"
    threads_env = {"OMP_NUM_THREADS": str(a.threads)} if a.threads else {}
    trainer_ok = importlib.util.find_spec("accelerate") is not None
    results: dict[str, list] = {}
    extra: dict[str, list] = {"ours_loop": [], "ours_end_to_end": [], "ours_process_wall_seconds": []}

    def fresh_neox():
        torch.manual_seed(a.seed)
        return hf_neox(GPT(cfg).train(), special)

    variants = [("ours", None)]
    for arch, build in (("neox", fresh_neox), ("llama", lambda: hf_llama(cfg, special, a.seed))):
        if trainer_ok:
            variants.append((f"hf_trainer_{arch}", build))
        variants.append((f"hf_loop_{arch}", build))
    for r in range(a.rounds):
        for name, build in variants:
            if name == "ours":
                out = train_ours(a, data, precision, Path(a.workdir) / "runs" / f"ours-{precision}-r{r}", threads_env)
                value = out["step"]
                extra["ours_loop"].append(out["loop"])
                extra["ours_end_to_end"].append(out["end_to_end"])
                extra["ours_process_wall_seconds"].append(out["process_wall_seconds"])
            else:
                model = build()
                with contextlib.redirect_stdout(io.StringIO()):   # the Trainer prints its metrics
                    value = (train_hf_trainer(model, data, a, amp, Path(a.workdir)) if "trainer" in name
                             else train_hf_loop(model, data, a, amp))
                del model
            results.setdefault(name, []).append(value)
            log(f"  train {precision} round {r + 1}/{a.rounds}: {name:<17} {value:10,.0f} tok/s")
    notes = {} if trainer_ok else {"hf_trainer": "skipped: the transformers Trainer needs accelerate>=1.1 "
                                                 "(.venv/bin/pip install accelerate)"}
    return {**results, **extra}, notes


# =========================================================================== generation

def gen_prompts(data: Data, n: int, length: int) -> list[list[int]]:
    """n prompts of `length` tokens from the held-out text: the SEP (BOS), then text tokens
    taken at n places spread over it (the first at the start of a document)."""
    stream, sep = data.eval_stream, data.store.sep_id
    step = max(1, (len(stream) - length - 1) // n)
    prompts = []
    for i in range(n):
        window = stream[1 + i * step:1 + i * step + 4 * length]
        body = [int(t) for t in window if t != sep][:length - 1]
        prompts.append([sep] + body)
    return prompts


def gen_ours(side, prompts, n: int, pad_id: int) -> tuple[float, list[list[int]]]:
    """generation.generate_batch, greedy, no stop tokens, in the side's context: (seconds, new ids per row)."""
    import generation as G
    cfg = G.SamplingConfig(temperature=0.0, top_k=0, top_p=1.0)
    t = time.perf_counter()
    with side.context():
        steps = list(G.generate_batch(side.model, prompts, n, cfg, stop_ids=(), pad_id=pad_id,
                                      compile=side.compile))
    seconds = time.perf_counter() - t
    assert len(steps) == n
    return seconds, [list(col) for col in zip(*steps)]


def gen_hf(side, prompts, n: int, pad_id: int) -> tuple[float, list[list[int]]]:
    """transformers generate(), greedy, exactly n new tokens: (seconds, new ids per row)."""
    import torch
    model = side.model
    ids = torch.tensor(prompts, dtype=torch.long)      # prompts of one length: no padding
    t = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         min_new_tokens=n, pad_token_id=pad_id, use_cache=True)
    seconds = time.perf_counter() - t
    assert out.shape[1] == ids.shape[1] + n
    return seconds, out[:, ids.shape[1]:].tolist()


def agreement(a_rows, b_rows, k: int) -> dict:
    """How many rows agree on their first k tokens, and where the first row first differs."""
    same = sum(x[:k] == y[:k] for x, y in zip(a_rows, b_rows))
    first = next((i for i, (s, t) in enumerate(zip(a_rows[0], b_rows[0])) if s != t), None)
    return {"rows": len(a_rows), "rows_agreeing_first_k": same, "k": k, "first_difference_row0": first}


def bench_generation(a, sides: dict, data: Data, log) -> tuple[dict, dict]:
    """`sides`: {batch key: {side name: Side}}, ours ("ours...") and transformers ("hf..."),
    timed in turn, round after round: ({"<key>.<side>": [tok/s per round]}, greedy checks and the
    seconds of the untimed warm-up of each compiled side, its compilation)."""
    pad = data.store.pad_id
    prompts = gen_prompts(data, a.gen_batch, a.prompt_tokens)
    batches = {"b1": prompts[:1], f"b{a.gen_batch}": prompts}
    compile_seconds = {}
    for key, p in batches.items():                      # untimed warm-up of every side
        for name, side in sides[key].items():
            t = time.perf_counter()
            side.generate(side, p, 4, pad)
            if side.compile:
                compile_seconds[f"{key}.{name}"] = round(time.perf_counter() - t, 1)
                log(f"  generate: {key} {name} compiled in {compile_seconds[f'{key}.{name}']:.1f} s")
    results, outputs = {}, {}
    for r in range(a.rounds):
        for key, p in batches.items():
            for name, side in sides[key].items():
                seconds, rows = side.generate(side, p, a.new_tokens, pad)
                value = len(p) * a.new_tokens / seconds
                results.setdefault(f"{key}.{name}", []).append(value)
                outputs[(key, name)] = rows
                log(f"  generate round {r + 1}/{a.rounds}: {key} {name:<12} {value:10,.1f} tok/s")
    k = min(AGREE_TOKENS, a.new_tokens)
    checks = {key: agreement(outputs[(key, "ours")], outputs[(key, "hf_neox")], k) for key in batches}
    for key in batches:                                 # our half-precision sides against our fp32
        for name in sides[key]:
            if name.startswith("ours_"):
                checks[f"{key}.{name}_vs_fp32"] = agreement(outputs[(key, name)], outputs[(key, "ours")], k)
    return results, checks, compile_seconds


# =========================================================================== evaluation

def eval_ours(side, data: Data, a) -> tuple[float, float]:
    """evaluation.evaluate_tokens (the evaluate stage's scoring) with stride = block size, in the
    side's precision: (tok/s, loss)."""
    import evaluation
    t = time.perf_counter()
    res = evaluation.evaluate_tokens(side.model, data.identity.tokenizer, data.eval_stream, data.eval_doc_starts,
                                     stride=a.block_size, batch_size=a.eval_batch, precision=side.precision,
                                     pad_id=data.store.pad_id, quiet=True)
    return res["tokens"] / (time.perf_counter() - t), res["loss"]


def eval_hf(side, data: Data, a) -> tuple[float, float]:
    """A plain transformers loop: model(input_ids, labels=input_ids) over the non-overlapping
    windows of the held-out text, batch eval_batch, under no_grad: (tok/s, loss)."""
    import torch
    T, stream, model = a.block_size, data.eval_stream, side.model
    n_win = (len(stream) - 1) // T
    model.eval()
    total, t = 0.0, time.perf_counter()
    with torch.no_grad():
        for b0 in range(0, n_win, a.eval_batch):
            x = torch.tensor(stream[b0 * T:min(n_win, b0 + a.eval_batch) * T], dtype=torch.long).view(-1, T)
            total += float(model(input_ids=x, labels=x).loss) * x.shape[0]
    return n_win * T / (time.perf_counter() - t), total / n_win


def bench_evaluation(a, sides: dict, data: Data, log) -> tuple[dict, dict]:
    results, losses = {}, {}
    for r in range(a.rounds):
        for name, side in sides.items():
            value, loss = side.evaluate(side, data, a)
            results.setdefault(name, []).append(value)
            losses[name] = loss
            log(f"  evaluate round {r + 1}/{a.rounds}: {name:<12} {value:10,.0f} tok/s (loss {loss:.4f})")
    return results, {**{f"loss_{name}": loss for name, loss in losses.items()},
                     "note": "ours scores every target of each document (its closing SEP included), "
                             "transformers the T-1 shifted targets of each window: the losses differ slightly"}


# =========================================================================== the sides of generation and evaluation

@dataclass
class Side:
    """One contestant of the generation and evaluation rounds: a model, how it generates and
    evaluates, the context it runs in, its precision (ours: for evaluate_tokens) and a label."""
    model: object
    generate: object
    evaluate: object
    label: str
    context: object = contextlib.nullcontext
    precision: object = None
    compile: bool = False          # ours: generate --compile (a compiled decoding step)


def our_side(ckpt: Path, data: Data, precision: str, quantize, rows: int, *, weight_only: bool,
             compile: bool = False) -> Side:
    """Ours as the generate (weight_only) or evaluate stage loads and sets it up (checkpoint.load_model,
    inference.resolve_precision_for with `rows` per pass, inference.prepare); `compile`: as
    generate --compile, a model of its own (its compiled step keeps its cache)."""
    import torch
    import inference
    from checkpoint import load_model
    cpu = torch.device("cpu")
    model, _ = load_model(ckpt, cpu, data.identity)
    prec = inference.resolve_precision_for(precision, cpu, quantize, n_embd=model.cfg.n_embd,
                                           vocab_size=model.cfg.vocab_size, rows=rows,
                                           inference_layers=model.cfg.n_layer)
    context = inference.prepare(model, prec, quantize, weight_only=weight_only)
    int8_rows = not weight_only and any(getattr(m, "int8_rows", False) for m in model.modules())
    label = f"--quantize {quantize} ({quantize} weights, {'int8' if int8_rows else prec.name} matmuls)" \
        if quantize else f"--precision {precision} ({prec.name})"
    return Side(model, gen_ours, eval_ours, label + (" --compile" if compile else ""), context,
                prec if prec.dtype is not None else None, compile)


def hf_side(hf, dtype_name: str) -> Side:
    """transformers with our weights, as a user runs it: float32, or the model cast to bfloat16."""
    import copy
    import torch
    model = hf if dtype_name == "fp32" else copy.deepcopy(hf).to(torch.bfloat16)
    return Side(model.eval(), gen_hf, eval_hf, dtype_name)


def inference_sides(a, ckpt: Path, hf, data: Data, native_bf16: bool) -> tuple[dict, dict]:
    """({batch key: {side: Side}} for generation, {side: Side} for evaluation). Ours in fp32,
    at --precision auto (where the measured choice for that shape is not fp32), with --quantize
    int8 and, unless --no-compile, with --quantize int8 --compile (generation); transformers in
    fp32 and, where the CPU has native bf16, in bf16."""
    gen = {}
    for key, rows in (("b1", 1), (f"b{a.gen_batch}", a.gen_batch)):
        sides = {"ours": our_side(ckpt, data, "fp32", None, rows, weight_only=True)}
        auto = our_side(ckpt, data, "auto", None, rows, weight_only=True)
        if auto.precision is not None:
            sides["ours_auto"] = auto
        sides["ours_int8"] = our_side(ckpt, data, "auto", "int8", rows, weight_only=True)
        if a.compile:
            sides["ours_int8_compiled"] = our_side(ckpt, data, "auto", "int8", rows, weight_only=True,
                                                   compile=True)
        sides["hf_neox"] = hf_side(hf, "fp32")
        if native_bf16:
            sides["hf_neox_bf16"] = hf_side(hf, "bf16")
        gen[key] = sides
    rows = a.eval_batch * a.block_size
    ev = {"ours": our_side(ckpt, data, "fp32", None, rows, weight_only=False)}
    auto = our_side(ckpt, data, "auto", None, rows, weight_only=False)
    if auto.precision is not None:
        ev["ours_auto"] = auto
    ev["ours_int8"] = our_side(ckpt, data, "auto", "int8", rows, weight_only=False)
    ev["hf_neox"] = hf_side(hf, "fp32")
    if native_bf16:
        ev["hf_neox_bf16"] = hf_side(hf, "bf16")
    return gen, ev


# =========================================================================== report

STEP_ROWS = ("ours", "hf_trainer_neox", "hf_loop_neox", "hf_trainer_llama", "hf_loop_llama")  # MFU shown
LABELS = {
    "ours": "ours: main.py train, optimizer steps",
    "ours_loop": "ours: main.py train, whole loop (data, evals, saves)",
    "ours_end_to_end": "ours: main.py train, all tokens / elapsed (setup, warm-up, evals)",
    "hf_trainer_neox": "transformers Trainer, GPT-NeoX (our weights)",
    "hf_loop_neox": "hand loop, fused AdamW, GPT-NeoX (our weights)",
    "hf_trainer_llama": "transformers Trainer, Llama (matched params)",
    "hf_loop_llama": "hand loop, fused AdamW, Llama (matched params)",
}


def build_report(a, machine, data: Data, shapes: dict, peak: float, train: dict, gen: dict, gen_checks: dict,
                 ev: dict, ev_checks: dict, notes: dict) -> dict:
    """Rows (median tok/s of the rounds) and ratios. A ratio is the median of the per-round ratios
    (ours and theirs of the same round ran back to back, so a slow spell of the machine shows in
    both), with the round-by-round values kept beside it."""
    rows, ratios = [], []
    flops = shapes["flops_per_token"]

    def row(rid, section, label, values, **kw):
        rows.append({"id": rid, "section": section, "label": label, "tokens_per_second": median(values),
                     "rounds": values, **kw})

    def ratio(rid, label, ours, theirs, target_id=None, flops_per_token=None):
        """ours / theirs (lists, one value per round) against its target; with the FLOPs per token,
        also the fraction of the matmul peak ours would need to reach the target (> 1: out of reach)."""
        per_round = [o / t for o, t in zip(ours, theirs)]
        value = median(per_round)
        target = TARGETS.get(target_id) if target_id else None
        needs = target * median(theirs) * flops_per_token / peak if target and flops_per_token else None
        ratios.append({"id": rid, "label": label, "value": value, "rounds": per_round, "target": target,
                       "pass": None if target is None else bool(value >= target), "needs_peak_fraction": needs})

    for prec, res in train.items():
        for key in ("ours", "ours_loop", "ours_end_to_end", "hf_trainer_neox", "hf_loop_neox",
                    "hf_trainer_llama", "hf_loop_llama"):
            if key in res:
                row(f"train.{prec}.{key}", "train", LABELS[key], res[key], precision=prec,
                    mfu=median(res[key]) * flops / peak if prec == "fp32" and key in STEP_ROWS else None)
        if prec == "fp32":
            mfu = median(res["ours"]) * flops / peak
            ratios.append({"id": "train.fp32.mfu", "label": "ours, fraction of the fp32 matmul peak", "value": mfu,
                           "rounds": [v * flops / peak for v in res["ours"]], "target": TARGETS["train.fp32.mfu"],
                           "pass": bool(mfu >= TARGETS["train.fp32.mfu"]), "needs_peak_fraction": None})
        for key in ("hf_trainer_neox", "hf_loop_neox", "hf_trainer_llama", "hf_loop_llama"):
            if key in res:
                kind = "vs_trainer" if "trainer" in key else "vs_hf_loop"
                ratio(f"train.{prec}.ours_over_{key[3:]}", f"training {prec}: ours / {LABELS[key]}", res["ours"],
                      res[key], f"train.{prec}.{kind}", flops_per_token=flops if prec == "fp32" else None)
        ratio(f"train.{prec}.loop_over_hf_loop_neox", f"training {prec}: ours whole loop / hand loop GPT-NeoX",
              res["ours_loop"], res["hf_loop_neox"])
    b8 = f"b{a.gen_batch}"
    labels = shapes["labels"]

    def our_label(name: str, what: str) -> str:
        return "ours " + (labels[what][name] if what == "evaluate" else labels[what]["b1"][name])

    def hf_label(name: str) -> str:
        return "transformers " + ("bf16 (model.to(bfloat16))" if name.endswith("bf16") else "fp32")

    for key in ("b1", b8):
        for name in labels["generate"][key]:
            if name.startswith("ours"):
                row(f"generate.{key}.{name}", "generate", f"{our_label(name, 'generate')}, batch {key[1:]}",
                    gen[f"{key}.{name}"])
            else:
                row(f"generate.{key}.{name}", "generate", f"{hf_label(name)} generate(), batch {key[1:]}",
                    gen[f"{key}.{name}"])
    # The batch-1 target, against what a transformers user gets by default (float32): on our fastest
    # CLI settings, --quantize int8, eager and with --compile (its compilation reported apart: it is
    # paid once per process and batch size).
    best = {"ours_int8", "ours_int8_compiled"}
    for key in ("b1", b8):
        names = labels["generate"][key]
        for name in names:
            if name.startswith("ours"):
                ratio(f"generate.{key}.{name[1 + len('ours'):] or 'fp32'}_over_hf",
                      f"generation batch {key[1:]}: {our_label(name, 'generate')} / transformers fp32",
                      gen[f"{key}.{name}"], gen[f"{key}.hf_neox"],
                      "generate.b1.vs_hf" if key == "b1" and name in best else None)
        if "ours_auto" in names and "hf_neox_bf16" in names:
            ratio(f"generate.{key}.auto_over_hf_bf16", f"generation batch {key[1:]}: ours --precision auto / "
                  f"transformers bf16", gen[f"{key}.ours_auto"], gen[f"{key}.hf_neox_bf16"])
    # Batching: each of our settings, batch 8 over batch 1; the target on the default (auto).
    default = "ours_auto" if "ours_auto" in labels["generate"]["b1"] else "ours"
    for name in labels["generate"]["b1"]:
        if name.startswith("ours") and name in labels["generate"][b8]:
            ratio(f"generate.{name}_{b8}_over_b1",
                  f"generation: {our_label(name, 'generate')}, batch {a.gen_batch} / batch 1",
                  gen[f"{b8}.{name}"], gen[f"b1.{name}"],
                  "generate.ours_b8_over_b1" if a.gen_batch == 8 and name == default else None)
    for name in labels["evaluate"]:
        if name.startswith("ours"):
            row(f"evaluate.{name}", "evaluate", f"{our_label(name, 'evaluate')}, evaluate_tokens, stride = block",
                ev[name])
        else:
            row(f"evaluate.{name}", "evaluate", f"{hf_label(name)} plain loop model(input_ids, labels)", ev[name])
    # The target on our fastest settings of the evaluate stage: --precision auto and --quantize int8.
    best_eval = {"ours_auto" if "ours_auto" in ev else "ours", "ours_int8"}
    for name in ("ours", "ours_auto", "ours_int8"):
        if name in ev:
            ratio(f"evaluate.{name[1 + len('ours'):] or 'fp32'}_over_hf",
                  f"evaluation: {our_label(name, 'evaluate')} / transformers fp32 loop", ev[name], ev["hf_neox"],
                  "evaluate.vs_hf" if name in best_eval else None,
                  flops_per_token=shapes["forward_flops_per_token"] if name == "ours" else None)
    if "ours_auto" in ev and "hf_neox_bf16" in ev:
        ratio("evaluate.auto_over_hf_bf16", "evaluation: ours --precision auto / transformers bf16 loop",
              ev["ours_auto"], ev["hf_neox_bf16"])
    machine = dict(machine, load_average_end=os.getloadavg()[0])
    return {"machine": machine, "config": {**shapes, **data.info, "rounds": a.rounds, "train_steps": a.train_steps,
                                           "warmup_steps_untimed": a.eval_every, "eval_every": a.eval_every,
                                           "eval_batches": a.eval_batches, "new_tokens": a.new_tokens,
                                           "prompt_tokens": a.prompt_tokens, "gen_batch": a.gen_batch,
                                           "eval_batch": a.eval_batch, "quick": a.quick},
            "matmul_peak_gflops": peak / 1e9, "rows": rows, "ratios": ratios, "targets": TARGETS,
            "checks": {"logits_max_abs_diff": shapes["logits_max_abs_diff"], "greedy": gen_checks,
                       "evaluation": ev_checks},
            "notes": notes}


def print_report(rep: dict) -> None:
    m, c = rep["machine"], rep["config"]
    print(f"mini-llm vs transformers {m['transformers']} (torch {m['torch']}), {m['cpu']}, {m['threads']} threads, "
          f"native bf16 {'yes' if m['native_bf16'] else 'no'}, {m['date']}")
    print(f"model {c['n_layer']} layers x {c['n_embd']} wide, {c['n_head']} heads, block {c['block_size']}, vocab "
          f"{c['vocab_size']:,}: ours/GPT-NeoX {c['params']:,} params, Llama {c['llama_params']:,} "
          f"(intermediate {c['llama_intermediate']}); batch {c['batch_size']}; {c['tokens']:,} tokens of "
          f"{Path(c['corpus']).name}; median of {c['rounds']} round(s); fp32 matmul peak "
          f"{rep['matmul_peak_gflops']:.1f} GFLOP/s")
    if m.get("allocator"):
        print(f"allocator, both sides: {m['allocator']}")
    print(f"training: {c['train_steps']} steps, the first {c['warmup_steps_untimed']} untimed (warm-up); "
          f"ours evaluates every {c['eval_every']} steps ({c['eval_batches']} batches, a sample, two checkpoints)")
    section = None
    for r in rep["rows"]:
        head = f"{r['section']} {r.get('precision', '')}".strip()
        if head != section:
            section = head
            print(f"\n{head} (tokens/s)")
        spread = f"{min(r['rounds']):,.0f}-{max(r['rounds']):,.0f}"
        mfu = f"  MFU {100 * r['mfu']:.0f}%" if r.get("mfu") is not None else ""
        print(f"  {r['label']:<66} {r['tokens_per_second']:>10,.0f}  ({spread}){mfu}")
    print("\nratios (ours / theirs): median of the per-round ratios (their range), target, result")
    for x in rep["ratios"]:
        pct = x["id"].endswith("mfu")
        val = f"{100 * x['value']:.0f}%" if pct else f"{x['value']:.2f}x"
        rounds = x.get("rounds") or []
        spread = (f"{100 * min(rounds):.0f}-{100 * max(rounds):.0f}%" if pct else
                  f"{min(rounds):.2f}-{max(rounds):.2f}") if len(rounds) > 1 else ""
        if x["target"] is None:
            tgt, res = "", ""
        else:
            tgt = f">= {100 * x['target']:.0f}%" if x["id"].endswith("mfu") else f">= {x['target']}x"
            res = "pass" if x["pass"] else "FAIL"
        needs = x.get("needs_peak_fraction")
        needs = f"  (the target needs {100 * needs:.0f}% of the matmul peak)" if needs else ""
        print(f"  {x['label']:<74} {val:>6} {spread:>11}  {tgt:>8}  {res:4}{needs}")
    for side, seconds in c.get("generate_compile_seconds", {}).items():
        print(f"compilation of generate --compile, {side}: {seconds:.1f} s (once per process and batch size)")
    ch = rep["checks"]
    print(f"\nsame function: max |logit difference| ours vs GPT-NeoX {ch['logits_max_abs_diff']:.2e}")
    for key, g in ch["greedy"].items():
        diff = g["first_difference_row0"]
        batch, _, side = key.partition(".")
        what = f"{batch}, ours {side[len('ours_'):-len('_vs_fp32')]} vs ours fp32" if side else f"{batch}, ours vs transformers"
        print(f"greedy {what}: {g['rows_agreeing_first_k']}/{g['rows']} rows agree on the first {g['k']} tokens; "
              f"row 0 " + ("identical over all tokens" if diff is None else f"first differs at token {diff}"))
    for note in rep["notes"].values():
        print(f"note: {note}")


# =========================================================================== main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="defaults (full run): " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items()))
    ap.add_argument("--quick", action="store_true", help="tiny configuration on the shipped test corpus (tests)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout (progress on stderr)")
    ap.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="cache of the corpus slice, tokenizer, runs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip the generate --compile rows (always skipped with --quick: compiling takes a while)")
    ap.add_argument("--show", metavar="FILE", default=None,
                    help="print the table of a result saved with --json, and exit (nothing is run)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    for key, value in DEFAULTS.items():
        ap.add_argument("--" + key.replace("_", "-"), type=type(value), default=None,
                        help=f"default {value} ({QUICK.get(key, value)} with --quick)")
    a = ap.parse_args(argv)
    for key, value in DEFAULTS.items():
        if getattr(a, key) is None:
            setattr(a, key, QUICK.get(key, value) if a.quick else value)
    a.eval_every = max(1, a.train_steps // 4)
    a.compile = not (a.no_compile or a.quick)
    if a.train_steps < 2 * a.eval_every or a.rounds < 1:
        ap.error("--train-steps must be at least 2 and --rounds at least 1")
    return a


def run(a, log) -> dict:
    import torch
    from checkpoint import load_model
    from precision import cpu_native_bf16
    from common import tune_allocator
    if a.threads:
        torch.set_num_threads(a.threads)
    # Both sides under the allocator thresholds main.py sets (ours trains through main.py): the
    # ratios then compare the code, not the allocators.
    allocator = tune_allocator()
    machine = dict(machine_info(), allocator=allocator or "the C library's default")
    peak = matmul_peak()
    data = prepare_data(a, log)
    cfg = our_config(a, data.identity.vocab_size)
    special = data.identity.special
    llama = hf_llama(cfg, special, a.seed)
    shapes = {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
              "batch_size": a.batch_size, "params": cfg.num_parameters(), "llama_params": n_params(llama),
              "llama_intermediate": llama.config.intermediate_size,
              "flops_per_token": 6 * cfg.num_parameters() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size,
              "forward_flops_per_token": 2 * cfg.num_parameters() + 4 * cfg.n_layer * cfg.n_embd * cfg.block_size,
              "attn_implementation": getattr(llama.config, "_attn_implementation", None)}
    del llama
    assert abs(shapes["llama_params"] / shapes["params"] - 1) <= LLAMA_MATCH, shapes
    log(f"model: {shapes['params']:,} parameters (Llama {shapes['llama_params']:,}); "
        f"{data.info['tokens']:,} tokens, {data.info['train_windows']:,} training windows")

    notes = {}
    precisions = ["fp32"]
    if cpu_native_bf16():
        precisions.append("bf16")
    else:
        notes["bf16"] = ("bf16 rows skipped: this CPU has no native bf16 (AVX512_BF16/AMX), where bf16 "
                         "autocast is emulated and much slower than fp32 (precision.cpu_native_bf16)")
    train = {}
    for prec in precisions:
        train[prec], more = bench_training(a, data, prec, log)
        notes.update(more)

    ckpt = Path(a.workdir) / "runs" / f"ours-fp32-r{a.rounds - 1}" / "ckpt_last.pt"
    ours, _ = load_model(ckpt, torch.device("cpu"), data.identity)     # as the generate stage loads it
    hf = hf_neox(ours, special).eval()
    shapes["logits_max_abs_diff"] = logits_check(ours, hf, data.eval_stream, a.block_size)
    del ours
    hf.generation_config.eos_token_id = None           # no end-of-text stopping (ours: stop_ids=())
    gen_sides, eval_sides = inference_sides(a, ckpt, hf, data, native_bf16=cpu_native_bf16() is not None)
    gen, gen_checks, shapes["generate_compile_seconds"] = bench_generation(a, gen_sides, data, log)
    ev, ev_checks = bench_evaluation(a, eval_sides, data, log)
    shapes["labels"] = {"generate": {key: {name: side.label for name, side in sides.items()}
                                     for key, sides in gen_sides.items()},
                        "evaluate": {name: side.label for name, side in eval_sides.items()}}
    peak = max(peak, matmul_peak())
    return build_report(a, machine, data, shapes, peak, train, gen, gen_checks, ev, ev_checks, notes)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.show:
        print_report(json.loads(Path(a.show).read_text(encoding="utf-8")))
        return 0
    try:
        check_corpus(a.corpus)            # before the slow imports
    except BenchError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    need_transformers()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

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
