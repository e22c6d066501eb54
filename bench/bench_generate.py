"""Decoding speed of generation.py on the small preset shape (random init, CPU by default).

    python bench/bench_generate.py [--new-tokens 128] [--prompt-len 32] [--threads N] [--hf] [--json]
                                   [--precision auto|fp32|bf16]

Reports tokens/s for one prompt without the KV cache (the whole context recomputed every
step), with the cache (greedy, and the default sampling settings), and the aggregate tokens/s
of batches of 1, 8 and 32 prompts (default sampling; every row runs the full length).
--hf adds Hugging Face transformers' `generate()` (greedy, KV cache) on a GPT-NeoX model of the
same shape, the reference of the roadmap's "2x transformers" decoding goal.
Each case runs in the precision `--precision` resolves to for its own shape (with auto, per batch
size: `generate` decides the same way), and the report says which one and why.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import generation as G  # noqa: E402
from config import MODEL_FIELDS, PRESETS  # noqa: E402
from model import GPT, ModelConfig  # noqa: E402
import inference  # noqa: E402
from precision import resolve_precision  # noqa: E402

SMALL = dict(vocab_size=32000, **{k: v for k, v in PRESETS["small"].items() if k in MODEL_FIELDS})


def timed(fn, repeats: int) -> float:
    """Best wall time of `repeats` runs (after one warm-up run)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@torch.inference_mode()
def uncached(model, prompt: list[int], n: int) -> None:
    """Greedy decoding that recomputes the whole context every step (no KV cache)."""
    idx = torch.tensor([prompt])
    for _ in range(n):
        logits, _ = model(idx[:, -model.cfg.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)


def cached(model, prompts: list[list[int]], n: int, cfg: G.SamplingConfig, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    steps = sum(1 for _ in G.generate_batch(model, prompts, n, cfg, generator=g, stop_ids=()))
    assert steps == n


def hf_generate(cfg: ModelConfig, prompt: list[int], n: int, repeats: int) -> float:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    hf_cfg = GPTNeoXConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                           num_attention_heads=cfg.n_head, intermediate_size=4 * cfg.n_embd,
                           max_position_embeddings=cfg.block_size, rotary_pct=1.0, use_parallel_residual=False,
                           tie_word_embeddings=True, hidden_act="gelu")
    model = GPTNeoXForCausalLM(hf_cfg).eval()
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 use_cache=True, pad_token_id=0)
        assert out.shape[1] == len(prompt) + n

    return n / timed(run, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case (the best is reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--n-layer", type=int, default=SMALL["n_layer"],
                    help="blocks (the roadmap's transformers figure used 6 at width 256)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hf", action="store_true", help="also time transformers generate() (GPT-NeoX, same shape)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="precision of the cached cases (auto: as `generate --precision auto` picks it)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    shape = dict(SMALL, n_layer=args.n_layer)
    cfg = ModelConfig(**shape)
    model = GPT(cfg).to(args.device).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [[0] + torch.randint(3, cfg.vocab_size, (args.prompt_len - 1,), generator=g).tolist()
               for _ in range(max(args.batches))]
    n = args.new_tokens
    greedy = G.SamplingConfig(temperature=0.0)
    default = G.SamplingConfig()  # temperature 0.8, top_k 50, top_p 0.9

    results = {"device": args.device, "threads": torch.get_num_threads(), "model": shape,
               "prompt_len": args.prompt_len, "new_tokens": n}
    device = torch.device(args.device)
    precisions = {b: resolve_precision(args.precision, device, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size, rows=b,
                                       inference_layers=cfg.n_layer)
                  for b in sorted({1, *args.batches})}
    results["precision"] = {str(b): p.to_dict() for b, p in precisions.items()}
    prepared = {}                    # per batch size: the model as the generate stage sets it up
    for b, prec in precisions.items():
        m = copy.deepcopy(model)
        prepared[b] = (m, inference.prepare(m, prec, None, weight_only=True))

    def in_precision(b, fn):
        m, context = prepared[b]

        def run():
            with context():
                fn(m)
        return run

    results["no_cache_greedy"] = n / timed(lambda: uncached(model, prompts[0], n), args.repeats)
    results["cache_greedy"] = n / timed(in_precision(1, lambda m: cached(m, prompts[:1], n, greedy)), args.repeats)
    results["cache_sampling"] = n / timed(in_precision(1, lambda m: cached(m, prompts[:1], n, default)),
                                          args.repeats)
    for b in args.batches:
        results[f"batch_{b}_sampling"] = b * n / timed(in_precision(b, lambda m: cached(m, prompts[:b], n, default)),
                                                       args.repeats)
    if args.hf:
        results["hf_generate_greedy"] = hf_generate(cfg, prompts[0], n, args.repeats)

    if args.json:
        print(json.dumps(results))
        return
    print(f"small preset shape ({cfg.n_layer}x{cfg.n_embd}, vocab {cfg.vocab_size}), {args.device}, "
          f"{results['threads']} thread(s), "
          f"prompt {args.prompt_len} tokens, {n} new tokens; tokens/s (best of {args.repeats})")
    rows = [("1 prompt, no KV cache (greedy)", "no_cache_greedy"), ("1 prompt, KV cache (greedy)", "cache_greedy"),
            ("1 prompt, KV cache (temp 0.8, top-k 50, top-p 0.9)", "cache_sampling")]
    rows += [(f"batch {b}, KV cache, aggregate (sampling)", f"batch_{b}_sampling") for b in args.batches]
    if args.hf:
        rows.append(("transformers generate(), GPT-NeoX same shape (greedy)", "hf_generate_greedy"))
    for label, key in rows:
        print(f"  {label:<58} {results[key]:>9.1f}")
    for b, p in precisions.items():
        print(f"  --precision {args.precision} with {b} prompt(s) per step: {p.name} ({p.reason})")


if __name__ == "__main__":
    main()
