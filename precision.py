"""Numeric precision per machine: `--precision auto|fp32|bf16|fp16` -> a `Precision`.

`resolve_precision` is the one place that decides how `train`, `evaluate` and `generate` compute:

- CUDA, `auto`: bf16 autocast where the GPU supports it, else fp16 with a gradient scaler.
- CPU, `auto`: bf16 autocast only when the CPU has native bf16 instructions (AVX512_BF16 or
  AMX on x86-64, the BF16 extension on ARM) *and* a short micro-benchmark of the model's own
  matmul shapes measures bf16 faster than fp32; else fp32. Without native support bf16 is
  emulated and 10-30x slower than fp32, so the benchmark is not even run, with one exception:
  decoding up to ATEN_BF16_ROWS rows at a time (`rows` with `inference_layers`), whose products
  ATen computes from bf16 weights with float32 arithmetic (inference.FrozenLinear), native bf16
  or not. Generation and evaluation store the weights in bf16 once and measure that way (with
  the model's depth: batch-1 decoding is bound by the bytes of weights it reads per token);
  training measures autocast, which casts fp32 weights at each call. The measured ratio is
  cached per machine (CPU, threads, torch version, shapes, training or inference) in
  ~/.cache/mini-llm/precision.json.
- MPS, `auto`: fp32.
- An explicit choice is honoured; bf16 or fp16 on a CPU without native support runs with a
  one-line warning that it will be much slower.

The environment variable MINI_LLM_NATIVE_BF16=1|0 overrides the CPU capability check (for
CPUs whose flags a hypervisor hides, and for tests); MINI_LLM_PRECISION_CACHE=FOLDER moves the
cache.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from common import UserError, cache_dir, log, read_json, write_json

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AMP = "amp"                 # what --amp means: the device's half precision (bf16, or fp16 on old GPUs)
BF16_MIN_SPEEDUP = 1.15     # auto picks bf16 on CPU only when it measures at least this much faster
ATEN_BF16_ROWS = 4          # without native bf16, ATen's bf16 product beats float32 up to ~4 rows: decoding
                            # 2.3-2.7x / 2.2x / 1.3-1.5x / 0.8x at batch 1 / 2 / 4 / 8 (6 x 256, AVX2 kernels)
CACHE_FILE = "precision.json"
NATIVE_BF16_ENV = "MINI_LLM_NATIVE_BF16"
CACHE_ENV = "MINI_LLM_PRECISION_CACHE"
_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_X86_FP16_FLAGS = ("avx512_fp16", "amx_fp16")
_BENCH_FLOPS = 2e9          # matmul work per timed pass: ~10-20 ms in fp32 on a 2-core CPU ...
_BENCH_MIN_ROWS = 256       # ... but never fewer rows than this (or the model's own, if fewer),
_BENCH_MAX_VOCAB = 8192     # and at most this many output-head columns: big enough to show the kernel
_BENCH_MAX_FLOATS = 16 * 2**20   # inference: weights of at most this many floats (64 MB), beyond any cache


@dataclass(frozen=True)
class Precision:
    name: str                            # "fp32", "bf16" or "fp16"
    device_type: str                     # "cpu", "cuda", "mps"
    requested: str = "auto"              # what the user asked for ("amp" = --amp)
    reason: str = ""                     # why this precision, in words
    bf16_speedup: Optional[float] = None  # measured fp32 time / bf16 time (CPU auto only)

    @property
    def dtype(self):
        import torch
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def use_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range."""
        return self.name == "fp16"

    def autocast(self):
        """The autocast context for forward passes (a no-op context for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        import torch
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        what = "fp32" if self.name == "fp32" else f"{self.name} autocast"
        if self.use_scaler:
            what += " + grad scaler"
        return f"{what} ({self.reason})" if self.reason else what

    def to_dict(self) -> dict:
        return {"requested": self.requested, "chosen": self.name, "reason": self.reason,
                "bf16_speedup": self.bf16_speedup}


# =========================================================================== CPU capabilities

@functools.lru_cache(maxsize=1)
def _cpu_flags() -> tuple[str, frozenset[str]]:
    """(CPU model name, feature flags) from /proc/cpuinfo (x86 "flags", ARM "Features"); read
    once per process (the capability check and the cache key both need it)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model or platform.machine(), frozenset(flags)


def _macos_has(feature: str) -> bool:
    try:
        out = subprocess.run(["sysctl", "-n", f"hw.optional.arm.{feature}"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() == "1"
    except (OSError, subprocess.SubprocessError):
        return False


def cpu_native_bf16() -> Optional[str]:
    """The native bf16 feature of this CPU ("avx512_bf16", "amx_bf16", "bf16"), or None.

    MINI_LLM_NATIVE_BF16=1 / 0 overrides the detection."""
    forced = os.environ.get(NATIVE_BF16_ENV)
    if forced is not None and forced.strip() != "":
        return f"{NATIVE_BF16_ENV}={forced.strip()}" if forced.strip() not in ("0", "false", "no") else None
    if platform.system() == "Darwin":
        return "bf16" if _macos_has("FEAT_BF16") else None
    _, flags = _cpu_flags()
    found = [f for f in _X86_BF16_FLAGS if f in flags] or (["bf16"] if "bf16" in flags else [])
    return found[0] if found else None


def cpu_int8_dot_product() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512_VNNI or AVX_VNNI): where int8
    products of many rows are about twice as fast as float32 ones. Without them oneDNN's int8
    kernels may saturate their 16-bit sums on full-range weights."""
    _, flags = _cpu_flags()
    return "avx512_vnni" in flags or "avx_vnni" in flags


def cpu_native_fp16() -> bool:
    _, flags = _cpu_flags()
    return any(f in flags for f in _X86_FP16_FLAGS) or "asimdhp" in flags or platform.system() == "Darwin"


# =========================================================================== the micro-benchmark

def matmul_shapes(n_embd: int, vocab_size: int) -> list[tuple[int, int]]:
    """(in, out) features of every Linear of one block and of the output head (its columns capped
    at _BENCH_MAX_VOCAB: the kernel's speed no longer depends on them past that)."""
    C = n_embd
    return [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C), (C, min(vocab_size, _BENCH_MAX_VOCAB))]


def benchmark_rows(n_embd: int, vocab_size: int, rows: int) -> int:
    """Rows (tokens) per benchmark matmul: the model's own, capped so that a pass costs
    about _BENCH_FLOPS (so the benchmark stays well under a second on any CPU), but not below
    _BENCH_MIN_ROWS, where small matrices would measure another kernel than the model's."""
    per_row = 2 * sum(i * o for i, o in matmul_shapes(n_embd, vocab_size))
    return max(1, min(int(rows), max(_BENCH_MIN_ROWS, int(_BENCH_FLOPS // per_row))))


def aten_bf16_rows(native: bool) -> int:
    """The most rows per product that inference.FrozenLinear multiplies by ATen's bf16 kernel
    (bf16 weights, float32 arithmetic, no bf16 instructions needed): one with native bf16, where
    oneDNN's packed weights are faster from two rows on; ATEN_BF16_ROWS without."""
    return 1 if native else ATEN_BF16_ROWS


def decodes_by_aten(rows: int, inference_layers: int) -> bool:
    """Whether a precision is asked for token-by-token decoding of so few rows per pass (the batch
    size) that ATen's bf16 product multiplies them (aten_bf16_rows): native bf16 or not."""
    return bool(inference_layers) and rows <= aten_bf16_rows(cpu_native_bf16() is not None)


def measure_bf16_speedup(n_embd: int, vocab_size: int, rows: int, reps: int = 3,
                         inference_layers: int = 0) -> float:
    """fp32 time / bf16 time of the model's matmuls (forward Linear layers) on the CPU.

    Training (inference_layers=0): one block's Linear layers and the output head under bf16
    autocast, which casts the fp32 weights at every call. Inference (inference_layers=L): L
    blocks' weights and the head, stored in bf16 beforehand as generate and evaluate store them
    (inference.prepare), so that a pass reads as many weight bytes as the model's
    forward does: batch-1 decoding is bound by those bytes, not by arithmetic.

    fp32 and bf16 passes alternate after one untimed pass each, and each side keeps its best, so
    a neighbour that loads the CPU for a while slows both sides alike. At least `reps` pairs, and
    enough to fill ~60 ms (tiny shapes); a bf16 side still 3x slower than fp32 after two pairs
    ends the measurement (emulated bf16 is ~20x slower: no need to wait for it).

    Inference of as few rows as decodes_by_aten allows multiplies as inference.FrozenLinear does:
    ATen's bf16 kernel, float32 activations, no autocast (with native bf16 FrozenLinear multiplies
    a large output head by its packed weight instead, faster still: the measure errs low there)."""
    import torch
    import torch.nn.functional as F
    from inference import aten_bf16_product
    g = torch.Generator().manual_seed(0)
    rows = benchmark_rows(n_embd, vocab_size, rows)
    shapes = matmul_shapes(n_embd, vocab_size)
    if inference_layers:                  # the model's depth, up to _BENCH_MAX_FLOATS of weights
        per_layer = sum(i * o for i, o in shapes[:-1])
        shapes = shapes[:-1] * min(inference_layers, max(1, _BENCH_MAX_FLOATS // per_layer)) + shapes[-1:]
    weights = [torch.randn(o, i, generator=g) * i ** -0.5 for i, o in shapes]
    inputs = {i: torch.randn(rows, i, generator=g) for i, _ in shapes}
    half = [w.to(torch.bfloat16) for w in weights] if inference_layers else weights

    aten = decodes_by_aten(rows, inference_layers)

    def one_pass(bf16: bool) -> float:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 and not aten else contextlib.nullcontext()
        ws = half if bf16 else weights
        t = time.perf_counter()
        with torch.inference_mode(), ctx:
            for w in ws:
                if bf16 and aten:
                    aten_bf16_product(inputs[w.shape[1]], w)
                else:
                    F.linear(inputs[w.shape[1]], w)
        return time.perf_counter() - t

    one_pass(False)
    one_pass(True)
    fp32, bf16 = [], []
    while len(fp32) < reps or (sum(fp32) + sum(bf16) < 0.06 and len(fp32) < 1000):
        fp32.append(one_pass(False))
        bf16.append(one_pass(True))
        if len(bf16) >= 2 and min(bf16) > 3 * min(fp32):
            break
    return min(fp32) / max(min(bf16), 1e-9)


def _cache_key(n_embd: int, vocab_size: int, rows: int, inference_layers: int = 0) -> str:
    import torch
    model, flags = _cpu_flags()
    flag_hash = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12]
    rows = benchmark_rows(n_embd, vocab_size, rows)
    what = f"inference {inference_layers} layers" if inference_layers else "training"
    # the kernels' instruction sets: ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA may hold them below the CPU's
    isa = f"{torch.backends.cpu.get_cpu_capability()}/{os.environ.get('ONEDNN_MAX_CPU_ISA', '').strip().upper() or '-'}"
    return (f"v4|{model}|flags {flag_hash}|kernels {isa}|torch {torch.__version__}|threads {torch.get_num_threads()}"
            f"|{rows}x{n_embd}x{vocab_size}|{what}")


def cached_bf16_speedup(n_embd: int, vocab_size: int, rows: int, inference_layers: int = 0) -> tuple[float, bool]:
    """(speedup, was it cached): the measured ratio for this machine and shape, measured once."""
    path = Path(os.environ.get(CACHE_ENV) or cache_dir()) / CACHE_FILE
    key = _cache_key(n_embd, vocab_size, rows, inference_layers)
    cache: dict = {}
    if path.is_file():
        try:
            cache = read_json(path, "precision cache")
        except UserError:
            cache = {}                             # a damaged cache is measured again
        if not isinstance(cache, dict):
            cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and isinstance(hit.get("bf16_speedup"), (int, float)):
        return float(hit["bf16_speedup"]), True
    speedup = measure_bf16_speedup(n_embd, vocab_size, rows, inference_layers=inference_layers)
    cache[key] = {"bf16_speedup": round(speedup, 3), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        write_json(path, cache)
    except OSError as e:                           # a read-only home: measure again next time
        log.debug(f"could not write {path}: {e}")
    return speedup, False


# =========================================================================== the choice

def resolve_precision(requested: str, device, *, n_embd: int, vocab_size: int, rows: int,
                      inference_layers: int = 0, warn_emulated: bool = True) -> Precision:
    """The precision to compute in on `device` for a model of width `n_embd` and vocabulary
    `vocab_size` running `rows` tokens per forward pass (batch x block for training and
    evaluation, the batch size for token-by-token generation). `inference_layers`: the model's
    depth when it runs with its weights stored in half precision (generate, evaluate: see
    measure_bf16_speedup); 0 for training. `warn_emulated`: warn that an explicit bf16 on a CPU
    without native bf16 is slow (the caller may warn in its own words). See the module docstring."""
    import torch
    kind = device.type
    if requested not in PRECISIONS + (AMP,):
        raise UserError(f"--precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return Precision("fp32", kind, requested, "asked for")
    if kind == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested in ("auto", AMP):
            return (Precision("bf16", kind, requested, "CUDA GPU with bf16 support") if bf16_ok else
                    Precision("fp16", kind, requested, "CUDA GPU without bf16: fp16 with loss scaling"))
        if requested == "bf16" and not bf16_ok:
            raise UserError("--precision bf16: this GPU has no bf16 support; use --precision fp16 or auto")
        return Precision(requested, kind, requested, "asked for")
    if kind == "mps":
        if requested == "auto":
            return Precision("fp32", kind, requested, "default on Apple MPS")
        return Precision("bf16" if requested == AMP else requested, kind, requested, "asked for")
    # CPU
    native = cpu_native_bf16()
    aten = decodes_by_aten(rows, inference_layers)   # needs no native bf16
    few_rows = f"{rows} row{'s' if rows > 1 else ''}"
    if requested in ("bf16", AMP):
        if native is None and aten:
            return Precision("bf16", kind, requested, f"asked for; no native bf16 on this CPU, which decoding "
                                                      f"{few_rows} at a time does not need")
        if native is None:
            if warn_emulated:
                log.warning("warning: bf16 on a CPU without native bf16 (no AVX512_BF16/AMX): expect it to be "
                            "10-30x slower than fp32; --precision auto picks the faster one")
            return Precision("bf16", kind, requested, "asked for; no native bf16 on this CPU")
        return Precision("bf16", kind, requested, f"asked for; native bf16 ({native})")
    if requested == "fp16":
        if not cpu_native_fp16():
            log.warning("warning: fp16 on a CPU without native fp16 (no AVX512_FP16/AMX-FP16) is emulated "
                        "and much slower than fp32; --precision auto picks the faster one")
        return Precision("fp16", kind, requested, "asked for")
    if native is None and not aten:
        return Precision("fp32", kind, requested, "this CPU has no native bf16 (AVX512_BF16/AMX), where "
                                                  "bf16 would be 10-30x slower")
    speedup, cached = cached_bf16_speedup(n_embd, vocab_size, rows, inference_layers)
    how = f"bf16 matmuls of this model's shapes measured {speedup:.2f}x as fast as fp32" + \
          (" (cached)" if cached else "")
    why = f"native bf16 ({native})" if native else f"no native bf16, which products of {few_rows} do not need"
    if speedup >= BF16_MIN_SPEEDUP:
        return Precision("bf16", kind, requested, f"{why}; {how}", round(speedup, 3))
    return Precision("fp32", kind, requested, f"{why}, but {how}, below the {BF16_MIN_SPEEDUP}x needed",
                     round(speedup, 3))


def log_choice(p: Precision, stage: str) -> None:
    """The one line that says which precision a stage computes in, and why."""
    log.info(f"{stage} precision: {p.describe()}")


def to_precision_arg(precision: Optional[str], amp: Optional[bool]) -> str:
    """Combine --precision with its aliases --amp / --no-amp (None = not given) into one value."""
    if amp is None:
        return precision or "auto"
    if precision not in (None, "auto"):
        raise UserError(f"--precision {precision} and --{'' if amp else 'no-'}amp contradict each other; "
                        f"pass one of them")
    return AMP if amp else "fp32"

