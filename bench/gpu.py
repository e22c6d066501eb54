"""GPU benchmark: training tokens/s, MFU and peak memory per preset, with and without flash-attn and
torch.compile; the memory check of the large preset; generation tokens/s at batch 1 and 64.

    .venv/bin/python bench/gpu.py [--presets small medium large] [--steps 20] [--warmup 5]
                                  [--new-tokens 200] [--gen-batches 1 64] [--no-compile]
                                  [--time-limit 420] [--json] [--save FILE]
    .venv/bin/python bench/gpu.py --show FILE          # the table of a result saved with --save / --json
    .venv/bin/python bench/gpu.py --device cpu --tiny --no-compile --json   # the whole path on a CPU (tests)
    bench/gpu.sh                                       # pytest -m gpu, then this, JSON to bench/.work/gpu.json

Models: config.PRESETS small, medium and large (config.make_configs with a 32,000-token vocabulary
and SEP = 0: the neox family, Muon + AdamW, as `main.py train --config NAME` builds them), random
weights. --tiny: one custom shape (2 layers, width 64, 4 heads, block 64, batch 2) instead.

What is timed (on CUDA, `torch.cuda.synchronize()` before and after every timed region):
- training, per preset x flash-attn on/off x torch.compile on/off: --steps calls of OUR STEP
  FUNCTION, training.optimizer_step (forward, backward, clipping, the optimizer, the scaler), after
  --warmup untimed steps (compilation happens there). Batch and block size are the preset's
  (--batch-size overrides the batch), gradient checkpointing as the preset sets it (on for large).
  The data: random token windows (ids 3..V-1) with a SEP at the start and 1-3 more SEPs at random
  places in every window, so every step takes the document-aware attention path
  (training.optimizer_step builds the Segments layout from the host copy, as in training; the
  batches are pinned on CUDA). Precision: precision.resolve_precision("auto") for the shape (bf16
  autocast on bf16 GPUs, fp16 with a GradScaler before them), TF32 matmuls on, as `train` does.
  flash-attn on/off is model.use_flash_attn(True/False); the kernel it picked is recorded
  (document_kernel: "varlen" = flash-attn, "flex" = FlexAttention when flash-attn is not installed,
  "sdpa" = SDPA with the dense document mask). torch.compile: torch.compile(model) is the train
  model, the plain model is stepped by the optimizer (as training.Trainer does).
- MFU = FLOPs per token x tokens/s / the GPU's dense bf16 peak. FLOPs per token = 6 N + 12 L C T
  (the convention of bench/bench_train.py and bench/compare.py: N all parameters with the tied
  embedding / output matrix counted once, L layers, C width, T block size; attention at full T x T
  with no causal or document discount, and no recomputation counted under gradient checkpointing).
  The peak comes from a table by torch.cuda.get_device_name() (PEAK_BF16 below, spec-sheet dense
  figures); an unknown GPU (or a CPU) gets MFU null and a note.
- peak memory: torch.cuda.max_memory_allocated (and max_memory_reserved), reset per configuration.
- the memory check: the large preset with gradient checkpointing at block 1024, batch 8 (eager,
  the default attention, as `train --config large` runs): its peak allocated memory, and whether
  it is under 12 GB (12e9 bytes: a 12 GiB card keeps ~0.9 GB for the CUDA context).
- generation, per preset x batch (--gen-batches, 1 and 64) x compile on/off: greedy
  (SamplingConfig(temperature=0.0)) through generation.generate_batch, the decoding loop of
  `main.py generate`, with stop_ids=() so every row makes exactly --new-tokens tokens (capped so
  prompt + new tokens fit the block: no sliding), from random prompts of --prompt-tokens tokens
  starting with SEP, under the autocast resolve_precision("auto") picks for that batch size.
  tokens/s = batch x new tokens / seconds of the whole call (prefill included), the best of
  --gen-repeats calls after one untimed call (compilation and CUDA-graph capture happen there).
  compile on is generate_batch(..., compile=True) (a compiled decode step with a fixed-size cache,
  CUDA graphs on CUDA).

Targets, printed beside the figures (they are for an H200; elsewhere they are shown, not judged):
MFU >= 35% for large and >= 25% for small (the best of each preset's rows), batch-1 decode >=
3,000 tokens/s for small with compile, the memory check under 12 GB.

Every configuration is isolated: an error (flash-attn or compile failing, out of memory) becomes a
row with status "error" and the message, and the run goes on. --time-limit (seconds, from the
start) is checked before each configuration; past it the rest become rows with status "skipped".
The configurations that carry a target run first. The whole default run is meant to fit in 8
minutes on one H200 (bench/gpu.sh passes what is left after pytest).

--json prints one object: machine, config, rows (one per configuration, every row with the same
keys: ROW_KEYS), targets. Exit code 0, or 1 when a row has status "error", 2 for bad usage.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCAB = 32000                 # the presets' vocabulary (README's parameter counts)
SEP = 0                       # <|doc|>: document separator and start of every document
FIRST_ORDINARY_ID = 3         # 0, 1, 2 are <|doc|>, <|endoftext|>, <|pad|>
EXTRA_SEPS = (1, 3)           # SEPs at random places in each window, besides the one at its start
DISTINCT_BATCHES = 4          # random batches cycled through the steps
PRESETS = ("small", "medium", "large")
TINY = dict(n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=2)   # --tiny: a custom shape
MEMORY_CHECK = dict(preset="large", block_size=1024, batch_size=8, limit_bytes=12e9)
MEMORY_STEPS = 3              # timed steps of the memory check (its peak is reached at the first)

# Dense bf16 tensor-core peak FLOP/s by device name (spec sheets; regular expressions tried in order,
# case-insensitive): (pattern, FLOP/s, note). V100 has no bf16: its fp16 peak (autocast is fp16 there).
PEAK_BF16: tuple[tuple[str, float, str], ...] = (
    (r"H200 NVL", 835e12, "H200 NVL"),
    (r"H200", 989e12, "H200 (and GH200)"),
    (r"H100 NVL", 835e12, "H100 NVL"),
    (r"H100.*PCIe", 756e12, "H100 PCIe"),
    (r"H100", 989e12, "H100 SXM"),
    (r"A100", 312e12, "A100"),
    (r"L40S", 362e12, "L40S"),
    (r"\bL4\b", 121e12, "L4"),
    (r"A10G", 125e12, "A10G, approximate: the A10's spec-sheet figure, the A10G's clocks differ"),
    (r"RTX 4090", 165e12, "RTX 4090"),
    (r"RTX 3090", 71e12, "RTX 3090"),
    (r"V100", 125e12, "V100: fp16 peak (no bf16 on this GPU)"),
)

# The targets (for an H200): (row kind, preset, batch, compile) -> (metric, bound).
TARGETS = {
    "train.large.mfu": dict(kind="train", preset="large", metric="mfu", min=0.35),
    "train.small.mfu": dict(kind="train", preset="small", metric="mfu", min=0.25),
    "generate.small.b1.compile": dict(kind="generate", preset="small", batch_size=1, compile=True,
                                      metric="tokens_per_second", min=3000.0),
    "memory.large": dict(kind="memory", preset="large", metric="peak_memory_bytes", max=MEMORY_CHECK["limit_bytes"]),
}
TARGET_GPU = "H200"

ROW_KEYS = ("name", "kind", "preset", "status", "error", "note", "seconds_total",
            "flash", "flash_attn", "document_kernel", "compile", "gradient_checkpointing", "precision",
            "batch_size", "block_size", "params", "flops_per_token", "steps", "new_tokens", "prompt_tokens",
            "tokens", "seconds", "tokens_per_second", "mfu", "peak_memory_bytes", "peak_memory_reserved_bytes",
            "loss", "targets")


# =========================================================================== pure helpers

def flops_per_token(cfg) -> int:
    """Training FLOPs per token of a ModelConfig: 6 N + 12 L C T (see the module docstring)."""
    return 6 * cfg.num_parameters() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def lookup_peak(device_name: str) -> tuple[Optional[float], str]:
    """(dense bf16 peak FLOP/s, note) for a CUDA device name; (None, why) for an unknown one."""
    for pattern, flops, note in PEAK_BF16:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return flops, note
    return None, f"no bf16 peak known for {device_name!r} (add it to PEAK_BF16 in bench/gpu.py): MFU not reported"


def greedy_steps(model, prompts: list[list[int]], new_tokens: int, compile: bool):
    """generation.generate_batch, greedy, every row running the full length."""
    import generation
    from sampling import SamplingConfig
    return generation.generate_batch(model, prompts, new_tokens, SamplingConfig(temperature=0.0), stop_ids=(),
                                     compile=compile)


# =========================================================================== configurations

@dataclass(frozen=True)
class Job:
    kind: str                 # "train", "memory" or "generate"
    preset: str               # a PRESETS name, or "tiny"
    flash: bool = False
    compile: bool = False
    batch_size: Optional[int] = None   # None: the preset's
    block_size: Optional[int] = None
    checkpointing: Optional[bool] = None

    @property
    def name(self) -> str:
        how = "compiled" if self.compile else "eager"
        if self.kind == "train":
            return f"train {self.preset} {how} flash-{'on' if self.flash else 'off'}"
        if self.kind == "memory":
            return f"memory {self.preset} checkpointing b{self.batch_size}x{self.block_size}"
        return f"generate {self.preset} b{self.batch_size} {how}"

    def targets(self) -> list[str]:
        out = []
        for tid, t in TARGETS.items():
            if t["kind"] == self.kind and t["preset"] == self.preset \
                    and t.get("batch_size", self.batch_size) == self.batch_size \
                    and t.get("compile", self.compile) == self.compile:
                out.append(tid)
        return out


def plan(a) -> list[Job]:
    """Every configuration, in the order of the report."""
    presets = ["tiny"] if a.tiny else a.presets
    compiles = [False] if a.no_compile else [False, True]
    jobs = []
    for p in presets:
        for c in compiles:
            for f in (False, True):
                jobs.append(Job("train", p, flash=f, compile=c, batch_size=a.batch_size))
    if a.tiny:
        jobs.append(Job("memory", "tiny", batch_size=TINY["batch_size"], block_size=TINY["block_size"],
                        checkpointing=True))
    elif MEMORY_CHECK["preset"] in presets:
        jobs.append(Job("memory", MEMORY_CHECK["preset"], batch_size=MEMORY_CHECK["batch_size"],
                        block_size=MEMORY_CHECK["block_size"], checkpointing=True))
    for p in presets:
        for b in a.gen_batches:
            for c in compiles:
                jobs.append(Job("generate", p, compile=c, batch_size=b))
    return jobs


def model_configs(job: Job):
    import config
    if job.preset == "tiny":
        overrides = dict(TINY)
        preset = "custom"
    else:
        overrides, preset = {}, job.preset
    if job.batch_size is not None and job.kind != "generate":
        overrides["batch_size"] = job.batch_size
    if job.block_size is not None:
        overrides["block_size"] = job.block_size
    return config.make_configs(preset, overrides, vocab_size=VOCAB, sep_token_id=SEP)


# =========================================================================== measuring

def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device) -> None:
    import torch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> tuple[Optional[int], Optional[int]]:
    import torch
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def random_batches(batch_size: int, T: int, vocab_size: int, n: int, seed: int, pin: bool) -> list:
    """n (x, y) pairs of (B, T) windows of one random stream each: x starts with SEP and holds
    1-3 more SEPs at random places (several documents per window), y is x shifted by one."""
    import torch
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        seq = torch.randint(FIRST_ORDINARY_ID, vocab_size, (batch_size, T + 1), generator=g)  # (B, T + 1)
        seq[:, 0] = SEP
        for row in seq:
            k = int(torch.randint(EXTRA_SEPS[0], EXTRA_SEPS[1] + 1, (1,), generator=g))
            row[1 + torch.randperm(T - 1, generator=g)[:k]] = SEP   # inside x[1:], never at its start
        x, y = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()     # (B, T) each
        out.append((x.pin_memory(), y.pin_memory()) if pin else (x, y))
    return out


def train_job(job: Job, a, device, peak: Optional[float], row: dict) -> None:
    """Training steps through training.optimizer_step; fills `row`."""
    import torch
    import optimizers
    import training
    from model import GPT
    from precision import resolve_precision

    mcfg, tcfg = model_configs(job)
    B, T = tcfg.batch_size, mcfg.block_size
    checkpointing = tcfg.gradient_checkpointing if job.checkpointing is None else job.checkpointing
    torch.manual_seed(a.seed)
    model = GPT(mcfg).to(device)
    model.train()
    model.gradient_checkpointing = checkpointing
    flash_on = model.use_flash_attn(job.flash)           # logs the kernel it picked
    prec = resolve_precision("auto", device, n_embd=mcfg.n_embd, vocab_size=mcfg.vocab_size, rows=B * T)
    optimizer = optimizers.make_optimizer(model, tcfg)
    scaler = torch.amp.GradScaler(device.type, enabled=prec.use_scaler)
    train_model = torch.compile(model) if job.compile else model
    row.update(flash_attn=flash_on, document_kernel=model.document_kernel, gradient_checkpointing=checkpointing,
               precision=prec.name, batch_size=B, block_size=T, params=mcfg.num_parameters(),
               flops_per_token=flops_per_token(mcfg))
    if job.flash and not flash_on:
        row["note"] = f"flash-attn not in use: the {model.document_kernel} kernel across documents"
    batches = random_batches(B, T, mcfg.vocab_size, DISTINCT_BATCHES, a.seed, pin=device.type == "cuda")
    warmup, steps = (1, min(a.steps, MEMORY_STEPS)) if job.kind == "memory" else (a.warmup, a.steps)

    def step(i: int) -> torch.Tensor:       # the step's statistics, left on the device (no sync)
        return training.optimizer_step(model, train_model, optimizer, scaler, [batches[i % len(batches)]],
                                       lr=tcfg.lr, grad_clip=1.0, device=device, autocast=prec.autocast)

    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    stats = [step(i) for i in range(warmup, warmup + steps)]
    sync(device)
    seconds = time.perf_counter() - t0
    read = [training.read_step(s) for s in stats]
    tokens, loss = sum(n for _, _, n in read), read[-1][0]
    tps = tokens / seconds
    row.update(steps=steps, tokens=tokens, seconds=seconds, tokens_per_second=tps, loss=loss,
               mfu=tps * row["flops_per_token"] / peak if peak else None)
    if loss is None:
        row["note"] = ((row["note"] + "; ") if row["note"] else "") + "the last step was skipped (non-finite loss)"


def generate_job(job: Job, a, device, row: dict) -> None:
    """Greedy generation through generation.generate_batch; fills `row`."""
    import torch
    from model import GPT
    from precision import resolve_precision

    mcfg, _ = model_configs(job)
    B = job.batch_size
    prompt_tokens = min(a.prompt_tokens, mcfg.block_size - 1)
    new_tokens = min(a.new_tokens, mcfg.block_size - prompt_tokens)    # no sliding window
    torch.manual_seed(a.seed)
    model = GPT(mcfg).to(device).eval()
    prec = resolve_precision("auto", device, n_embd=mcfg.n_embd, vocab_size=mcfg.vocab_size, rows=B)
    g = torch.Generator().manual_seed(a.seed)
    prompts = [[SEP] + torch.randint(FIRST_ORDINARY_ID, mcfg.vocab_size, (prompt_tokens - 1,), generator=g).tolist()
               for _ in range(B)]
    row.update(precision=prec.name, batch_size=B, block_size=mcfg.block_size, params=mcfg.num_parameters(),
               new_tokens=new_tokens, prompt_tokens=prompt_tokens)

    def once() -> float:
        sync(device)
        t0 = time.perf_counter()
        with prec.autocast():
            n = sum(1 for _ in greedy_steps(model, prompts, new_tokens, job.compile))
        sync(device)
        assert n == new_tokens, (n, new_tokens)
        return time.perf_counter() - t0

    once()                                              # untimed: compilation, CUDA graphs, allocator
    seconds = min(once() for _ in range(a.gen_repeats))
    row.update(tokens=B * new_tokens, seconds=seconds, tokens_per_second=B * new_tokens / seconds)


def run_job(job: Job, a, device, peak: Optional[float], t_start: float) -> dict:
    """One configuration, isolated: any failure becomes the row's error."""
    import torch
    row = dict.fromkeys(ROW_KEYS)
    row.update(name=job.name, kind=job.kind, preset=job.preset, flash=job.flash, compile=job.compile,
               batch_size=job.batch_size, targets=job.targets())
    if time.perf_counter() - t_start > a.time_limit:
        row.update(status="skipped", note=f"skipped: past --time-limit {a.time_limit:g} s")
        return row
    t0 = time.perf_counter()
    reset_memory(device)
    try:
        if job.kind == "generate":
            generate_job(job, a, device, row)
        else:
            train_job(job, a, device, peak, row)
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001  (every failure of one configuration is that row's result)
        msg = str(e).strip().splitlines()
        row.update(status="error", error=f"{type(e).__name__}: {msg[0] if msg else ''}"[:400])
        tail = traceback.format_exc().splitlines()[-15:]
        print(f"{job.name}: error\n" + "\n".join(tail), file=sys.stderr, flush=True)
    row["peak_memory_bytes"], row["peak_memory_reserved_bytes"] = peak_memory(device)
    if job.compile:
        torch._dynamo.reset()                           # compiled code and CUDA graphs of this model go
    reset_memory(device)
    row["seconds_total"] = time.perf_counter() - t0
    return row


# =========================================================================== targets

def judge(rows: list[dict], gpu_name: str) -> list[dict]:
    """Per target carried by a row of this run: the best such row, its value, and whether it
    meets the bound."""
    out = []
    for tid, t in TARGETS.items():
        if not any(tid in (r["targets"] or []) for r in rows):
            continue                                    # no configuration of this run carries it
        cands = [r for r in rows if tid in (r["targets"] or []) and r["status"] == "ok" and r[t["metric"]] is not None]
        best = None
        if cands:
            best = (max if "min" in t else min)(cands, key=lambda r: r[t["metric"]])
        value = best[t["metric"]] if best else None
        met = meets(t, value)
        out.append({"id": tid, "metric": t["metric"], "min": t.get("min"), "max": t.get("max"), "value": value,
                    "row": best["name"] if best else None, "met": met,
                    "on_target_gpu": TARGET_GPU.lower() in gpu_name.lower()})
    return out


# =========================================================================== report

def machine_info(device) -> dict:
    import torch
    info = {"device": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "flash_attn": None}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        info["flash_attn"] = importlib.metadata.version("flash-attn")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                    gpu_memory_bytes=props.total_memory)
        info["peak_flops"], info["peak_note"] = lookup_peak(info["gpu"])
    else:
        info.update(gpu=None, peak_flops=None, peak_note=f"no peak known for a {device.type} device: MFU not reported")
    return info


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "gb":
        return f"{value / 1e9:.2f} GB"
    return f"{value:,.0f}"


def meets(t: dict, value) -> Optional[bool]:
    """Whether `value` meets target `t` (a TARGETS entry or a judged one); None without a value."""
    if value is None:
        return None
    return value >= t["min"] if t.get("min") is not None else value < t["max"]


def target_text(t: dict, value=None) -> str:
    """The target in words, and with a value whether it is met ("met" / "NOT met")."""
    if t["metric"] == "mfu":
        text = f"MFU >= {100 * t['min']:.0f}%"
    elif t["metric"] == "peak_memory_bytes":
        text = f"< {t['max'] / 1e9:.0f} GB"
    else:
        text = f">= {t['min']:,.0f} tok/s"
    ok = meets(t, value)
    return text if ok is None else f"{text}: {'met' if ok else 'NOT met'}"


def print_report(rep: dict) -> None:
    m, c = rep["machine"], rep["config"]
    peak = f"bf16 peak {m['peak_flops'] / 1e12:,.0f} TFLOP/s, {m['peak_note']}" if m["peak_flops"] else m["peak_note"]
    print(f"{m['gpu'] or m['device']} ({peak}), torch {m['torch']}, CUDA {m['cuda']}, "
          f"flash-attn {m['flash_attn'] or 'not installed'}, {m['date']}")
    print(f"training: {c['steps']} timed steps after {c['warmup']} untimed; generation: {c['new_tokens']} new "
          f"tokens (at most), best of {c['gen_repeats']} after one untimed call")
    kinds = {"train": "training (tokens/s through training.optimizer_step)",
             "memory": "memory check", "generate": "generation (greedy, tokens/s over the batch)"}
    shown = None
    for r in rep["rows"]:
        if r["kind"] != shown:
            shown = r["kind"]
            print(f"\n{kinds[shown]}")
            if shown == "generate":
                print(f"  {'configuration':<34} {'prec':>5} {'tok/s':>10} {'peak mem':>10}  target")
            else:
                print(f"  {'configuration':<34} {'kernel':>7} {'prec':>5} {'ckpt':>4} {'B x T':>9} {'tok/s':>10} "
                      f"{'MFU':>6} {'peak mem':>10}  target")
        if r["status"] != "ok":
            print(f"  {r['name']:<34} {'ERROR: ' + r['error'] if r['status'] == 'error' else r['note']}")
            continue
        tgt = "  ".join(target_text(TARGETS[tid], r[TARGETS[tid]["metric"]]) for tid in r["targets"] or [])
        if r["kind"] == "generate":
            print(f"  {r['name']:<34} {r['precision']:>5} {_fmt(r['tokens_per_second'], 'n'):>10} "
                  f"{_fmt(r['peak_memory_bytes'], 'gb'):>10}  {tgt}")
        else:
            shape = f"{r['batch_size']}x{r['block_size']}"
            print(f"  {r['name']:<34} {r['document_kernel']:>7} {r['precision']:>5} "
                  f"{'yes' if r['gradient_checkpointing'] else 'no':>4} {shape:>9} "
                  f"{_fmt(r['tokens_per_second'], 'n'):>10} {_fmt(r['mfu'], 'pct'):>6} "
                  f"{_fmt(r['peak_memory_bytes'], 'gb'):>10}  {tgt}")
        if r["note"]:
            print(f"  {'':<34} note: {r['note']}")
    if not rep["targets"]:
        return
    on_h200 = any(t["on_target_gpu"] for t in rep["targets"])
    print(f"\ntargets (for an {TARGET_GPU}{'' if on_h200 else '; this GPU is not one: compare with care'}): "
          f"the best row of each")
    for t in rep["targets"]:
        val = _fmt(t["value"], {"mfu": "pct", "peak_memory_bytes": "gb"}.get(t["metric"], "n"))
        print(f"  {t['id']:<28} {val:>10}  {target_text(t, t['value']):<26} {t['row'] or 'no row measured it'}")


# =========================================================================== entry point

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true",
                    help="one tiny custom shape (2 layers x 64, block 64, batch 2), few steps: the code path "
                         "in seconds")
    ap.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per configuration (20; --tiny 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed training steps first (5; --tiny 1)")
    ap.add_argument("--batch-size", type=int, default=None, help="training windows per step (default: the preset's)")
    ap.add_argument("--new-tokens", type=int, default=None, help="generated tokens per row (200; --tiny 8)")
    ap.add_argument("--prompt-tokens", type=int, default=16, help="prompt length, SEP included")
    ap.add_argument("--gen-batches", type=int, nargs="+", default=None,
                    help="generation batch sizes (1 64; --tiny 1 4)")
    ap.add_argument("--gen-repeats", type=int, default=None,
                    help="timed generation calls, the best kept (2; --tiny 1)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    ap.add_argument("--time-limit", type=float, default=420.0,
                    help="seconds from the start after which the remaining configurations are skipped")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout (instead of the table)")
    ap.add_argument("--save", metavar="FILE", help="also write the JSON object to FILE")
    ap.add_argument("--show", metavar="FILE", help="print the table of a saved result, and exit (nothing is run)")
    a = ap.parse_args(argv)
    defaults = dict(steps=(2, 20), warmup=(1, 5), new_tokens=(8, 200), gen_batches=([1, 4], [1, 64]),
                    gen_repeats=(1, 2))
    for key, (tiny, full) in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, tiny if a.tiny else full)
    bad = [f"--{k.replace('_', '-')}" for k in ("steps", "new_tokens", "prompt_tokens", "gen_repeats")
           if getattr(a, k) < 1] + (["--warmup"] if a.warmup < 0 else []) \
        + (["--batch-size"] if a.batch_size is not None and a.batch_size < 1 else []) \
        + (["--gen-batches"] if any(b < 1 for b in a.gen_batches) else [])
    if bad:
        ap.error(f"{', '.join(bad)} must be at least 1 (--warmup at least 0)")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.show:
        print_report(json.loads(Path(a.show).read_text(encoding="utf-8")))
        return 0
    import torch
    from common import setup_logging
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("error: no CUDA GPU is visible; run the code path on a CPU with --device cpu --tiny\n")
        return 2
    setup_logging()                                     # model.use_flash_attn logs the kernel it picks (stderr)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True     # as training.Trainer.setup
        torch.backends.cudnn.allow_tf32 = True
    machine = machine_info(device)
    t_start = time.perf_counter()
    jobs = plan(a)
    order = sorted(range(len(jobs)), key=lambda i: not jobs[i].targets())   # the targets' rows first
    rows: list[Optional[dict]] = [None] * len(jobs)
    for n, i in enumerate(order, 1):
        rows[i] = r = run_job(jobs[i], a, device, machine["peak_flops"], t_start)
        figures = (f"{_fmt(r['tokens_per_second'], 'n')} tok/s"
                   + (f", MFU {_fmt(r['mfu'], 'pct')}" if r["mfu"] is not None else "")
                   + (f", peak {_fmt(r['peak_memory_bytes'], 'gb')}" if r["peak_memory_bytes"] is not None else "")
                   if r["status"] == "ok" else f"{r['status']}: {r['error'] or r['note']}")
        print(f"[{n}/{len(jobs)}] {r['name']}: {figures} ({r['seconds_total'] or 0:.0f} s)", file=sys.stderr,
              flush=True)
    rep = {"machine": machine,
           "config": {"vocab_size": VOCAB, "presets": ["tiny"] if a.tiny else a.presets, "steps": a.steps,
                      "warmup": a.warmup, "batch_size": a.batch_size, "new_tokens": a.new_tokens,
                      "prompt_tokens": a.prompt_tokens, "gen_batches": a.gen_batches, "gen_repeats": a.gen_repeats,
                      "compile": not a.no_compile, "time_limit": a.time_limit, "seed": a.seed,
                      "seconds": time.perf_counter() - t_start},
           "rows": rows, "targets": judge(rows, machine["gpu"] or "")}
    if a.save:
        Path(a.save).parent.mkdir(parents=True, exist_ok=True)
        Path(a.save).write_text(json.dumps(rep, indent=1) + "\n", encoding="utf-8")
    if a.json:
        print(json.dumps(rep))
    else:
        print_report(rep)
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
