"""Training configuration: the presets, TrainConfig, and the learning-rate schedule.

Owns `PRESETS` (model shape + training defaults by exact name), `TrainConfig` (validated in
`__post_init__`), `make_configs` (preset + overrides -> ModelConfig, TrainConfig), the
data-dependent defaults (`resolve_schedule`) and `lr_at`, the learning rate of every step
(cosine, or warmup-stable-decay for --time-budget runs). Pure: no files, no devices.

Defaults that are not in the presets:
- stride = block_size: training windows do not overlap, so one epoch reads each token once.
- val_fraction = dataset.DEFAULT_VAL_FRACTION (5% of the documents, at least one).
- warmup_steps = 5% of the schedule, at most 500 steps; min_lr = lr / 10.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import dataset
from common import DEVICES
from model import ModelConfig
from precision import AMP, PRECISIONS

# =========================================================================== presets and configs

# Model shape + training defaults, looked up by exact name. `--config custom` starts from
# small's training defaults and takes its shape from --n-layer/--n-head/--n-embd (required)
# and --block-size (default small's).
PRESETS: dict[str, dict] = {
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 256,
              "batch_size": 32, "epochs": 30, "lr": 5e-4},
    "medium": {"n_layer": 10, "n_head": 6, "n_embd": 384, "block_size": 512,
               "batch_size": 16, "epochs": 20, "lr": 3e-4},
    "large": {"n_layer": 10, "n_head": 10, "n_embd": 640, "block_size": 1024,
              "batch_size": 8, "epochs": 15, "lr": 2e-4, "gradient_checkpointing": True},
}
CUSTOM_BASE = "small"
CUSTOM_REQUIRED = ("n_layer", "n_head", "n_embd")
MODEL_FIELDS = ("block_size", "n_layer", "n_head", "n_embd", "dropout")
# train flags (argparse dest names) that override preset / TrainConfig fields; None = not given
CLI_OVERRIDES = ("block_size", "n_embd", "n_layer", "n_head", "dropout", "batch_size", "accumulation_steps",
                 "epochs", "max_steps", "lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip",
                 "patience", "eval_every", "eval_batches", "stride", "val_fraction", "device", "precision",
                 "time_budget", "compile", "gradient_checkpointing", "flash_attention", "num_workers", "seed",
                 "log_every", "sample_prompt")
WARMUP_FRACTION = 0.05                # default warmup: 5% of the schedule ...
WARMUP_MAX = 500                      # ... at most this many steps
MIN_LR_RATIO = 0.1                    # default min_lr = lr * MIN_LR_RATIO


@dataclass
class TrainConfig:
    batch_size: int = 32                 # windows per micro-batch
    accumulation_steps: int = 1          # micro-batches per optimizer step
    epochs: int = 30
    max_steps: Optional[int] = None      # cap on optimizer steps (the schedule ends there)
    max_time: Optional[float] = None     # wall-clock cap on one invocation, seconds
    time_budget: Optional[float] = None  # wall-clock budget of the whole run, seconds: fits total_steps
    lr: float = 5e-4                     # peak learning rate
    min_lr: Optional[float] = None       # end of the cosine decay; None = lr * MIN_LR_RATIO
    warmup_steps: Optional[int] = None   # None = WARMUP_FRACTION of the schedule, <= WARMUP_MAX
    weight_decay: float = 0.1            # AdamW, matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0               # max global gradient norm; 0 = no clipping
    patience: int = 5                    # evaluations without improvement before stopping; 0 = never
    eval_every: int = 250                # optimizer steps between evaluations (also at each epoch end)
    eval_batches: int = 20               # fixed validation batches per evaluation
    stride: Optional[int] = None         # window stride in long documents; None = block_size
    val_fraction: float = dataset.DEFAULT_VAL_FRACTION
    device: str = "auto"
    precision: str = "auto"              # auto | fp32 | bf16 | fp16 | amp (--amp); see precision.py
    compile: bool = False
    gradient_checkpointing: bool = False
    flash_attention: bool = False
    num_workers: int = 0
    seed: int = 1337
    log_every: int = 10                  # steps per log line when stderr is not a terminal
    sample_prompt: Optional[str] = None  # prompt of the greedy sample at each evaluation; None = the
                                         # first words of a validation document
    total_steps: Optional[int] = None    # schedule length; resolved from the data (resolve_schedule)
    decay_start: Optional[int] = None    # set: warmup-stable-decay, linear decay from this step (lr_at)

    def __post_init__(self):
        problems = []

        def check(ok: bool, msg: str):
            if not ok:
                problems.append(msg)

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("batch_size", "accumulation_steps", "epochs", "eval_every", "eval_batches", "log_every"):
            v = getattr(self, name)
            check(is_int(v) and v >= 1, f"{name}={v!r} must be a whole number >= 1")
        for name in ("max_steps", "stride", "total_steps", "decay_start"):
            v = getattr(self, name)
            check(v is None or (is_int(v) and v >= 1), f"{name}={v!r} must be a whole number >= 1")
        for name in ("warmup_steps", "patience", "num_workers"):
            v = getattr(self, name)
            check(v is None or (is_int(v) and v >= 0), f"{name}={v!r} must be a whole number >= 0")
        for name in ("max_time", "time_budget"):
            v = getattr(self, name)
            check(v is None or (is_num(v) and v > 0), f"{name}={v!r} must be a positive number of seconds")
        check(is_num(self.lr) and self.lr > 0, f"lr={self.lr!r} must be a positive number")
        if self.min_lr is not None:
            check(is_num(self.min_lr) and self.min_lr >= 0, f"min_lr={self.min_lr!r} must be >= 0")
            if is_num(self.min_lr) and is_num(self.lr):
                check(self.min_lr <= self.lr, f"min_lr={self.min_lr} must not exceed lr={self.lr}")
        check(is_num(self.weight_decay) and self.weight_decay >= 0,
              f"weight_decay={self.weight_decay!r} must be >= 0")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            check(is_num(v) and 0 <= v < 1, f"{name}={v!r} must be in [0, 1)")
        check(is_num(self.grad_clip) and self.grad_clip >= 0, f"grad_clip={self.grad_clip!r} must be >= 0 (0 = off)")
        check(is_num(self.val_fraction) and 0 <= self.val_fraction < 1,
              f"val_fraction={self.val_fraction!r} must be in [0, 1)")
        check(self.device in DEVICES, f"device={self.device!r} must be one of {', '.join(DEVICES)}")
        check(self.precision in PRECISIONS + (AMP,),
              f"precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        check(is_int(self.seed), f"seed={self.seed!r} must be a whole number")
        check(self.sample_prompt is None or (isinstance(self.sample_prompt, str) and self.sample_prompt.strip()),
              f"sample_prompt={self.sample_prompt!r} must be a non-empty text")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        self.lr = float(self.lr)
        if self.min_lr is not None:
            self.min_lr = float(self.min_lr)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_configs(preset: str, overrides: Optional[dict] = None, *, vocab_size: int,
                 sep_token_id: Optional[int] = 0) -> tuple[ModelConfig, TrainConfig]:
    """ModelConfig and TrainConfig for a preset (exact name) or "custom", with `overrides`
    (None values = not given) changing only their own fields. ValueError listing every problem."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if preset != "custom" and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} or custom")
    known = set(MODEL_FIELDS) | {f.name for f in dataclasses.fields(TrainConfig)} - {"total_steps"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"unknown config fields {unknown}")
    problems = []
    if preset == "custom":
        missing = [f for f in CUSTOM_REQUIRED if f not in given]
        if missing:
            problems.append("--config custom needs " + ", ".join("--" + m.replace("_", "-") for m in missing)
                            + " (or pick a preset: " + ", ".join(PRESETS) + ")")
    values = {**PRESETS[CUSTOM_BASE if preset == "custom" else preset], **given}
    model_kw = {k: values.pop(k) for k in MODEL_FIELDS if k in values}
    mcfg = tcfg = None
    try:
        mcfg = ModelConfig(vocab_size=vocab_size, sep_token_id=sep_token_id, **model_kw)
    except ValueError as e:
        problems.append(str(e))
    try:
        tcfg = TrainConfig(**values)
    except ValueError as e:
        problems.append(str(e))
    if mcfg is not None and tcfg is not None and tcfg.stride is not None and tcfg.stride > mcfg.block_size:
        problems.append(f"stride={tcfg.stride} must not exceed block_size={mcfg.block_size} "
                        f"(a larger stride would skip tokens)")
    if problems:
        raise ValueError("; ".join(problems))
    return mcfg, tcfg


def resolve_schedule(cfg: TrainConfig, steps_per_epoch: int, budget_steps: Optional[int] = None) -> TrainConfig:
    """Fill in the data-dependent defaults: total_steps, warmup_steps and min_lr.

    total_steps is epochs x steps_per_epoch, capped by max_steps and by `budget_steps` (the steps
    that fit the --time-budget, see Trainer.plan_time_budget)."""
    total = cfg.epochs * steps_per_epoch
    for cap in (cfg.max_steps, budget_steps):
        if cap is not None:
            total = min(total, cap)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(WARMUP_MAX, int(total * WARMUP_FRACTION))
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr * MIN_LR_RATIO
    return dataclasses.replace(cfg, total_steps=max(1, total), warmup_steps=warmup, min_lr=min_lr)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based) of a schedule of cfg.total_steps steps.

    Linear warmup lr * (step + 1) / (warmup + 1) for step < warmup (never 0 at step 0), the peak
    lr at step == warmup, then cosine decay reaching cfg.min_lr exactly at the last step
    (total_steps - 1); min_lr after that. With cfg.decay_start set (--time-budget runs), the
    warmup-stable-decay schedule of `_wsd_lr` instead.
    """
    assert cfg.total_steps is not None and cfg.warmup_steps is not None and cfg.min_lr is not None, \
        "call resolve_schedule() first"
    if cfg.decay_start is not None:
        return _wsd_lr(step, cfg)
    warmup, last = cfg.warmup_steps, cfg.total_steps - 1
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    if step >= last:
        return cfg.min_lr if last > warmup else cfg.lr
    progress = (step - warmup) / (last - warmup)  # 0 at the end of warmup, 1 at the last step
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def _wsd_lr(step: int, cfg: TrainConfig) -> float:
    """Warmup-stable-decay: the same linear warmup, the peak lr until cfg.decay_start, then a
    linear decay from there reaching cfg.min_lr exactly at the last step; min_lr after that."""
    warmup, decay, last = cfg.warmup_steps, cfg.decay_start, cfg.total_steps - 1
    if step >= last:
        return cfg.min_lr
    if step < decay:
        return cfg.lr * (step + 1) / (warmup + 1) if step < warmup else cfg.lr
    start = cfg.lr if decay >= warmup else cfg.lr * (decay + 1) / (warmup + 1)
    return start + (cfg.min_lr - start) * (step - decay) / (last - decay)
