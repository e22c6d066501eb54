"""Training: the loop of `python main.py train` (Trainer, optimizer_step, train).

The configuration and schedule live in config.py, the run folder (lock, signals, files) in
runs.py. A run folder (`--outdir`) holds:
    ckpt_best.pt   the checkpoint with the lowest validation loss so far
    ckpt_last.pt   the latest checkpoint: written at every evaluation, at the end and on SIGINT/SIGTERM
    history.json   one entry per evaluation (keys in report.HISTORY_KEYS)
    config.json    model and training config, precision, tokenizer and corpus (path, sha256), versions
    train.log      every log line of every run on this folder, with timestamps
    loss.png       train/validation loss and validation perplexity against tokens seen
    train.lock     while a run is active (PID, host, start time); see runs.RunLock
    cache/         the token store of the corpus (dataset.load_or_build_token_store)

Checkpoints are plain dicts of tensors and primitives (see `checkpoint_state`) that load with
`torch.load(..., weights_only=True)`. Every file is written through common.atomic_path, by the
`RunFolder` object only (one place for file writing: under DDP only rank 0 will own one).

Exact resume: a checkpoint holds the model, the optimizer, the gradient scaler, the step, the
data position (epoch, next batch of the epoch's fixed permutation), every RNG state, the
best-so-far and the history. Re-running the same command on a folder with ckpt_last.pt continues
the run; on CPU the final parameters are bit-identical to an uninterrupted run with the same seed.

Exit codes of the train stage: 0 finished (epochs done, --max-steps, --time-budget, --max-time or
early stopping), 1 the loss diverged (3 non-finite losses in a row; ckpt_best.pt is left intact),
2 bad input, 3 the outdir is locked by another run, 130 SIGINT, 143 SIGTERM (both after saving
ckpt_last.pt).

Under torchrun (distributed.py) every rank runs the same loop on its share of each step's
micro-batches (DistributedDataParallel averages the gradients on the last one), all shared
decisions go through distributed's collectives, and only rank 0 locks and writes the run folder.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

import dataset
import distributed
import tokenizer as tokenizer_lib   # `tokenizer` is a local name in train()
from common import (Progress, UserError, add_log_file, available_memory, file_sha256, format_seconds, log, perplexity,
                    require_file, resolve_device, stderr_is_terminal)
from config import (CUSTOM_BASE, MODEL_FIELDS, PRESETS, TrainConfig, init_from_defaults, lr_at, make_configs,
                    resolve_schedule)
from checkpoint import (InitSource, TrainState, check_init_shape, empty_window, load_init_source,
                        load_resume_checkpoint, restore_run, run_checkpoint, set_rng_state)
from corpus import CorpusSpec, parse_corpus_specs
from model import GPT, ModelConfig, document_positions, segment_layout
from optimizers import make_optimizer, step_unless
from precision import Precision, log_choice, resolve_precision
from runs import RunFolder, RunLock, StopSignals, versions
from budget import TimeBudget, kept_schedule
from report import HISTORY_KEYS


SAMPLE_PROMPT_WORDS = 3               # the greedy sample at each evaluation continues the first
SAMPLE_TOKENS = 32                    # words of a validation document (or --sample-prompt)
PROBE_STEPS = 3                       # optimizer steps timed by the probe (the first is untimed)
BYTES_PER_PARAMETER = 16              # fp32 weights, gradients and the two AdamW moments
MAX_NONFINITE_STEPS = 3               # non-finite losses in a row before the run stops
EXIT_DIVERGED = 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _finite(x) -> Optional[float]:
    """JSON-safe float: None for NaN/inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


# =========================================================================== trainer

class Trainer:
    """One training run on one run folder. `train()` below is the entry point."""

    def __init__(self, mcfg: ModelConfig, tcfg: TrainConfig, *, identity: tokenizer_lib.TokenizerIdentity,
                 corpora: list[CorpusSpec], preset: str, folder: RunFolder, separator: Optional[str],
                 quiet: bool, stop: StopSignals, on_step: Optional[Callable[["Trainer"], None]] = None,
                 init: Optional[InitSource] = None, init_record: Optional[dict] = None):
        self.mcfg, self.cfg, self.preset = mcfg, tcfg, preset
        self.identity, self.specs = identity, corpora
        self.init, self.init_record = init, init_record   # --init-from: the weights, and where they came from
        self.tokenizer, self.tokenizer_path = identity.tokenizer, identity.path
        self.folder, self.separator, self.quiet, self.stop, self.on_step = folder, separator, quiet, stop, on_step
        self.t_start = time.monotonic()
        self.dist = distributed.current()           # this process's rank (torchrun) or the single process
        self.state = TrainState(seed=tcfg.seed, batch_size=tcfg.batch_size,  # all the progress: checkpointed
                                world_size=self.dist.world_size)
        self.last_saved_step = -1
        self.last_norm = float("nan")
        self.last_loss: Optional[float] = None      # the latest step read on the host (read_steps)
        self.last_tok_s = 0.0
        self._unread: list[tuple[int, float, torch.Tensor]] = []   # (step, seconds, statistics) not read yet
        self.streak_limit_step: Optional[int] = None  # the step at which MAX_NONFINITE_STEPS was reached
        self.budget: Optional[TimeBudget] = None    # --time-budget (plan_time_budget)
        self._batches = None                        # the epoch's batch iterator (_next_micro_batches)
        self._epoch_end = 0                         # and the global batch it stops at

    # ----------------------------------------------------------------------- setup

    def setup(self) -> None:
        cfg = self.cfg
        self.device = resolve_device(cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self._setup_data()
        self._check_memory()
        seed_everything(cfg.seed)
        self.model = GPT(self.mcfg)
        if self.init is not None:                     # --init-from: only the weights (the rest starts fresh)
            self.model.load_state_dict(self.init.weights, strict=True)
            r = self.init.record
            log.info(f"init-from: the weights of {r['path']} ({r['kind']}, step {r['step']}, "
                     f"sha256 {r['sha256'][:12]}); optimizer, schedule and data position start fresh")
            self.init = None                          # the run folder's checkpoints hold them from now on
        self.model.to(self.device)
        self.model.gradient_checkpointing = cfg.gradient_checkpointing
        if cfg.flash_attention:
            self.model.use_flash_attn(True)
        self.n_params = self.model.num_parameters()
        m = self.mcfg
        log.info(f"model: {self.preset}, {m.n_layer} layers, {m.n_head} heads, width {m.n_embd}, "
                 f"block {m.block_size}, vocab {m.vocab_size}: {self.n_params:,} parameters")
        self.precision: Precision = resolve_precision(cfg.precision, self.device, n_embd=m.n_embd,
                                                      vocab_size=m.vocab_size, rows=cfg.batch_size * m.block_size)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.use_scaler)
        self.train_model = self.model
        if self.dist.enabled:                         # the same weights on every rank: DDP broadcasts rank 0's
            from torch.nn.parallel import DistributedDataParallel
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.rank:                        # dropout differs per rank; rank 0 keeps the seed's stream
                torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        d = self.dist
        log.info(f"device {self.device}{', torch.compile' if cfg.compile else ''}"
                 f"{', gradient checkpointing' if cfg.gradient_checkpointing else ''}"
                 + (f"; DDP over {d.world_size} processes ({'nccl' if self.device.type == 'cuda' else 'gloo'}): "
                    f"global batch {cfg.batch_size} x {cfg.accumulation_steps} x {d.world_size} = "
                    f"{cfg.batch_size * cfg.accumulation_steps * d.world_size} windows" if d.enabled else ""))
        log_choice(self.precision, "training")

    def _check_memory(self) -> None:
        """Refuse a model whose weights, gradients and AdamW moments cannot fit the device, before
        allocating any of it (the system might otherwise start swapping or kill the process)."""
        n = self.mcfg.num_parameters()
        need, free = n * BYTES_PER_PARAMETER, available_memory(self.device)
        if free is not None and need > free:
            raise UserError(f"out of memory building the model ({self.device}): its {n:,} parameters need "
                            f"~{need / 2**30:,.1f} GiB for weights, gradients and optimizer state, and "
                            f"{free / 2**30:,.1f} GiB is free; choose a smaller model (--n-layer, --n-embd)")

    def _setup_data(self) -> None:
        cfg, m = self.cfg, self.mcfg
        stride = cfg.stride or m.block_size
        self.corpora = [self._load_corpus(spec, stride) for spec in self.specs]
        self.store = self.corpora[0].store           # tokenizer hash, vocabulary, separator: the same in all
        if len(self.corpora) == 1:
            c = self.corpora[0]
            self.train_ds, self.val_ds = c.train_ds, c.val_ds
            self.mixture = None
        else:
            self.train_ds = dataset.ConcatWindows([c.train_ds for c in self.corpora])
            self.val_ds = dataset.ConcatWindows([c.val_ds for c in self.corpora])
            tokens = [c.train_ds.windows[:, 1] - 1 for c in self.corpora]
            self.mixture = dataset.mixture_counts(tokens, [c.spec.weight for c in self.corpora])
        names = [c.spec.name for c in self.corpora]
        if cfg.select_on is not None and (self.mixture is None or cfg.select_on not in names):
            raise UserError(f"--select-on {cfg.select_on}: " + (f"not one of the corpora ({', '.join(names)})"
                            if self.mixture is not None else "only for several --corpus files"))
        if cfg.select_on is not None and not len(self.corpora[names.index(cfg.select_on)].val_ds):
            raise UserError(f"--select-on {cfg.select_on}: that corpus has no validation split; "
                            f"raise --val-fraction or select on another corpus")
        self.world_size = self.dist.world_size
        self.n_batches = self._sampler(0, 0).num_batches()
        self.state.n_windows = self.epoch_windows = len(self.train_ds) if self.mixture is None \
            else int(self.mixture.sum())
        per_rank = self.n_batches // self.world_size       # batches per rank in an epoch started at batch 0
        self.steps_per_epoch = -(-per_rank // cfg.accumulation_steps)
        if per_rank == 0:
            raise UserError(f"{self.n_batches} batch(es) per epoch cannot feed {self.world_size} processes; "
                            f"lower --batch-size or --nproc_per_node, or use a bigger corpus")
        self.requested_cfg = cfg                   # before the data-dependent defaults
        self.cfg = cfg = resolve_schedule(cfg, self.steps_per_epoch)
        for c in self.corpora:
            share = "" if self.mixture is None else \
                f"; weight {c.spec.weight:.3g}: {int(self.mixture[self.corpora.index(c)]):,} windows per epoch"
            log.info(f"data{'' if self.mixture is None else ' ' + c.spec.name}: {len(c.store):,} tokens, "
                     f"{c.store.n_docs:,} documents; {len(c.train_ds):,} training and {len(c.val_ds):,} validation "
                     f"windows (block {m.block_size}, stride {stride}){share}")
        log.info(f"{self.steps_per_epoch:,} steps per epoch of {cfg.batch_size} x {cfg.accumulation_steps} windows; "
                 + (f"schedule {cfg.total_steps:,} steps (warmup {cfg.warmup_steps}, lr {cfg.lr:g} -> "
                    f"{cfg.min_lr:g})" if cfg.time_budget is None else "schedule fitted to the --time-budget"))
        self.val_batches = [self._fixed_val_batches(c.val_ds) for c in self.corpora]
        self.sample_prompt = self._sample_prompt()

    def _load_corpus(self, spec: CorpusSpec, stride: int) -> "CorpusData":
        """One corpus's token store and train/validation windows (split by its own documents)."""
        cfg, m = self.cfg, self.mcfg
        store = None
        with distributed.together("building the token store"):    # rank 0 builds it, the others then open it
            if self.dist.is_main:
                store = dataset.load_or_build_token_store(spec.path, self.identity, self.folder.cache,
                                                          separator=self.separator, quiet=self.quiet)
        if store is None:
            store = dataset.load_or_build_token_store(spec.path, self.identity, self.folder.cache,
                                                      separator=self.separator, quiet=True)
        if store.vocab_size != m.vocab_size or store.sep_id != m.sep_token_id:
            raise UserError(f"token store {store.path} does not match the tokenizer (vocab {store.vocab_size} "
                            f"vs {m.vocab_size}); delete {self.folder.cache} and run again")
        train_w, val_w, warning = dataset.make_split_windows(store, m.block_size, stride, cfg.val_fraction,
                                                             cfg.seed)
        where = "" if len(self.specs) == 1 else f" of {spec.path}"
        if warning:
            log.warning(f"warning{where}: {warning}")
        if len(train_w) == 0:
            raise UserError(f"no training windows{where}: the corpus is empty after the validation split; "
                            "add text or lower --val-fraction")
        longest = int(train_w[:, 1].max()) - 1   # targets in the fullest window
        if longest < m.block_size and len(self.specs) == 1:
            n_train = int(train_w[:, 1].sum())
            raise UserError(f"block size {m.block_size} is larger than the corpus can fill: the training "
                            f"split holds only {n_train:,} tokens (its longest window {longest}); "
                            f"lower --block-size (e.g. {max(8, _pow2_floor(longest))}) or use a bigger corpus")
        if cfg.val_fraction > 0 and len(val_w) == 0:
            raise UserError(f"the validation split{where} is empty; add documents or pass --val-fraction 0")
        if len(val_w) == 0 and len(self.specs) == 1:
            log.warning("warning: no validation set (--val-fraction 0): no validation loss, no early "
                        "stopping; ckpt_best.pt is the latest evaluated checkpoint")
        return CorpusData(spec, store, dataset.WindowDataset(store, train_w, m.block_size),
                          dataset.WindowDataset(store, val_w, m.block_size))

    def _sampler(self, epoch: int, start_batch: int):
        """The batch sampler of an epoch: a permutation of the windows, or a mixture's draw."""
        d = self.dist
        if self.mixture is None:
            return dataset.ResumableSampler(len(self.train_ds), self.cfg.batch_size, self.cfg.seed, epoch=epoch,
                                            start_batch=start_batch, rank=d.rank, world_size=d.world_size)
        return dataset.MixtureSampler([len(c.train_ds) for c in self.corpora], self.mixture, self.cfg.batch_size,
                                      self.cfg.seed, epoch=epoch, start_batch=start_batch, rank=d.rank,
                                      world_size=d.world_size)

    def _fixed_val_batches(self, val_ds) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """eval_batches batches of validation windows spread evenly over a validation set, the
        same at every evaluation (so successive validation losses are comparable)."""
        n, bs = len(val_ds), self.cfg.batch_size
        if n == 0:
            return []
        k = min(n, bs * self.cfg.eval_batches)
        idx = np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))
        return [_collate([val_ds[int(i)] for i in idx[j:j + bs]]) for j in range(0, len(idx), bs)]

    def _sample_prompt(self) -> str:
        """--sample-prompt, else the first SAMPLE_PROMPT_WORDS words of the first validation
        document (of the training set when there is no validation set): a prompt in the corpus's
        own language, domain and case."""
        if self.cfg.sample_prompt:
            return self.cfg.sample_prompt
        x, _ = (self.val_ds if len(self.val_ds) else self.train_ds)[0]  # (T,), a window from a SEP on
        ids = x.tolist()
        sep = self.mcfg.sep_token_id
        if sep in ids:
            ids = ids[ids.index(sep) + 1:]
        if sep in ids:
            ids = ids[:ids.index(sep)]
        head = ids[:16 * SAMPLE_PROMPT_WORDS]
        words = self.tokenizer.decode(head, skip_special_tokens=True).split()
        if len(head) < len(ids):
            words = words[:-1]                 # the last word may be cut at a token boundary
        return " ".join(words[:SAMPLE_PROMPT_WORDS])

    # ----------------------------------------------------------------------- checkpoints

    def checkpoint_state(self) -> dict:
        """The checkpoint dict (checkpoint.run_checkpoint): tensors and primitives only."""
        meta = {"tokenizer_hash": self.store.tokenizer_hash, "vocab_size": self.mcfg.vocab_size,
                "corpus_hash": corpora_hash([c.store.corpus_hash for c in self.corpora], self.specs),
                "step": self.state.step}
        if self.init_record is not None:
            meta["init_from"] = self.init_record
        state = dataclasses.replace(self.state, elapsed_seconds=self.elapsed())
        ckpt = run_checkpoint(self.model, self.optimizer, self.scaler, state,  # the uncompiled module
                              train_config=self.cfg.to_dict(), meta=meta)
        if self.dist.enabled:                         # every rank's RNG state, by rank (rank 0's also on top)
            ranks = distributed.gather(ckpt["state"]["rng"])
            if ranks is not None:
                ckpt["state"]["rng"]["ranks"] = ranks
        return ckpt

    def save_last(self) -> None:
        self.folder.save_checkpoint(self.folder.ckpt_last, self.checkpoint_state())
        self.last_saved_step = self.state.step
        self.folder.clear_divergence()

    def weights_finite(self) -> bool:
        """Every parameter finite: checked before any checkpoint is written (exploded weights
        never replace a good checkpoint)."""
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def restore(self, ckpt: dict, path: Path) -> None:
        """Continue from a checkpoint dict (already checked by load_resume_checkpoint)."""
        st = self.state = restore_run(ckpt, self.model, self.optimizer, self.scaler, self.cfg, self.epoch_windows)
        was, d = st.world_size, self.dist
        if d.enabled:                                  # rank 0 has its own RNG state (restore_run); the others:
            ranks = (st.rng or {}).get("ranks")
            if isinstance(ranks, list) and len(ranks) == d.world_size:
                set_rng_state(ranks[d.rank])
            elif d.rank:
                torch.manual_seed(self.cfg.seed + 1_000_003 * d.rank + st.step)
        if was != d.world_size:
            log.info(f"resumed on {d.world_size} process(es), the run was on {was}: from batch {st.batch_in_epoch} "
                     f"of epoch {st.epoch + 1} on, each step takes the next {self.cfg.accumulation_steps} x "
                     f"{d.world_size} batches of the epoch's permutation, rank r the r-th of every {d.world_size}")
        st.world_size = d.world_size
        old_cfg = ckpt.get("train_config", {})
        st.budget_fixed = st.budget_fixed and self.cfg.time_budget is not None
        self.requested_cfg, self.cfg = kept_schedule(self.requested_cfg, self.cfg, old_cfg, st.budget_fixed)
        self.last_saved_step = st.step
        old_total = old_cfg.get("total_steps")
        if old_total not in (None, self.cfg.total_steps) and self.cfg.time_budget is None:
            log.info(f"note: the learning-rate schedule now ends at step {self.cfg.total_steps:,} "
                     f"(it ended at {old_total:,})")
        log.info(f"resumed from {path} at step {st.step:,} (epoch {st.epoch + 1}, batch {st.batch_in_epoch}); "
                 f"best validation loss {st.best_val:.4f} at step {st.best_step}")
        self.folder.write_history(st.history)

    # ----------------------------------------------------------------------- evaluation

    def autocast(self):
        return self.precision.autocast()

    def validation_loss(self) -> Optional[float]:
        """The validation loss (None if no validation set): a single corpus's mean token loss, or
        a mixture's weighted total (validation_losses)."""
        return self.validation_losses()[0]

    @torch.no_grad()
    def validation_losses(self) -> tuple[Optional[float], Optional[dict]]:
        """(total, by corpus) over the fixed validation batches, in eval mode without grad. One
        corpus: (its mean token loss, None). A mixture: each corpus's mean token loss by name, and
        the total weighted by the mixture's weights (over the corpora that have a validation set)."""
        self.model.eval()
        losses, d = {}, self.dist
        sums = []                                      # (token loss sum, tokens) of each corpus, this rank's share
        for c, batches in zip(self.corpora, self.val_batches):
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            count = 0
            for x, y in batches[d.rank::d.world_size]:
                n = int((y != -1).sum())
                positions = document_positions(x, self.mcfg.sep_token_id).to(self.device)
                with self.autocast():
                    _, loss = self.model(x.to(self.device), y.to(self.device), positions=positions)
                total += loss.double() * n
                count += n
            sums += [float(total), count]
        sums = distributed.all_sum(sums)               # over all ranks: sum of token losses / sum of tokens
        for i, (c, batches) in enumerate(zip(self.corpora, self.val_batches)):
            if batches:
                losses[c.spec.name] = sums[2 * i] / max(1, sums[2 * i + 1])
        self.model.train()
        if not losses:
            return None, None
        if self.mixture is None:
            return next(iter(losses.values())), None
        weights = {c.spec.name: c.spec.weight for c in self.corpora if c.spec.name in losses}
        total = sum(weights[k] * v for k, v in losses.items()) / sum(weights.values())
        return total, losses

    def greedy_sample(self) -> str:
        """SAMPLE_TOKENS greedy tokens after the sample prompt (generation.complete switches to
        eval mode, runs without grad, then frees its KV cache and restores train mode)."""
        import generation
        if not self.dist.is_main:                      # only rank 0 records it
            return ""
        return self.sample_prompt + generation.complete(self.model, self.tokenizer, self.sample_prompt,
                                                        max_new_tokens=SAMPLE_TOKENS, temperature=0.0,
                                                        lowercase=self.identity.lowercase)

    def evaluate_and_save(self) -> bool:
        """Validation loss + sample -> history; ckpt_best.pt on improvement, then ckpt_last.pt and
        history.json. Evaluation never touches the training RNG streams. False, with nothing
        written, when the weights or the validation loss are not finite (the run diverged)."""
        t0 = time.monotonic()
        if not distributed.all_sum([float(self.weights_finite())])[0] == self.dist.world_size:
            log.error(f"step {self.state.step:,}: the weights are not finite after the update; not saved")
            return False
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            val, by_corpus = self.validation_losses()
            if val is not None and not math.isfinite(val):
                log.error(f"step {self.state.step:,}: the validation loss is {val}; the weights are not saved")
                return False
            sample = self.greedy_sample()
        w = self.state.window
        entry = {
            "step": self.state.step,
            "epoch": round(self.state.epoch + self.state.batch_in_epoch / self.n_batches, 4),
            "tokens_seen": self.state.tokens_seen,
            "train_loss": _finite(w["loss_sum"] / w["loss_n"]) if w["loss_n"] else None,
            "val_loss": _finite(val),
            "val_perplexity": perplexity(val),
            "val_loss_by_corpus": None if by_corpus is None else {k: _finite(v) for k, v in by_corpus.items()},
            "lr": lr_at(max(0, self.state.step - 1), self.cfg),
            "grad_norm": _finite(w["norm_sum"] / w["norm_n"]) if w["norm_n"] else None,
            "tokens_per_second": w["tokens"] / w["seconds"] if w["seconds"] > 0 else None,
            "elapsed_seconds": round(self.elapsed(), 3),
            "sample": sample,
        }
        assert tuple(entry) == HISTORY_KEYS
        self.state.history.append(entry)
        self.state.window = empty_window()
        self.state.last_eval_step = self.state.step
        chosen = val if self.cfg.select_on is None else by_corpus[self.cfg.select_on]   # --select-on
        if chosen is None:                         # no validation set: the latest is the best
            improved = True
        else:
            improved = chosen < self.state.best_val      # NaN never improves
        if improved:
            if chosen is not None:
                self.state.best_val = chosen
            self.state.best_step = self.state.step
            self.state.patience_counter = 0
            self.folder.save_checkpoint(self.folder.ckpt_best, self.checkpoint_state())
        else:
            self.state.patience_counter += 1
        self.save_last()
        self.folder.write_history(self.state.history)
        ppl = entry["val_perplexity"]
        val_txt = "n/a" if val is None else f"{val:.4f} (perplexity {ppl:.2f})" if ppl else f"{val:.4f}"
        if by_corpus is not None:
            val_txt += " [" + ", ".join(f"{k} {v:.4f}" for k, v in by_corpus.items()) + "]"
        note = " (best)" if improved and val is not None else \
            f" (no improvement {self.state.patience_counter}/{self.cfg.patience or 'inf'})" if not improved else ""
        train_txt = f"{entry['train_loss']:.4f}" if entry["train_loss"] is not None else "n/a"
        log.info(f"eval step {self.state.step:,} epoch {entry['epoch']:.2f}: train loss {train_txt}, "
                 f"val loss {val_txt}{note} [{time.monotonic() - t0:.1f}s]")
        log.info(f"  sample: {sample!r}")
        return True

    # ----------------------------------------------------------------------- time budget

    def plan_time_budget(self) -> None:
        """--time-budget: probe the step and evaluation costs, then plan the schedule (budget.py).
        Under torchrun every rank probes (the probe's steps are collective) and rank 0's plan is
        everyone's."""
        costs = distributed.broadcast(self._probe_costs())
        self.budget = TimeBudget(self.requested_cfg, self.steps_per_epoch, costs)
        plan = self.budget.plan(self.state.step, self.elapsed()) if self.dist.is_main else None
        self.cfg, self.state.budget_fixed = distributed.broadcast(plan)
        self.budget.estimate = distributed.broadcast(self.budget.estimate)

    def _budget_tick(self, seconds: float, progress: Progress, start_step: int, read: bool) -> None:
        """After each step of a budgeted run: record its time; at read points, re-estimate the run's
        length from the measured step times (the probe's guess can be far off) and fix the
        schedule once the decay is due."""
        if self.budget is None or self.state.budget_fixed:
            return
        self.budget.record(seconds)
        if not read:
            return
        progress.set_total(self.budget.refresh(self.cfg, self.state.step, self.elapsed()) - start_step)
        due = self.dist.is_main and self.budget.decay_due(self.cfg, self.state.step, self.elapsed())
        if distributed.any_of(due):                    # rank 0's clock decides for all
            fixed = self.budget.fix(self.cfg, self.state.step, self.elapsed()) if self.dist.is_main else None
            self.cfg = distributed.broadcast(fixed)
            self.state.budget_fixed = True
            self.folder.write_config(self.run_config())
            progress.set_total(self.cfg.total_steps - start_step)

    def planned_steps(self) -> int:
        """The run's length as known now (an estimate until a time budget is fixed)."""
        return self.budget.estimate if self.budget and not self.state.budget_fixed else self.cfg.total_steps

    def _probe_costs(self) -> dict:
        """Seconds per optimizer step and per evaluation (validation, sample, two checkpoint
        serialisations), measured on the real model with real batches; the weights, optimizer,
        scaler and every RNG state are put back afterwards."""
        saved = [copy.deepcopy(x.state_dict()) for x in (self.model, self.optimizer, self.scaler)]
        bs, n = self.cfg.batch_size, len(self.train_ds)
        batch = _collate([self.train_ds[i % n] for i in range(bs)])
        group = [batch] * self.cfg.accumulation_steps
        times = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for _ in range(PROBE_STEPS):
                t = time.monotonic()
                read_step(optimizer_step(self.model, self.train_model, self.optimizer, self.scaler, group,
                                         lr=self.cfg.lr, grad_clip=self.cfg.grad_clip, device=self.device,
                                         autocast=self.autocast, z_loss=self.cfg.z_loss))   # waits: a timing
                times.append(time.monotonic() - t)
            t = time.monotonic()
            self.validation_loss()
            self.greedy_sample()
            for _ in range(2):                         # ckpt_best.pt and ckpt_last.pt
                torch.save(self.checkpoint_state(), io.BytesIO())
            eval_s = time.monotonic() - t
        for x, state in zip((self.model, self.optimizer, self.scaler), saved):
            x.load_state_dict(state)
        self.optimizer.zero_grad(set_to_none=True)
        timed = times[1:]
        return {"step": sum(timed) / len(timed), "eval": eval_s}

    # ----------------------------------------------------------------------- training

    def elapsed(self) -> float:
        return self.state.elapsed_seconds + (time.monotonic() - self.t_start)

    def _epoch_batches(self, epoch: int, start_batch: int):
        sampler = self._sampler(epoch, start_batch)
        pin = self.device.type == "cuda"
        if self.cfg.num_workers > 0:
            # own generator: creating the iterator must not draw from the global torch RNG
            loader = torch.utils.data.DataLoader(
                self.train_ds, batch_sampler=sampler, num_workers=self.cfg.num_workers, pin_memory=pin,
                generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
            return iter(loader)
        return (_collate([self.train_ds[i] for i in idx], pin) for idx in sampler)

    def _stop_before_step(self) -> Optional[str]:
        cfg = self.cfg
        if cfg.patience and self.state.patience_counter >= cfg.patience:
            return "early_stopping"
        if self.state.step >= cfg.total_steps or self.state.epoch >= cfg.epochs:
            if cfg.max_steps is not None and self.state.step >= cfg.max_steps:
                return "max_steps"
            budget_bound = cfg.time_budget is not None and self.state.step < cfg.epochs * self.steps_per_epoch
            return "time_budget" if budget_bound else "completed"
        return None

    def fit(self) -> str:
        """The training loop, in nanoGPT's order: data -> lr -> micro-steps, clip and step
        (optimizer_step) -> bookkeeping -> evaluate and save -> stop checks. Returns why it stopped."""
        reason = self._stop_before_step()
        if reason:
            log.info(f"nothing to train: the run already stopped ({reason}) at step {self.state.step:,}; "
                     f"use another --outdir to start over")
        start_step, t_loop, terminal = self.state.step, time.monotonic(), stderr_is_terminal()
        self.stop.armed = True
        with Progress("training", total=max(0, self.planned_steps() - self.state.step), unit="step", quiet=self.quiet,
                      log_every_s=float("inf")) as progress:
            while reason is None:
                t_step = time.monotonic()
                group = self._next_micro_batches()
                lr = lr_at(self.state.step, self.cfg)
                t0 = time.monotonic()
                stats = optimizer_step(
                    self.model, self.train_model, self.optimizer, self.scaler, group, lr=lr,
                    grad_clip=self.cfg.grad_clip, device=self.device, autocast=self.autocast, z_loss=self.cfg.z_loss)
                end_of_epoch = self._advance(len(group) * self.world_size, stats, time.monotonic() - t0)
                evaluate = end_of_epoch or self.state.step % self.cfg.eval_every == 0
                # The host reads the device's results only here: at log and evaluation points
                # (and every step for an on_step hook), so a GPU never waits for it in between.
                read = (evaluate or self.on_step is not None or self.state.step % self.cfg.log_every == 0
                        or self.state.step == start_step + 1)
                if read:
                    self.read_steps()
                self._budget_tick(time.monotonic() - t_step, progress, start_step, read)
                self._report(progress, t_loop, start_step, terminal, read)
                if self.streak_limit_step is not None:
                    reason = "diverged"
                    break
                if evaluate and self.state.nonfinite_streak == 0:
                    if not self.evaluate_and_save():   # (never right after a non-finite loss)
                        reason = "diverged"
                        break
                if self.on_step is not None:
                    self.on_step(self)
                reason = self._shared_stop(read) or self._stop_before_step()
            self.read_steps()                          # the steps since the last read point
            if self.streak_limit_step is not None:
                reason = "diverged"
        self.stop.armed = False
        return reason

    STOP_CODES = (None, "interrupted", "terminated", "max_time")

    def _shared_stop(self, read: bool) -> Optional[str]:
        """A signal or --max-time on any rank stops every rank after the same step: under torchrun
        one collective at each read point (every rank has the same ones), else after every step."""
        if self.dist.enabled and not read:
            return None
        local = self.stop.requested() or self._max_time_reached()
        return self.STOP_CODES[distributed.all_max([self.STOP_CODES.index(local)])[0]]

    def _next_micro_batches(self) -> list:
        """The next accumulation_steps micro-batches of the epoch (fewer at its end)."""
        if self._batches is None:
            self._batches = self._epoch_batches(self.state.epoch, self.state.batch_in_epoch)
            self._epoch_end = self._sampler(self.state.epoch, self.state.batch_in_epoch).epoch_end()
        left = (self._epoch_end - self.state.batch_in_epoch) // self.world_size    # on this rank
        return [next(self._batches) for _ in range(min(self.cfg.accumulation_steps, left))]

    def _advance(self, n_micro: int, stats: torch.Tensor, seconds: float) -> bool:
        """Count a finished step in the state (its statistics are read later, by read_steps);
        True at the end of an epoch."""
        st = self.state
        st.step += 1
        st.batch_in_epoch += n_micro
        self._unread.append((st.step, seconds, stats))
        if st.batch_in_epoch < self._epoch_end:
            return False
        st.epoch, st.batch_in_epoch, self._batches = st.epoch + 1, 0, None
        return True

    def read_steps(self) -> None:
        """Read the statistics of the steps since the last read on the host (one sync for all of
        them) and account for them in order: tokens, the window's loss and gradient norm, and the
        non-finite streak (a warning per skipped step; streak_limit_step once it reaches
        MAX_NONFINITE_STEPS)."""
        if not self._unread:
            return
        t0 = time.monotonic()
        rows = torch.stack([stats for _, _, stats in self._unread]).tolist()
        wait = time.monotonic() - t0                   # the device finishing the queued steps
        st, w = self.state, self.state.window
        tokens = seconds = 0.0
        for (step, step_seconds, _), (loss, n_tok, norm, skipped) in zip(self._unread, rows):
            st.tokens_seen += int(n_tok)
            tokens, seconds = tokens + n_tok, seconds + step_seconds
            if skipped:
                st.nonfinite_streak += 1
                log.warning(f"warning: step {step:,}: non-finite loss or gradients; step skipped, "
                            f"no update ({st.nonfinite_streak}/{MAX_NONFINITE_STEPS} in a row)")
                if st.nonfinite_streak >= MAX_NONFINITE_STEPS and self.streak_limit_step is None:
                    self.streak_limit_step = step
                self.last_loss = None
                continue
            st.nonfinite_streak = 0
            self.last_loss, self.last_norm = loss, norm
            w["loss_sum"] += loss
            w["loss_n"] += 1
            if math.isfinite(norm):
                w["norm_sum"] += norm
                w["norm_n"] += 1
        seconds += wait
        w["tokens"] += int(tokens)
        w["seconds"] += seconds
        self.last_tok_s = tokens / seconds if seconds > 0 else 0.0
        self._unread = []

    def _max_time_reached(self) -> Optional[str]:
        max_time = self.cfg.max_time
        return "max_time" if max_time and time.monotonic() - self.t_start >= max_time else None

    def _report(self, progress, t_loop, start_step, terminal, read: bool) -> None:
        """The progress bar after every step; a log line at the read points of log_every."""
        lr = lr_at(self.state.step - 1, self.cfg)
        done = self.state.step - start_step
        per_step = (time.monotonic() - t_loop) / max(1, done)
        planned = self.planned_steps()
        eta = per_step * max(0, planned - self.state.step)
        loss_txt = f"{self.last_loss:.4f}" if self.last_loss is not None else "nan"
        progress.update(1, step=f"{self.state.step}/{planned}", epoch=self.state.epoch + 1, loss=loss_txt,
                        lr=f"{lr:.2e}", tok_s=f"{self.last_tok_s:,.0f}")
        if read and (self.state.step % self.cfg.log_every == 0 or done == 1):
            line = (f"step {self.state.step:,}/{planned:,} epoch {self.state.epoch + 1}/{self.cfg.epochs} "
                    f"loss {loss_txt} lr {lr:.2e} grad_norm {self.last_norm:.3f} "
                    f"tok/s {self.last_tok_s:,.0f} eta {format_seconds(eta)}")
            (log.debug if terminal and not self.quiet else log.info)(line)

    def summary(self, reason: str) -> dict:
        best = self.state.best_val if math.isfinite(self.state.best_val) else None
        return {"best_val_loss": best, "best_val_perplexity": perplexity(best), "best_step": self.state.best_step,
                "steps": self.state.step, "tokens_seen": self.state.tokens_seen,
                "elapsed_seconds": round(self.elapsed(), 3),
                "params": self.n_params, "outdir": str(self.folder.dir), "stopped_reason": reason}

    def run_config(self) -> dict:
        return {"preset": self.preset, "model": self.mcfg.to_dict(), "train": self.cfg.to_dict(),
                "precision": self.precision.to_dict(),
                "tokenizer": {"path": str(self.tokenizer_path.resolve()), "hash": self.store.tokenizer_hash,
                              "vocab_size": self.mcfg.vocab_size},
                "corpus": self._corpus_record(),
                "data": {"train_windows": len(self.train_ds), "val_windows": len(self.val_ds),
                         "steps_per_epoch": self.steps_per_epoch},
                "params": self.n_params, "versions": versions(),
                **({"corpora": [c.record(None if self.mixture is None else int(self.mixture[i]))
                                for i, c in enumerate(self.corpora)]} if self.mixture is not None else {}),
                **({"init_from": self.init_record} if self.init_record is not None else {})}

    def _corpus_record(self) -> dict:
        """config.json's "corpus": the file, or for a mixture its summary ("name:weight + ...")."""
        if self.mixture is None:
            return self.corpora[0].record()
        return {"path": " + ".join(f"{c.spec.name}:{c.spec.weight:.3g}" for c in self.corpora),
                "hash": corpora_hash([c.store.corpus_hash for c in self.corpora], self.specs),
                "tokens": sum(len(c.store) for c in self.corpora),
                "documents": sum(c.store.n_docs for c in self.corpora), "separator": self.store.separator}


@dataclasses.dataclass
class CorpusData:
    """One corpus of a run: its spec (path, weight, name), token store and window datasets."""
    spec: CorpusSpec
    store: "dataset.TokenStore"
    train_ds: "dataset.WindowDataset"
    val_ds: "dataset.WindowDataset"

    def record(self, windows_per_epoch: Optional[int] = None) -> dict:
        out = {"path": str(self.spec.path.resolve()), "hash": self.store.corpus_hash, "tokens": len(self.store),
               "documents": self.store.n_docs, "separator": self.store.separator}
        if windows_per_epoch is not None:
            out = {"name": self.spec.name, "weight": self.spec.weight, **out, "train_windows": len(self.train_ds),
                   "val_windows": len(self.val_ds), "windows_per_epoch": windows_per_epoch}
        return out


def corpora_hash(hashes: list[str], specs: list[CorpusSpec]) -> str:
    """The identity of a run's data: the corpus's sha256, or for a mixture the sha256 of every
    corpus's sha256 and weight (a changed weight is another mixture, as a changed file is)."""
    if len(hashes) == 1:
        return hashes[0]
    import hashlib
    blob = json.dumps([[h, round(s.weight, 12)] for h, s in zip(hashes, specs)])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def optimizer_step(model: GPT, train_model, optimizer, scaler, micro_batches: list, *, lr: float,
                   grad_clip: float, device: torch.device, autocast, z_loss: float = 0.0) -> torch.Tensor:
    """One optimizer step: set lr -> micro-steps (autocast, loss / n, backward) -> unscale ->
    clip (recording the pre-clip norm) -> step unless something was not finite -> scaler update ->
    zero_grad(set_to_none=True). Nothing here waits for the device.

    `train_model` is `model`, its DistributedDataParallel wrapper (gradients are averaged over
    the ranks on the last micro-step only; no_sync before) and/or its torch.compile wrapper;
    `autocast()` returns the autocast context. Returns the step's statistics as one float64
    tensor on the device, for the host to read when it needs them (`read_steps`): the loss over
    all ranks (the sum of token losses / the sum of tokens), the target tokens over all ranks,
    the pre-clip gradient norm, and 1.0 if the step was skipped. A step whose loss or gradient
    norm is not finite makes no update (optimizers.step_unless decides on the device), the same
    decision on every rank as both are global. With an fp16 GradScaler, inf gradients are the
    scaler's business (it lowers its scale) and do not count as a skipped step.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    n = len(micro_batches)
    sums = torch.zeros(2, dtype=torch.float64, device=device)      # sum of token losses, target tokens
    sep = model.cfg.sep_token_id
    no_sync = getattr(train_model, "no_sync", None)   # DDP: reduce the gradients once, on the last micro-step
    for i, (x, y) in enumerate(micro_batches):
        positions = segment_layout(x, sep).to(device, non_blocking=True)  # built on the host copy
        n_tok = int((y != -1).sum())                                       # on the host copy too
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with no_sync() if no_sync is not None and i < n - 1 else contextlib.nullcontext():
            with autocast():
                _, loss = train_model(x, y, positions=positions, z_loss=z_loss)
            scaler.scale(loss / n).backward()
        sums[0] += loss.detach().double() * n_tok
        sums[1] += n_tok
    distributed.all_sum_(sums)
    loss = sums[0] / sums[1].clamp(min=1.0)
    scaler.unscale_(optimizer)
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)   # pre-clip norm
    loss_ok = torch.isfinite(loss)
    ok = loss_ok & torch.isfinite(norm)
    step_unless(optimizer, (~ok).float())
    if scaler.is_enabled():
        scaler.update()                  # from the inf checks of unscale_
    optimizer.zero_grad(set_to_none=True)
    skipped = ~loss_ok if scaler.is_enabled() else ~ok
    return torch.stack([loss, sums[1], norm.double(), skipped.double()])


def read_step(stats: torch.Tensor) -> tuple[Optional[float], float, int]:
    """(loss, or None for a skipped step; pre-clip gradient norm; target tokens) of one step's
    statistics, read on the host (a sync: the training loop reads several steps at once)."""
    loss, tokens, norm, skipped = stats.tolist()
    return (None if skipped else loss), norm, int(tokens)


def _collate(items: list, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([it[0] for it in items])  # (B, T)
    y = torch.stack([it[1] for it in items])  # (B, T)
    if pin:
        x, y = x.pin_memory(), y.pin_memory()
    return x, y


def _pow2_floor(n: int) -> int:
    return 1 << max(0, int(n).bit_length() - 1)


# =========================================================================== entry point

def train(tokenizer, corpus, outdir: str | os.PathLike,
          preset: str = "small", overrides: Optional[dict] = None, *, separator: Optional[str] = None,
          resume: bool = False, force: bool = False, quiet: bool = False, init_from=None,
          on_step: Optional[Callable[[Trainer], None]] = None) -> dict:
    """Train (or continue training) a model in `outdir`; return the summary dict.

    `tokenizer`: a tokenizer.TokenizerIdentity (made once by the CLI) or a tokenizer.json path.
    `corpus`: a corpus file, or a list of `PATH[:WEIGHT]` texts (a mixture; corpus.parse_corpus_specs).
    `overrides`: field -> value (None = not given) over the preset; see make_configs.
    Continues from outdir/ckpt_last.pt when it exists (`resume=True` requires it).
    `init_from`: a checkpoint or export folder whose weights (and shape) a new run starts from.
    `on_step(trainer)` runs after every optimizer step (tests, instrumentation).
    Raises UserError for bad input (code 2), a locked outdir (3) or a diverged run (1), and
    Interrupted for a signal received before the training loop. Every refusal comes before
    anything in `outdir` is touched.
    """
    identity = tokenizer_lib.as_identity(tokenizer)
    specs = parse_corpus_specs([str(corpus)] if isinstance(corpus, (str, os.PathLike)) else list(corpus))
    for spec in specs:
        spec.path = require_file(spec.path, "corpus file")
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"--outdir {outdir} exists and is not a folder; pass a folder path")
    folder = RunFolder(outdir)
    overrides = dict(overrides or {})
    given_shape = {k: overrides.get(k) for k in MODEL_FIELDS}
    continued = _continued_config(folder)          # read once: the lineage and the kept preset values
    source, lineage, shape = _init_source(init_from, identity, folder, resume, force, continued)
    kept = {}
    if lineage is not None:                         # a run from trained weights: their shape, lower lr
        overrides = init_from_defaults(preset, overrides)
        overrides.update({k: v for k, v in shape.to_dict().items() if k in MODEL_FIELDS and k != "dropout"})
    else:
        kept = _kept_preset_values(continued, preset, overrides)
        overrides.update(kept)
    try:
        mcfg, tcfg = make_configs(preset, overrides, vocab_size=identity.vocab_size,
                                  sep_token_id=identity.special["sep"])
    except ValueError as e:
        raise UserError(str(e))
    if shape is not None:
        mcfg = check_init_shape(shape, given_shape, mcfg.dropout, lineage["path"])
    names = [s.name for s in specs]
    if tcfg.select_on is not None and (len(specs) == 1 or tcfg.select_on not in names):
        raise UserError(f"--select-on {tcfg.select_on}: " + (f"not one of the corpora ({', '.join(names)})"
                        if len(specs) > 1 else "it picks one corpus of several --corpus files"))
    d, _ = distributed.init(resolve_device(tcfg.device))   # fail before touching the outdir; torchrun: join
    data_hash = corpora_hash([file_sha256(s.path) for s in specs], specs)
    folder = RunFolder(outdir, enabled=d.is_main)          # only rank 0 writes
    before, level = list(log.handlers), log.level
    log.setLevel(logging.DEBUG if d.is_main else logging.WARNING)   # train.log records everything (rank 0)
    with StopSignals() as stop, contextlib.ExitStack() as held:
        with distributed.together("locking the run folder"):
            if d.is_main:
                held.enter_context(RunLock(outdir))
                add_log_file(folder.log)
            if kept:
                log.info(f"continuing the run with the {preset} preset's values it started with (flags override "
                         f"them): " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in kept.items()))
        try:
            folder.remove_stale_temp_files()
            log.debug(f"train: {' '.join(sys.argv)}")
            trainer = Trainer(mcfg, tcfg, identity=identity, corpora=specs, preset=preset, folder=folder,
                              separator=separator, quiet=quiet or not d.is_main, stop=stop, on_step=on_step,
                              init=source, init_record=lineage)
            ckpt = None
            folder.check_writable()
            with distributed.together("reading the run folder"):
                ckpt = _starting_checkpoint(folder, source, mcfg, identity, data_hash, resume, force)
            try:
                with distributed.together("setting up"):
                    trainer.setup()
                    if ckpt is not None:
                        trainer.restore(ckpt, folder.ckpt_last)
                        del ckpt
                    if trainer.cfg.time_budget is not None and not trainer.state.budget_fixed:
                        trainer.plan_time_budget()
                folder.write_config(trainer.run_config())
                reason = trainer.fit()
            except Exception as e:
                if not _is_oom(e):
                    raise
                where = f"at step {trainer.state.step + 1}" if hasattr(trainer, "optimizer") else "building the model"
                raise UserError(f"out of memory {where} ({getattr(trainer, 'device', 'cpu')}): try a smaller "
                                f"--batch-size with more --accumulation-steps, --gradient-checkpointing, or a "
                                f"smaller model") from None
            return _finish(trainer, reason)
        finally:
            for h in log.handlers[:]:
                if h not in before:
                    log.removeHandler(h)
                    h.close()
            log.setLevel(level)


def _starting_checkpoint(folder: RunFolder, source, mcfg: ModelConfig, identity, data_hash: str, resume: bool,
                         force: bool) -> Optional[dict]:
    """The checkpoint a run continues from (the folder's ckpt_last.pt, checked), or None for a
    new run (refused when the folder holds another run's files, unless `force`)."""
    if folder.ckpt_last.exists() and source is None:
        if not resume:
            log.info(f"found {folder.ckpt_last}: continuing that run (use another --outdir to start over)")
        ckpt = load_resume_checkpoint(folder.ckpt_last, mcfg, identity.sha256, data_hash, force)
        note = folder.read_divergence()
        if note:
            log.warning(f"warning: the last run on this folder diverged at step {note.get('step')}; "
                        f"continuing from the last good checkpoint, step {note.get('last_good_step')}")
        return ckpt
    if resume:
        raise UserError(f"--resume: nothing to resume, {folder.ckpt_last} does not exist; "
                        f"drop --resume to start a new run")
    if source is None:
        folder.check_new_run(force)
    return None


def _init_source(init_from, identity, folder: RunFolder, resume: bool, force: bool, continued: Optional[dict]):
    """(InitSource or None, lineage record or None, its ModelConfig or None) of a run.

    --init-from: the weights are read and checked here, and refused when --resume is also given
    or --outdir already holds a run (unless --force). A run continued from a folder whose
    config.json (`continued`) records an init_from keeps that lineage: its shape and the --init-from
    defaults."""
    if init_from is None:
        recorded = _recorded_lineage(continued)
        if recorded is None:
            return None, None, None
        lineage, shape = recorded
        return None, lineage, shape
    if resume:
        raise UserError("--resume and --init-from do not go together: --resume continues the run in --outdir, "
                        "--init-from starts a new one from other weights; drop one of them")
    held = [p.name for p in (folder.ckpt_last, folder.ckpt_best, folder.history) if p.exists()]
    if held and not force:
        raise UserError(f"--outdir {folder.dir} already holds a run ({', '.join(held)}); --init-from starts a new "
                        f"run: use another --outdir, --resume without --init-from to continue that run, or "
                        f"--force to start over there")
    source = load_init_source(init_from, identity)
    return source, source.record, source.model_config


def _kept_preset_values(config: Optional[dict], preset: str, overrides: dict) -> dict:
    """field -> value: the preset's fields that no flag sets now and that the run being
    continued (`config`, its config.json; started from the same preset) recorded with another
    value. Presets change between versions (the family and the optimizer have), and the same
    command must go on continuing a run, as a cron job repeats it."""
    base = PRESETS.get(CUSTOM_BASE if preset == "custom" else preset)
    if config is None or base is None or config.get("preset") != preset:
        return {}
    train, model = config.get("train"), config.get("model")
    if not isinstance(train, dict) or not isinstance(model, dict):
        return {}
    recorded = {**train, **model}
    return {k: recorded[k] for k, v in base.items()
            if overrides.get(k) is None and recorded.get(k) is not None and recorded[k] != v}


def _recorded_lineage(config: Optional[dict]):
    """(init_from record, ModelConfig) from the config.json of a continued run (`config`) that
    was started with --init-from; None for any other run."""
    record = config.get("init_from") if config is not None else None
    try:
        return (record, ModelConfig.from_dict(config["model"])) if isinstance(record, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None       # a damaged config: the checkpoint's own checks decide


def _continued_config(folder: RunFolder) -> Optional[dict]:
    """The config.json of the run in `folder` when it has a checkpoint to continue and the file
    reads as a JSON object; None otherwise (the checkpoint's own checks decide then)."""
    if not folder.ckpt_last.exists():
        return None
    try:
        config = json.loads(folder.config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _diverged(trainer: Trainer) -> None:
    """The run diverged: nothing more is written but the note that the next run reads, and the plot."""
    folder, st = trainer.folder, trainer.state
    folder.write_plot(st.history)
    last = trainer.last_saved_step
    folder.write_divergence({"step": st.step, "last_good_step": last, "lr": trainer.cfg.lr})
    kept = (f"{folder.ckpt_best.name} (step {st.best_step:,}) and {folder.ckpt_last.name} (step {last:,}) are "
            f"left as they were; re-running resumes from step {last:,}" if last >= 0 else "no checkpoint was written")
    at = trainer.streak_limit_step
    what = (f"the loss was not finite for {MAX_NONFINITE_STEPS} steps in a row" if at is not None
            else "the weights or the validation loss were not finite")
    raise UserError(f"training diverged: {what} (at step {at or st.step:,}); lower --lr or raise --warmup-steps; "
                    f"{kept}", code=EXIT_DIVERGED)


def _finish(trainer: Trainer, reason: str) -> dict:
    folder, st = trainer.folder, trainer.state
    if reason in ("interrupted", "terminated", "max_time"):
        # The run goes on later: save where it is, and nothing else. An evaluation here would be
        # one the uninterrupted run never makes (patience, ckpt_best and the history would differ).
        if trainer.last_saved_step != st.step and not st.nonfinite_streak and trainer.weights_finite():
            trainer.save_last()
    elif not st.nonfinite_streak and st.last_eval_step != st.step:   # the run is over: a final evaluation
        if not trainer.evaluate_and_save():
            reason = "diverged"
    if reason == "diverged":
        _diverged(trainer)
    if reason in ("interrupted", "terminated"):
        saved = (f"saved {folder.ckpt_last} at step {trainer.last_saved_step:,}" if trainer.last_saved_step >= 0
                 else "nothing to save yet")
        log.warning(f"{reason}: {saved}; run the same command again to continue")
    else:
        messages = {"completed": f"finished {trainer.cfg.epochs} epochs",
                    "max_steps": f"reached --max-steps {trainer.cfg.max_steps:,}" if trainer.cfg.max_steps else "",
                    "max_time": "reached the --max-time cap (run the same command again to continue)",
                    "time_budget": f"finished the {trainer.cfg.total_steps:,} steps fitted to the --time-budget "
                                   f"of {format_seconds(trainer.cfg.time_budget or 0)} in "
                                   f"{format_seconds(trainer.elapsed())}",
                    "early_stopping": f"early stopping: no improvement in {trainer.cfg.patience} evaluations"}
        log.info(f"{messages[reason]} at step {st.step:,}")
    folder.write_plot(st.history)
    best = f"{st.best_val:.4f} at step {st.best_step:,}" if math.isfinite(st.best_val) else "n/a"
    log.info(f"best validation loss {best}; outputs in {folder.dir}")
    return trainer.summary(reason)
