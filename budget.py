"""--time-budget: fitting a run's learning-rate schedule to a wall-clock budget.

The trainer measures (a probe gives the seconds of one optimizer step and of one evaluation
with its checkpoint writes) and reports the wall time of every step; `TimeBudget` turns those
measurements into the schedule, warmup-stable-decay fixed once:

1. `plan`: the probe estimates the steps the budget holds; that fixes warmup_steps (unless
   given). The lr then stays at its peak, whatever the step count will be ...
2. `decay_due`: ... until the time left reaches DECAY_FRACTION of the budget (or the
   --epochs / --max-steps cap is that close);
3. `fix`: total_steps is then set from the mean time of the last STEP_WINDOW steps and the lr
   decays linearly to min_lr at that step (config.lr_at). From there on the schedule is an
   ordinary fixed one, stored in the checkpoint (resume is exact).

An estimate that is off by x% moves the end by x% of the decay only. When --epochs /
--max-steps end the run before the budget would, `plan` returns the usual cosine schedule of
that many steps instead. Pure arithmetic on configs and seconds: no model, no clock.
"""
from __future__ import annotations

import dataclasses

from common import format_seconds, log
from config import WSD_DECAY_FRACTION, TrainConfig, resolve_schedule

DECAY_FRACTION = WSD_DECAY_FRACTION   # the lr decays over the last 20% of the budget
STEP_WINDOW = 50              # recent steps whose mean time fixes the decay's length
SAFETY = 0.98                 # fraction of the remaining time planned for steps
RESERVE_S = 1.5               # seconds kept for the end: plot, last save, exit


def kept_schedule(requested: TrainConfig, cfg: TrainConfig, old: dict, fixed: bool
                  ) -> tuple[TrainConfig, TrainConfig]:
    """On resume: a budgeted run keeps the warmup it planned (`old`: the checkpoint's train config)
    and, once fixed, its length and decay. (requested, cfg) as they continue."""
    if cfg.time_budget is None or old.get("time_budget") is None:
        return requested, cfg
    kept = {"warmup_steps": int(old["warmup_steps"])}
    requested, cfg = dataclasses.replace(requested, **kept), dataclasses.replace(cfg, **kept)
    if fixed:
        cfg = dataclasses.replace(cfg, total_steps=int(old["total_steps"]), decay_start=old.get("decay_start"))
    return requested, cfg


class TimeBudget:
    def __init__(self, requested: TrainConfig, steps_per_epoch: int, costs: dict):
        """`requested`: the run's config before resolve_schedule (its warmup_steps None unless
        given or kept from the run being resumed); `costs`: the probe's seconds per "step" and
        per "eval" (evaluation, sample and two checkpoint writes)."""
        assert requested.time_budget is not None
        self.requested, self.steps_per_epoch, self.costs = requested, steps_per_epoch, costs
        self.seconds = requested.time_budget
        self.estimate = 0                  # steps the budget holds, as estimated by the probe
        self.step_seconds: list[float] = []

    def plan(self, step: int, elapsed: float) -> tuple[TrainConfig, bool]:
        """The schedule to train with from `step`, and whether it is already fixed (cosine)."""
        req = self.requested
        cap = req.epochs * self.steps_per_epoch
        if req.max_steps is not None:
            cap = min(cap, req.max_steps)
        self.estimate = self.steps(req, step, self.costs["step"], self.seconds - elapsed)
        costs = (f"probe: {self.costs['step']:.3f}s per step, {self.costs['eval']:.2f}s per evaluation and save")
        budget = format_seconds(self.seconds)
        if self.estimate >= cap:
            log.info(f"time budget {budget}: {costs}; it holds ~{self.estimate:,} steps, more than the "
                     f"{cap:,} of --epochs/--max-steps: {req.schedule} schedule of {cap:,} steps")
            return resolve_schedule(req, self.steps_per_epoch), True
        cfg = resolve_schedule(req, self.steps_per_epoch, budget_steps=self.estimate)
        cfg = dataclasses.replace(cfg, total_steps=cap, decay_start=cap)
        log.info(f"time budget {budget}: {costs}; ~{self.estimate:,} steps: warmup {cfg.warmup_steps}, lr "
                 f"{cfg.lr:g} until {100 * DECAY_FRACTION:.0f}% of the budget is left, then a linear decay to "
                 f"{cfg.min_lr:g} ending on time")
        return cfg, False

    def record(self, seconds: float) -> None:
        """The wall time of one step (data, update and bookkeeping; evaluations excluded)."""
        self.step_seconds.append(seconds)

    def recent_step_seconds(self) -> float:
        """The mean time of the last STEP_WINDOW steps (the probe's figure before any step)."""
        recent = self.step_seconds[-STEP_WINDOW:]
        return sum(recent) / len(recent) if recent else self.costs["step"]

    def refresh(self, cfg: TrainConfig, step: int, elapsed: float) -> int:
        """Re-estimate the steps the budget holds from the measured step times (the progress
        bar's total and eta; the schedule is not touched until `fix`)."""
        self.estimate = min(cfg.total_steps, self.steps(cfg, step, self.recent_step_seconds(), self.seconds - elapsed))
        return self.estimate

    def decay_due(self, cfg: TrainConfig, step: int, elapsed: float) -> bool:
        """Time to fix the schedule: the decay's share of the budget is all that is left, or the
        --epochs/--max-steps cap is that close."""
        left = self.seconds - elapsed - self.costs["eval"] - RESERVE_S
        return left <= DECAY_FRACTION * self.seconds or step >= (1 - DECAY_FRACTION) * cfg.total_steps

    def fix(self, cfg: TrainConfig, step: int, elapsed: float) -> TrainConfig:
        """The fixed schedule: total_steps from the recent step time, the decay starting at `step`."""
        step_s = self.recent_step_seconds()
        cap = cfg.total_steps
        total = min(cap, self.steps(cfg, step, step_s, self.seconds - elapsed))
        capped = " (capped by --epochs/--max-steps)" if total == cap else ""
        window = min(len(self.step_seconds), STEP_WINDOW)
        log.info(f"time budget: {step_s:.3f}s per step over the last {window} steps; schedule fixed at "
                 f"{total:,} steps{capped}: lr decays from step {step:,} to {cfg.min_lr:g}")
        return dataclasses.replace(cfg, total_steps=total, decay_start=step)

    def steps(self, cfg: TrainConfig, step: int, step_seconds: float, seconds_left: float) -> int:
        """The step at which a run now at `step` must end to use `seconds_left`, at `step_seconds`
        per step plus the evaluations (every eval_every steps and at each epoch end) and the last."""
        eval_s = self.costs["eval"]
        per_step = step_seconds + eval_s * (1 / cfg.eval_every + 1 / self.steps_per_epoch)
        left = seconds_left - eval_s - RESERVE_S
        return step + max(1, int(SAFETY * left / max(per_step, 1e-9)))
