"""The checkpoint format: a run's progress (TrainState), saving and reading a whole run, loading
a model for generate / evaluate / export, and the checks before resuming.

A checkpoint is a plain dict of tensors and primitives, read only with
`torch.load(..., weights_only=True)` (`read_checkpoint`, the one place checkpoints are read):
    version        CHECKPOINT_VERSION (2); version 1 (before TrainState) is still read
    model          the model's state_dict (no torch.compile / DDP prefixes)
    model_config   ModelConfig as a dict
    meta           tokenizer_hash, vocab_size, corpus_hash, step (what generate/evaluate check)
    optimizer, scaler, train_config
    state          TrainState as a dict (dataclasses.asdict), RNG states included
"""
from __future__ import annotations

import dataclasses
import math
import pickle
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from common import UserError, log, require_file
from model import GPT, ModelConfig, pad_vocab_state

CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SHAPE_FIELDS = ("family", "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "intermediate_size", "bias",
                "rope_base", "norm_eps", "sep_token_id")   # must match on resume (dropout may change)


def empty_window() -> dict:
    """Training statistics accumulated since the last evaluation."""
    return {"loss_sum": 0.0, "loss_n": 0, "norm_sum": 0.0, "norm_n": 0, "tokens": 0, "seconds": 0.0}


@dataclass
class TrainState:
    """All the progress of a run: what a checkpoint needs, beyond weights and optimizer, to
    continue exactly."""
    step: int = 0                    # optimizer steps done
    epoch: int = 0                   # epoch in progress
    batch_in_epoch: int = 0          # next micro-batch of that epoch (the data position)
    n_windows: int = 0               # training windows, batch size and seed of the epoch permutation
    batch_size: int = 0              # (a change restarts the epoch from its first batch)
    seed: int = 0
    tokens_seen: int = 0             # target tokens trained on
    elapsed_seconds: float = 0.0     # training seconds of all invocations before this one
    best_val: float = math.inf       # best validation loss so far, and its step
    best_step: int = -1
    patience_counter: int = 0        # evaluations without improvement
    nonfinite_streak: int = 0        # non-finite losses in a row
    last_eval_step: int = -1
    budget_fixed: bool = False       # --time-budget: the step count is fixed
    world_size: int = 1
    window: dict = field(default_factory=empty_window)
    history: list = field(default_factory=list)
    rng: Optional[dict] = None       # every RNG state (rng_state), taken when saved

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """ValueError naming the fields whose values cannot be a run's progress (a damaged checkpoint)."""
        bad = []
        for f in dataclasses.fields(self):
            v, want = getattr(self, f.name), type(f.default) if f.default is not dataclasses.MISSING else None
            if want is int:
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= (-1 if f.name.endswith("_step") else 0)
            elif want is float:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) and v >= 0
            elif want is bool:
                ok = isinstance(v, bool)
            elif f.name == "window":
                ok = isinstance(v, dict) and set(v) == set(empty_window()) and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v.values())
            elif f.name == "history":
                ok = isinstance(v, list) and all(isinstance(e, dict) for e in v)
            else:   # rng
                ok = v is None or (isinstance(v, dict) and {"python", "numpy", "torch"} <= set(v))
            if not ok:
                bad.append(f.name)
        if self.world_size < 1:
            bad.append("world_size")
        if bad:
            raise ValueError(f"bad values for {', '.join(bad)}")

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "TrainState":
        """The TrainState of a checkpoint of any readable version (ValueError if it is damaged)."""
        if ckpt.get("version", 1) >= 2:
            if not isinstance(ckpt["state"], dict):
                raise ValueError("the state is not a mapping")
            known = {f.name for f in dataclasses.fields(cls)}
            state = cls(**{k: v for k, v in ckpt["state"].items() if k in known})
            state.check()
            return state
        pos, prog = ckpt["data_position"], ckpt.get("progress", {})     # version 1: loose fields
        state = cls(step=int(ckpt["step"]), epoch=int(pos["epoch"]), batch_in_epoch=int(pos["batch"]),
                   n_windows=int(pos.get("n_windows", 0)), batch_size=int(pos.get("batch_size", 0)),
                   seed=int(pos.get("seed", 0)), tokens_seen=int(prog.get("tokens_seen", 0)),
                   elapsed_seconds=float(prog.get("elapsed_seconds", 0.0)),
                   best_val=float(ckpt.get("best_val", math.inf)), best_step=int(ckpt.get("best_step", -1)),
                   patience_counter=int(ckpt.get("patience_counter", 0)),
                   nonfinite_streak=int(prog.get("nonfinite_streak", 0)),
                   last_eval_step=int(prog.get("last_eval_step", -1)),
                   budget_fixed=bool(prog.get("budget_fixed", False)),
                   world_size=int(pos.get("world_size", 1)),
                   window={**empty_window(), **prog.get("window", {})}, history=list(ckpt.get("history", [])),
                   rng=ckpt["rng"])
        state.check()
        return state


def run_checkpoint(model: GPT, optimizer, scaler, state: TrainState, *, train_config: dict, meta: dict) -> dict:
    """The checkpoint dict of a run (see the module docstring); `state.rng` is taken now."""
    return {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "model_config": model.cfg.to_dict(),
            "meta": meta, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "train_config": train_config, "state": dataclasses.replace(state, rng=rng_state()).to_dict()}


def restore_run(ckpt: dict, model: GPT, optimizer, scaler, cfg, n_windows: int) -> TrainState:
    """Put a run checkpoint back: weights, optimizer (with this command's betas and weight decay),
    gradient scaler and every RNG state; return its TrainState. When the training windows, batch
    size or seed differ from the checkpoint's, the epoch restarts from its first batch."""
    was = (ckpt.get("train_config") or {}).get("optimizer", "adamw")
    if was != cfg.optimizer:
        raise UserError(f"cannot resume: this run was trained with --optimizer {was}, not {cfg.optimizer}; "
                        f"pass --optimizer {was}, or use another --outdir")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    pad_vocab_state(model, optimizer)
    for group in optimizer.param_groups:   # the current command's hyperparameters win
        if "betas" in group:               # AdamW's (Muon has a momentum instead)
            group["betas"] = (cfg.beta1, cfg.beta2)
        if group["weight_decay"] > 0:
            group["weight_decay"] = cfg.weight_decay
    if scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    st = TrainState.from_checkpoint(ckpt)
    if (st.n_windows, st.batch_size, st.seed) != (n_windows, cfg.batch_size, cfg.seed):
        log.warning(f"warning: the training windows, batch size or seed changed since the checkpoint: "
                    f"restarting epoch {st.epoch + 1} from its first batch")
        st.batch_in_epoch = 0
        st.n_windows, st.batch_size, st.seed = n_windows, cfg.batch_size, cfg.seed
    set_rng_state(st.rng)
    return st


def check_version(ckpt: dict, path) -> None:
    version = ckpt.get("version", 1)
    if version not in READABLE_VERSIONS:
        raise UserError(f"checkpoint {path} has format version {version}, which this mini-llm cannot read "
                        f"(it reads {', '.join(map(str, READABLE_VERSIONS))}); upgrade mini-llm")


def rng_state() -> dict:
    """Every RNG state as tensors / lists / ints (loadable with weights_only=True)."""
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def _strip_prefixes(state_dict: dict) -> dict:
    """Remove `_orig_mod.` (torch.compile) and `module.` (DDP) prefixes, defensively."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        k = k.replace("._orig_mod.", ".")
        out[k] = v
    return out


def read_checkpoint(path, problem: str, hint: str):
    """torch.load(path, weights_only=True): the one place checkpoints are read. Pickled code never
    runs; a truncated, corrupt or foreign file raises UserError("<problem>: <why>; <hint>")."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; we report below
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with forbidden globals, not a torch file, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in reason:
            reason = "not a plain-tensor checkpoint; it was not loaded, so no code in it ran"
        elif len(reason) > 160:
            reason = reason[:157] + "..."
        raise UserError(f"{problem}: it is truncated, corrupt or not a mini-llm checkpoint ({reason}); {hint}")


def check_weights(weights: dict, cfg: ModelConfig, path, hint: str) -> dict:
    """The state dict of a checkpoint, checked before a model is built for it: names are strings,
    values finite float tensors, and their sizes add up to the parameters of `cfg` (so a damaged
    config never makes us allocate a model of another size). Prefixes of torch.compile / DDP are
    removed; a dropped tied lm_head is restored. UserError naming the problem otherwise."""
    if not all(isinstance(k, str) for k in weights) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"checkpoint {path} is damaged: its weights are not a mapping of names to tensors; {hint}")
    state = _strip_prefixes(weights)
    if cfg.tie_embeddings and "lm_head.weight" not in state and "tok_emb.weight" in state:
        state["lm_head.weight"] = state["tok_emb.weight"]  # tied; some writers drop the duplicate
    n = sum(v.numel() for k, v in state.items() if k != "lm_head.weight" or not cfg.tie_embeddings)
    if n != cfg.num_parameters():
        raise UserError(f"checkpoint {path} is damaged: its weights hold {n:,} numbers but its model config "
                        f"describes {cfg.num_parameters():,}; {hint}")
    for k, v in state.items():
        if not v.is_floating_point():
            raise UserError(f"checkpoint {path} is damaged: weight {k} is not a float tensor ({v.dtype}); {hint}")
        if not bool(torch.isfinite(v).all()):
            raise UserError(f"checkpoint {path} is damaged: weight {k} holds NaN or infinite values; {hint}")
    return state


def read_model_checkpoint(path: Path, what: str, hint: str) -> tuple[dict, ModelConfig, dict]:
    """(checkpoint dict, its ModelConfig, its meta or {}) of one of our checkpoints, read with
    weights_only and checked for the entries a model needs; UserError naming `what` otherwise."""
    ckpt = read_checkpoint(path, f"{what} {path} cannot be loaded", hint)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) \
            or not isinstance(ckpt.get("model_config"), dict):
        name = path if what == "checkpoint" else f"{what} {path}"
        raise UserError(f"{name} is not a mini-llm checkpoint (no 'model' / 'model_config' entries); {hint}")
    check_version(ckpt, path)
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{what} {path} has a bad model config: {e}")
    return ckpt, cfg, ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}


def load_model(ckpt_path, device="cpu", tokenizer=None):
    """Load a training checkpoint -> (GPT in eval mode on `device`, the checkpoint's meta dict).

    Loads with weights_only=True (never runs pickled code). Missing, truncated, corrupt or
    foreign files raise UserError. With `tokenizer` (a tokenizer.TokenizerIdentity: anything
    with .path, .sha256 and .vocab_size), its hash and vocabulary size must match the ones the
    model was trained with.
    """
    path = require_file(ckpt_path, "checkpoint")
    hint = "pass a ckpt_best.pt or ckpt_last.pt written by `main.py train`"
    ckpt, cfg, meta = read_model_checkpoint(path, "checkpoint", hint)

    if tokenizer is not None:
        tokenizer_path, tok_hash, tok_vocab = tokenizer.path, tokenizer.sha256, tokenizer.vocab_size
        want_hash = meta.get("tokenizer_hash")
        if want_hash and want_hash != tok_hash:
            raise UserError(f"tokenizer {tokenizer_path} is not the one checkpoint {path} was trained with "
                            f"(hash {tok_hash[:12]} != {str(want_hash)[:12]}); pass the training tokenizer.json")
        want_vocab = meta.get("vocab_size", cfg.vocab_size)
        if tok_vocab != want_vocab or tok_vocab > cfg.vocab_size:
            raise UserError(f"tokenizer {tokenizer_path} has {tok_vocab} tokens but checkpoint {path} expects "
                            f"{want_vocab}; pass the training tokenizer.json")

    state = check_weights(ckpt["model"], cfg, path, hint)
    model = GPT(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"checkpoint {path} weights do not fit its model config "
                        f"({' '.join(first[:2])[:200]}); {hint}")
    model.to(device)
    model.eval()
    return model, dict(meta)


def load_resume_checkpoint(path: Path, mcfg: ModelConfig, tokenizer_hash: str, corpus_hash: str,
                           force: bool) -> dict:
    """Load ckpt_last.pt for resuming (weights_only) before any heavy setup; refuse another model
    shape, and another tokenizer or corpus (sha256) unless `force`."""
    ckpt = read_checkpoint(path, f"cannot resume from {path}",
                           "delete it to start over, or use another --outdir")
    if isinstance(ckpt, dict):
        check_version(ckpt, path)
    v2 = isinstance(ckpt, dict) and ckpt.get("version", 1) >= 2
    progress = ("state",) if v2 else ("step", "data_position", "rng")
    needed = ("model", "model_config", "meta", "optimizer", *progress)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in needed):
        raise UserError(f"cannot resume from {path}: not a full training checkpoint; use another --outdir")
    old, new = ckpt["model_config"], mcfg.to_dict()
    try:
        old = ModelConfig.from_dict(old).to_dict()   # with the defaults of fields it predates (family)
    except (ValueError, TypeError, AttributeError):
        raise UserError(f"cannot resume from {path}: its model config is damaged; use another --outdir")
    diff = [f"{k} {old.get(k)} -> {new[k]}" for k in SHAPE_FIELDS if old.get(k) != new[k]]
    meta = ckpt["meta"] if isinstance(ckpt["meta"], dict) else {}
    if old.get("vocab_size") != new["vocab_size"] and meta.get("tokenizer_hash") != tokenizer_hash:
        raise UserError(f"cannot resume {path}: the tokenizer differs from the one this run was trained with "
                        f"(a vocabulary of {new['vocab_size']} tokens, not {old.get('vocab_size')}); pass the "
                        f"original tokenizer.json, or use another --outdir")
    if diff:
        # the presets' family has changed over time (neox, then qwen3, then neox with Muon): name the flag
        family = f" (--family {old.get('family')} to continue this run)" if old.get("family") != new["family"] else ""
        raise UserError(f"cannot resume {path}: the model shape differs from the checkpoint's "
                        f"({', '.join(diff)}); use the same --config and shape flags{family}, or another --outdir")
    hint = "delete it to start over (ckpt_best.pt, if there is one, still holds the best model), or use another --outdir"
    try:
        check_weights(ckpt["model"], ModelConfig.from_dict(old), path, hint)
        TrainState.from_checkpoint(ckpt)
        if not isinstance(ckpt["meta"], dict) or not isinstance(ckpt["optimizer"], dict):
            raise ValueError("its meta or optimizer section is not a mapping")
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"cannot resume from {path}: its resume section is damaged ({e}); {hint}")
    meta = ckpt["meta"]
    changed = [what for what, want, have in (("tokenizer", meta.get("tokenizer_hash"), tokenizer_hash),
                                             ("corpus", meta.get("corpus_hash"), corpus_hash)) if want != have]
    if changed and not force:
        raise UserError(f"cannot resume {path}: the {' and '.join(changed)} differ from the ones this run "
                        f"was trained with (sha256 mismatch); pass the original files, use another "
                        f"--outdir, or add --force to continue anyway")
    if changed:
        log.warning(f"warning: --force: resuming with another {' and '.join(changed)}")
    return ckpt


# =========================================================================== --init-from

@dataclass
class InitSource:
    """The weights a new run starts from (train --init-from): a checkpoint or an export folder."""
    model_config: ModelConfig
    weights: dict                    # our state dict, checked (check_weights)
    record: dict                     # path, kind, sha256, step: config.json's "init_from"


def load_init_source(path, tokenizer) -> InitSource:
    """Read `path` for --init-from: one of our checkpoints (only its weights and model config are
    used) or a folder written by `export`. `tokenizer` (a TokenizerIdentity) must be the one the
    weights were trained with: its sha256 equals the recorded one (for an export written before
    mini_llm.json existed: the same vocabulary). UserError (one line) otherwise."""
    import export
    from common import file_sha256

    path = Path(path)
    hint = "pass a ckpt_best.pt / ckpt_last.pt written by `main.py train`, or a folder written by `main.py export`"
    if export.is_export_folder(path):
        cfg, weights, record = export.import_hf(path)
        kind, digest, step = "export", file_sha256(path / "model.safetensors"), record.get("step")
        want = record.get("tokenizer_hash")
        same = want == tokenizer.sha256 if want else _same_vocabulary(path / "tokenizer.json", tokenizer)
    elif path.is_dir():
        raise UserError(f"--init-from {path} is a folder but not an export (no config.json and model.safetensors); "
                        f"{hint}")
    else:
        require_file(path, "--init-from checkpoint")
        ckpt, cfg, meta = read_model_checkpoint(path, "--init-from", hint)
        weights, kind, digest, step = ckpt["model"], "checkpoint", file_sha256(path), meta.get("step")
        want = meta.get("tokenizer_hash")
        same = want is None or want == tokenizer.sha256
    if not same:
        raise UserError(f"--init-from {path} was trained with another tokenizer than {tokenizer.path} "
                        f"(sha256 {str(want)[:12] if want else 'of another vocabulary'}); pass the tokenizer.json "
                        f"the weights were trained with")
    if cfg.vocab_size != tokenizer.vocab_size:
        raise UserError(f"--init-from {path} has a vocabulary of {cfg.vocab_size} tokens, tokenizer {tokenizer.path} "
                        f"{tokenizer.vocab_size}; pass the tokenizer.json the weights were trained with")
    weights = check_weights(weights, cfg, path, hint)
    record = {"path": str(path.resolve()), "kind": kind, "sha256": digest, "step": step}
    return InitSource(cfg, weights, record)


def _same_vocabulary(tokenizer_json: Path, tokenizer) -> bool:
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(str(tokenizer_json)).get_vocab() == tokenizer.tokenizer.get_vocab()
    except Exception:   # unreadable: not the same
        return False


def check_init_shape(shape: ModelConfig, given: dict, dropout: float, source: str) -> ModelConfig:
    """The model config of a run started from the weights at `source` (shape: theirs), with the
    shape flags the user `given` (name -> value, None = not given) required to agree, and this
    run's `dropout` (a training setting). UserError listing every contradiction."""
    cfg = shape.to_dict()
    clash = [f"--{k.replace('_', '-')} {v} (the weights have {cfg[k]})" for k, v in given.items()
             if v is not None and k in SHAPE_FIELDS and k in cfg and v != cfg[k]]
    if clash:
        raise UserError(f"--init-from {source}: the model shape comes from the weights, and "
                        f"{', '.join(clash)} contradicts it; drop the shape flags")
    return ModelConfig.from_dict({**cfg, "dropout": dropout})
