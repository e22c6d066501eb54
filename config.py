"""Configuration: ModelConfig, TrainConfig, the presets, the train flags, the learning-rate schedule.

Owns `ModelConfig` (the network's shape) and `TrainConfig` (the run's settings), both validated
in `__post_init__`; `PRESETS` (model shape + training defaults by exact name); `make_configs`
(preset + overrides -> ModelConfig, TrainConfig); `train_flags`, the `train` command's flags,
their help and preset values, derived from the fields (a field with `flag=` metadata is a flag;
add a field there and it is on the command line); the data-dependent defaults
(`resolve_schedule`) and `lr_at`, the learning rate of every step (cosine, or
warmup-stable-decay for --time-budget runs). Pure: no torch, no files, no devices.

Defaults that are not in the presets:
- stride = block_size: training windows do not overlap, so one epoch reads each token once.
- val_fraction = DEFAULT_VAL_FRACTION (5% of the documents, at least one).
- warmup_steps = 5% of the schedule, at most 500 steps; min_lr = lr / 10.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from common import DEVICES
from precision import AMP, PRECISIONS

OPTIMIZERS = ("adamw", "muon")  # optimizers.make_optimizer
DEFAULT_VAL_FRACTION = 0.05     # of documents; at least one document when > 0 (dataset.split_documents)

# =========================================================================== fields that are flags

def _flag(default, kind: str, help: str, *, default_text: Optional[str] = None, choices: tuple = ()):
    """A config field that is also a `train` flag, --name-with-dashes. `kind` names its parser in
    main.py: int>=1, int>=0, int, float, fraction, bool, duration, choice, text or precision. The
    help gets "(preset: ...)" when a preset sets the field, else "(default: <default_text or the
    field's default>)"; flags without a value keep the preset's or the field's default."""
    return field(default=default, metadata={"flag": dict(kind=kind, help=help, default_text=default_text,
                                                         choices=choices)})


@dataclass(frozen=True)
class Flag:
    name: str            # config field = argparse dest
    kind: str
    help: str            # with the default or each preset's value
    choices: tuple = ()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


# =========================================================================== model config

# Far above any model this tool trains; a config beyond them (a damaged or foreign checkpoint)
# is refused before anything is allocated.
VOCAB_MULTIPLE = 64  # the embedding is padded to a multiple of this (ModelConfig.padded_vocab_size)
MODEL_LIMITS = {"vocab_size": 1 << 21, "block_size": 1 << 17, "n_layer": 512, "n_head": 1024, "n_embd": 1 << 19}

# The architecture families: each a fixed set of choices, each exported exactly to its Hugging Face
# model class (export.py). Every family has RoPE, pre-norm blocks and an output head tied to the
# embedding (ModelConfig.tie_embeddings=False unties it; the README's "Training recipe" measures it).
FAMILIES = {
    "neox": "LayerNorm and biases, GELU MLP 4x wide (GPT-NeoX)",
    "llama": "RMSNorm, SwiGLU MLP 8/3x wide, no biases (Llama)",
    "qwen3": "llama plus an RMS norm of each head's queries and keys before RoPE (Qwen3)",
}


# The MLP's activation, by family: the first is the family's own (GELU for neox, SwiGLU's SiLU gate
# for llama and qwen3); relu2 (ReLU squared, gated in llama and qwen3) is kept for the ablation in
# the README's "Training recipe". The names are transformers' `hidden_act`, so exports stay exact.
ACTIVATIONS = {"neox": ("gelu", "relu2"), "llama": ("silu", "relu2"), "qwen3": ("silu", "relu2")}


def default_intermediate_size(family: str, n_embd: int) -> int:
    """The MLP's hidden width: 4 C for neox; for the gated (SwiGLU) families 8 C / 3, which gives
    the same parameters as a 4 C GELU MLP (three matrices instead of two)."""
    return 4 * n_embd if family == "neox" else round(8 * n_embd / 3)


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    block_size: int = _flag(256, "int>=1", "context length in tokens")
    n_layer: int = _flag(4, "int>=1", "transformer blocks")
    n_head: int = _flag(4, "int>=1", "attention heads")
    n_embd: int = _flag(256, "int>=1", "model width")
    family: str = _flag("neox", "choice", "architecture family: "
                        + "; ".join(f"{k} = {v}" for k, v in FAMILIES.items()), choices=tuple(FAMILIES))
    intermediate_size: Optional[int] = _flag(None, "int>=1", "hidden width of the MLP",
                                             default_text="4 x n_embd for neox, 8/3 x n_embd for llama and qwen3")
    dropout: float = _flag(0.0, "float", "dropout probability")
    bias: Optional[bool] = None    # biases in Linear and LayerNorm layers: neox only (None = the family's)
    activation: Optional[str] = None  # the MLP's, one of ACTIVATIONS[family] (None = the family's own)
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    sep_token_id: int | None = 0   # document-aware attention + RoPE restart at this token
    tie_embeddings: bool = True    # the output head is the embedding matrix (False: a matrix of its own)

    def __post_init__(self):
        problems = []

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if not is_int(v) or v <= 0:
                problems.append(f"{name}={v!r} must be a positive whole number")
            elif v > MODEL_LIMITS[name]:
                problems.append(f"{name}={v:,} is beyond what mini-llm builds (at most {MODEL_LIMITS[name]:,})")
        sizes_ok = all(is_int(getattr(self, n)) and getattr(self, n) > 0 for n in ("n_embd", "n_head"))
        if sizes_ok and self.n_embd % self.n_head != 0:
            problems.append(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        elif sizes_ok and (self.n_embd // self.n_head) % 2 != 0:
            problems.append(f"head dim n_embd/n_head={self.n_embd // self.n_head} must be even for RoPE "
                            f"(n_embd={self.n_embd}, n_head={self.n_head})")
        if self.family not in FAMILIES:
            problems.append(f"family={self.family!r} must be one of {', '.join(FAMILIES)}")
        if self.intermediate_size is not None and (not is_int(self.intermediate_size) or self.intermediate_size <= 0):
            problems.append(f"intermediate_size={self.intermediate_size!r} must be a positive whole number")
        if self.activation is not None and self.family in FAMILIES \
                and self.activation not in ACTIVATIONS[self.family]:
            problems.append(f"activation={self.activation!r} must be one of {', '.join(ACTIVATIONS[self.family])} "
                            f"for the {self.family} family")
        if self.bias and self.family != "neox":
            problems.append(f"bias=True: the {self.family} family has no biases (only neox has them)")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) \
                or not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout!r} must be in [0, 1)")
        if self.bias is not None and not isinstance(self.bias, bool):
            problems.append(f"bias={self.bias!r} must be true or false")
        if not isinstance(self.tie_embeddings, bool):
            problems.append(f"tie_embeddings={self.tie_embeddings!r} must be true or false")
        if not isinstance(self.rope_base, (int, float)) or isinstance(self.rope_base, bool) \
                or not self.rope_base > 0:
            problems.append(f"rope_base={self.rope_base!r} must be a positive number")
        if not isinstance(self.norm_eps, (int, float)) or isinstance(self.norm_eps, bool) \
                or not self.norm_eps > 0:
            problems.append(f"norm_eps={self.norm_eps!r} must be a positive number")
        if self.sep_token_id is not None:
            if not is_int(self.sep_token_id) or self.sep_token_id < 0:
                problems.append(f"sep_token_id={self.sep_token_id!r} must be a token id >= 0 or None")
            elif is_int(self.vocab_size) and self.sep_token_id >= self.vocab_size:
                problems.append(f"sep_token_id={self.sep_token_id} must be < vocab_size={self.vocab_size}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))
        if self.bias is None:
            self.bias = self.family == "neox"
        if self.activation is None:
            self.activation = ACTIVATIONS[self.family][0]
        if self.intermediate_size is None:
            self.intermediate_size = default_intermediate_size(self.family, self.n_embd)
        self.dropout = float(self.dropout)
        self.rope_base = float(self.rope_base)
        self.norm_eps = float(self.norm_eps)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def gated_mlp(self) -> bool:
        """A gated MLP, act(gate) * up (llama, qwen3), rather than act(fc(x)) (neox)."""
        return self.family != "neox"

    def num_parameters(self) -> int:
        """Trainable parameters of model.GPT with this shape, without building it: the embedding
        (and an untied output head of the same shape), per block two norms, qkv, attention
        output, the MLP (and the QK-norm scales of qwen3), a final norm (tests/test_model.py
        checks it against GPT.num_parameters for every family)."""
        C, b, I = self.n_embd, int(self.bias), self.intermediate_size
        norm = C * (1 + b)                                       # RMSNorm: a scale; LayerNorm: + bias
        attn = (3 * C * C + 3 * C * b) + (C * C + C * b)
        mlp = 3 * C * I if self.gated_mlp else (C * I + I * b) + (I * C + C * b)
        qk_norm = 2 * self.head_dim if self.family == "qwen3" else 0
        vocab_matrices = 1 if self.tie_embeddings else 2
        return vocab_matrices * self.vocab_size * C + self.n_layer * (2 * norm + attn + mlp + qk_norm) + norm

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding / output head in memory: vocab_size rounded up to a multiple of
        VOCAB_MULTIPLE, so the head's matmul has GPU-friendly shapes. The padding rows stay zero,
        their logits are -inf (never sampled, no gradient), and checkpoints and exports hold
        only the vocab_size real rows."""
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)


# =========================================================================== presets and configs

# Model shape + training defaults, looked up by exact name. `--config custom` starts from
# small's training defaults and takes its shape from --n-layer/--n-head/--n-embd (required)
# and --block-size (default small's).
# The training recipe (README "Training recipe", measured with bench/quality.py): GPT-NeoX with
# Muon, a small batch and a high learning rate. neox matches qwen3 per token and trains ~13% more
# tokens per second, so it wins at equal wall-clock time. small's batch and lr are measured;
# medium's and large's lr keep the old ratios to small's (0.6x, 0.4x), not measured yet.
RECIPE = {"family": "neox", "optimizer": "muon"}
PRESETS: dict[str, dict] = {
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 256,
              "batch_size": 8, "epochs": 30, "lr": 4e-3, **RECIPE},
    "medium": {"n_layer": 10, "n_head": 6, "n_embd": 384, "block_size": 512,
               "batch_size": 16, "epochs": 20, "lr": 2.4e-3, **RECIPE},
    "large": {"n_layer": 10, "n_head": 10, "n_embd": 640, "block_size": 1024,
              "batch_size": 8, "epochs": 15, "lr": 1.6e-3, "gradient_checkpointing": True, **RECIPE},
}
CUSTOM_BASE = "small"
CUSTOM_REQUIRED = ("n_layer", "n_head", "n_embd")
WARMUP_FRACTION = 0.05                # default warmup: 5% of the schedule ...
WARMUP_MAX = 500                      # ... at most this many steps
MIN_LR_RATIO = 0.1                    # default min_lr = lr * MIN_LR_RATIO
INIT_FROM_LR_FACTOR = 0.5            # train --init-from: default peak lr = the preset's x this (README:
INIT_FROM_WARMUP_FRACTION = 0.2      # "Domain adaptation", measured) and this share of warmup
WSD_DECAY_FRACTION = 0.2              # --schedule wsd (and --time-budget): the decay's share of the steps
SCHEDULES = ("cosine", "wsd")
MAX_WORKERS = 64                      # data loader processes: more only thrashes (and could exhaust the PIDs)


@dataclass
class TrainConfig:
    batch_size: int = _flag(32, "int>=1", "windows per micro-batch")
    accumulation_steps: int = _flag(1, "int>=1", "micro-batches per optimizer step")
    epochs: int = _flag(30, "int>=1", "passes over the training windows")
    max_steps: Optional[int] = _flag(None, "int>=1", "cap on optimizer steps; the learning-rate schedule ends "
                                     "there", default_text="no cap")
    max_time: Optional[float] = _flag(
        None, "duration", "wall-clock cap on this invocation, e.g. 2h, 90m, 1h30m: stop at the next step "
        "boundary past it, evaluate, save and exit 0 (re-run to continue)", default_text="no cap")
    time_budget: Optional[float] = _flag(
        None, "duration", "wall-clock budget of the whole run, e.g. 10m, 2h: the number of steps (and so the "
        "learning-rate schedule) is fitted to it from the measured step time, so the run ends on time with a "
        "fully decayed learning rate; --epochs and --max-steps still cap it. Once fixed, the step count is "
        "kept in the checkpoint (resume is exact)", default_text="none")
    lr: float = _flag(5e-4, "float", "peak learning rate")
    min_lr: Optional[float] = _flag(None, "float", "learning rate at the last step of the decay",
                                    default_text=f"lr x {MIN_LR_RATIO}")
    schedule: str = _flag("cosine", "choice", "after the warmup: cosine decay to --min-lr, or wsd (warmup-stable-"
                          f"decay: the peak lr, then a linear decay over the last {WSD_DECAY_FRACTION:.0%} of the "
                          "steps); --time-budget runs always use wsd", choices=SCHEDULES)
    warmup_steps: Optional[int] = _flag(None, "int>=0", "linear warmup in optimizer steps",
                                        default_text=f"{WARMUP_FRACTION:.0%} of the schedule, "
                                                     f"{INIT_FROM_WARMUP_FRACTION:.0%} with --init-from; at most "
                                                     f"{WARMUP_MAX}")
    optimizer: str = _flag("adamw", "choice", "adamw, or muon: Muon on the matrices inside the blocks, AdamW on "
                           "the embedding, norms and biases (one --lr for both)", choices=OPTIMIZERS)
    weight_decay: float = _flag(0.1, "float", "decoupled weight decay, matrices only")
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = _flag(1.0, "float", "clip the global gradient norm (0 = off)")
    z_loss: float = _flag(0.0, "float", "z-loss weight: adds z x logsumexp^2 of the logits to the objective (e.g. "
                          "1e-4; the logged loss stays the cross-entropy)")
    select_on: Optional[str] = _flag(None, "text", "with several --corpus files: the corpus whose validation "
                                     "loss picks ckpt_best.pt and drives early stopping",
                                     default_text="the weighted total")
    patience: int = _flag(5, "int>=0", "stop after this many evaluations without improvement (0 = never)")
    eval_every: int = _flag(250, "int>=1", "evaluate every N optimizer steps, and at the end of every epoch")
    eval_batches: int = _flag(20, "int>=1", "fixed validation batches per evaluation")
    stride: Optional[int] = _flag(None, "int>=1", "window stride inside long documents, in tokens",
                                  default_text="the block size, so windows do not overlap")
    val_fraction: float = _flag(DEFAULT_VAL_FRACTION, "fraction",
                                "fraction of documents held out for validation (0 = none)")
    device: str = _flag("auto", "choice", "device", choices=DEVICES)
    precision: str = _flag("auto", "precision", "numeric precision")  # main.py adds --amp and the help
    compile: bool = _flag(False, "bool", "torch.compile the model")
    gradient_checkpointing: bool = _flag(False, "bool", "recompute activations per block to save memory")
    flash_attention: bool = _flag(False, "bool", "CUDA attention kernels: flash-attn when installed (its "
                                  "varlen kernel for windows holding several documents), else FlexAttention "
                                  "for those; SDPA elsewhere (the choice is logged)")
    num_workers: int = _flag(0, "int>=0", "data loader worker processes")
    seed: int = _flag(1337, "int", "random seed (weights, data order, dropout)")
    log_every: int = _flag(10, "int>=1", "read the training statistics from the device every N steps, "
                             "and write a log line then when stderr is not a terminal")
    sample_prompt: Optional[str] = _flag(
        None, "text", "prompt of the greedy sample logged and kept in history.json at each evaluation",
        default_text="the first words of a validation document")
    warmup_fraction: float = WARMUP_FRACTION   # default warmup share (INIT_FROM_WARMUP_FRACTION for --init-from)
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
        check(not is_int(self.num_workers) or self.num_workers <= MAX_WORKERS,
              f"num_workers={self.num_workers} must be at most {MAX_WORKERS}")
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
        check(is_num(self.z_loss) and self.z_loss >= 0, f"z_loss={self.z_loss!r} must be >= 0 (0 = off)")
        check(is_num(self.val_fraction) and 0 <= self.val_fraction < 1,
              f"val_fraction={self.val_fraction!r} must be in [0, 1)")
        check(self.device in DEVICES, f"device={self.device!r} must be one of {', '.join(DEVICES)}")
        check(self.precision in PRECISIONS + (AMP,),
              f"precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        check(is_int(self.seed) and 0 <= self.seed < 2**63, f"seed={self.seed!r} must be a whole number in "
                                                             f"0..2**63-1")
        check(is_num(self.warmup_fraction) and 0 <= self.warmup_fraction < 1,
              f"warmup_fraction={self.warmup_fraction!r} must be in [0, 1)")
        check(self.select_on is None or (isinstance(self.select_on, str) and self.select_on.strip()),
              f"select_on={self.select_on!r} must be a corpus name")
        check(self.sample_prompt is None or (isinstance(self.sample_prompt, str) and self.sample_prompt.strip()),
              f"sample_prompt={self.sample_prompt!r} must be a non-empty text")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        self.lr = float(self.lr)
        if self.min_lr is not None:
            self.min_lr = float(self.min_lr)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _flag_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "flag" in f.metadata]


def _shown(v) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "on", False: "off", None: "none"}[v]
    return f"{v:g}" if isinstance(v, float) else str(v)


def train_flags() -> list[Flag]:
    """The `train` flags that override a preset or config field: model shape first, then training,
    in field order, each help ending with its default or every preset's value."""
    flags = []
    for cls in (ModelConfig, TrainConfig):
        for f in _flag_fields(cls):
            meta = f.metadata["flag"]
            if any(f.name in values for values in PRESETS.values()):
                default = "preset: " + ", ".join(f"{name} {_shown(values.get(f.name, f.default))}"
                                                 for name, values in PRESETS.items())
            else:
                default = "default: " + (meta["default_text"] or _shown(f.default))
            flags.append(Flag(f.name, meta["kind"], f"{meta['help']} ({default})", meta["choices"]))
    return flags


MODEL_FIELDS = tuple(f.name for f in _flag_fields(ModelConfig))     # set by presets and flags
CLI_OVERRIDES = tuple(f.name for f in _flag_fields(ModelConfig) + _flag_fields(TrainConfig))


def preset_parameters(preset: str, vocab_size: int = 32000) -> int:
    """Trainable parameters of a preset's model at `vocab_size` (ModelConfig.num_parameters)."""
    shape = {k: v for k, v in PRESETS[preset].items() if k in MODEL_FIELDS}
    return ModelConfig(vocab_size=vocab_size, **shape).num_parameters()


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
    that fit the --time-budget, see budget.TimeBudget). --schedule wsd sets decay_start: the
    last WSD_DECAY_FRACTION of the steps decay (never before the warmup ends)."""
    total = cfg.epochs * steps_per_epoch
    for cap in (cfg.max_steps, budget_steps):
        if cap is not None:
            total = min(total, cap)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(WARMUP_MAX, int(total * cfg.warmup_fraction))
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr * MIN_LR_RATIO
    total = max(1, total)
    decay_start = cfg.decay_start
    if cfg.schedule == "wsd" and decay_start is None:
        decay_start = max(warmup, total - max(1, round(total * WSD_DECAY_FRACTION)))
    return dataclasses.replace(cfg, total_steps=total, warmup_steps=warmup, min_lr=min_lr, decay_start=decay_start)


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


def init_from_defaults(preset: str, overrides: dict) -> dict:
    """`overrides` with the defaults of a run that starts from trained weights (--init-from):
    a lower peak lr (the preset's x INIT_FROM_LR_FACTOR) unless --lr is given, and
    INIT_FROM_WARMUP_FRACTION of warmup unless --warmup-steps is given."""
    out = dict(overrides)
    if out.get("lr") is None:
        base = PRESETS.get(CUSTOM_BASE if preset == "custom" else preset, {}).get("lr", TrainConfig.lr)
        out["lr"] = base * INIT_FROM_LR_FACTOR
    out.setdefault("warmup_fraction", INIT_FROM_WARMUP_FRACTION)
    return out
