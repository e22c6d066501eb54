"""Training throughput (tokens/s) and model FLOP utilisation (MFU) of the small preset.

    .venv/bin/python bench/bench_train.py [--steps 5] [--batch-size 8] [--n-layer N] [--vocab-size V]
                                          [--threads N] [--precision fp32|bf16|both] [--json]

The model is `config.PRESETS["small"]` (4 layers, 4 heads, width 256, block 256) with a 32,000
token vocabulary, trained on random tokens (a SEP at the start of every window, as in real
windows, so the document-aware attention mask is built exactly as in training). Each step is
`training.optimizer_step` (forward, backward, clipping, fused AdamW): the training loop's own
code. Two precisions: fp32, and bf16 autocast (`--precision bf16`); the report also says which of
the two `--precision auto` picks on this machine for this shape, and why (precision.py).

FLOPs per token = 6 N + 12 L C T (PaLM appendix B / nanoGPT `estimate_mfu`): N parameters (the
tied embedding / output matrix counted once, it is the output projection's matmul), L layers,
C width, T block size (attention scores and weighted values, forward + backward, no causal
discount). MFU = achieved FLOP/s / peak FLOP/s, the peak measured here with a large matmul
in the same dtype (so bf16 MFU is relative to the bf16 matmul peak of this CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import optimizers  # noqa: E402
import training  # noqa: E402
from model import GPT, ModelConfig  # noqa: E402
from precision import resolve_precision  # noqa: E402

VOCAB = 32000


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 1.5) -> float:
    """Measured FLOP/s of an n x n @ n x n matmul in `dtype` (best of repeated runs)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def bench(cfg: ModelConfig, batch_size: int, steps: int, warmup: int, amp: bool) -> dict:
    torch.manual_seed(0)
    model = GPT(cfg)
    model.train()
    tcfg = config.TrainConfig(lr=5e-4)
    optimizer = optimizers.make_optimizer(model, tcfg)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    device = torch.device("cpu")

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    g = torch.Generator().manual_seed(0)
    T = cfg.block_size
    x = torch.randint(3, cfg.vocab_size, (batch_size, T), generator=g)
    x[:, 0] = 0                                                   # SEP (BOS) at the window start
    y = torch.randint(3, cfg.vocab_size, (batch_size, T), generator=g)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss, _, _ = training.read_step(training.optimizer_step(model, model, optimizer, scaler, [(x, y)], lr=5e-4,
                                                                grad_clip=1.0, device=device, autocast=autocast))
        if i >= warmup:
            times.append(time.perf_counter() - t)
        assert loss is not None
    times.sort()
    median = times[len(times) // 2]
    tokens = batch_size * T
    return {"tokens_per_second": tokens / median, "step_seconds": median}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps per precision (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per step (the preset trains with 32)")
    ap.add_argument("--block-size", type=int, default=config.PRESETS["small"]["block_size"])
    ap.add_argument("--n-layer", type=int, default=config.PRESETS["small"]["n_layer"])
    ap.add_argument("--vocab-size", type=int, default=VOCAB,
                    help="32000 (the preset's vocabulary); the roadmap's transformers/nanoGPT reference "
                         "numbers are for --n-layer 6 --vocab-size 8000 (6.8M parameters)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    p = config.PRESETS["small"]
    cfg = ModelConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer, n_head=p["n_head"],
                      n_embd=p["n_embd"], sep_token_id=0)
    n_params = GPT(cfg).num_parameters()
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    result = {"config": {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
                         "block_size": cfg.block_size, "vocab_size": cfg.vocab_size, "batch_size": args.batch_size},
              "params": n_params, "flops_per_token": flops_per_token, "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "torch": torch.__version__}
    auto = resolve_precision("auto", torch.device("cpu"), n_embd=cfg.n_embd, vocab_size=cfg.vocab_size,
                             rows=args.batch_size * cfg.block_size)
    result["auto"] = auto.to_dict()
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    for prec in precisions:
        dtype = torch.float32 if prec == "fp32" else torch.bfloat16
        peak = matmul_peak(dtype)
        r = bench(cfg, args.batch_size, args.steps, args.warmup, amp=prec == "bf16")
        achieved = r["tokens_per_second"] * flops_per_token
        result[prec] = {**r, "achieved_gflops": achieved / 1e9, "peak_gflops": peak / 1e9, "mfu": achieved / peak}
        if not args.json:
            print(f"{prec:>5}: {r['tokens_per_second']:8,.0f} tok/s  ({r['step_seconds']:.3f} s/step)  "
                  f"{achieved / 1e9:6.1f} GFLOP/s of a measured {peak / 1e9:6.1f} GFLOP/s {prec} matmul peak  "
                  f"MFU {100 * achieved / peak:.1f}%", flush=True)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model: {n_params:,} parameters, {flops_per_token / 1e6:.1f} MFLOP/token "
              f"(6N + 12LCT), batch {args.batch_size} x {cfg.block_size}, {result['threads']} threads, "
              f"load average {result['load_average']:.1f}")
        print(f"--precision auto picks {auto.name} here: {auto.reason}")


if __name__ == "__main__":
    main()
