"""Optimizers of `train --optimizer`: AdamW, or Muon (the presets') for the hidden matrices with AdamW
for the rest; `make_optimizer` builds either from a model and a TrainConfig.

Muon (Keller Jordan et al., 2024) replaces each 2-D weight's update by the nearest
semi-orthogonal matrix of its Nesterov momentum (a quintic Newton-Schulz iteration), which lets
every direction of the matrix learn at the same rate. It applies to the matrices inside the
transformer blocks only: the embedding (tied to the output head), norm scales and biases stay
with AdamW, as in the Muon and Moonlight papers. `Muon` here is torch.optim.Muon's algorithm
(same coefficients, Nesterov momentum, decoupled weight decay, "match_rms_adamw" learning-rate
scaling, so one --lr and one schedule serve both optimizers) with one difference: the iteration
runs in bf16 only where the device computes bf16 natively (CUDA, CPUs with AVX512_BF16/AMX) and
in fp32 elsewhere, where torch's hard-coded bf16 would be emulated and ~20x slower. In bf16 its
updates equal torch.optim.Muon's (tests/test_optimizers.py).

`OptimizerPair` steps both as one optimizer: param_groups, step, zero_grad, state_dict and
load_state_dict, so the training loop, the gradient scaler and checkpoints see one object.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from config import OPTIMIZERS

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)   # torch.optim.Muon's (and Keller Jordan's) quintic
NS_STEPS = 5
NS_EPS = 1e-7
MUON_MOMENTUM = 0.95


def newton_schulz(g: torch.Tensor, dtype: torch.dtype, steps: int = NS_STEPS) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with g's row and column spaces (U S' V^T, S' ~ 1),
    computed in `dtype`; the result is in g's dtype. `g` is one matrix, or a stack (k, m, n) of
    matrices of one shape, each orthogonalised on its own in one batched product per stage."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    one = x.dim() == 2                            # one matrix: exactly torch.optim.Muon's operations
    x = x / (x.norm() if one else x.norm(dim=(-2, -1), keepdim=True)).clamp(min=NS_EPS)   # spectral <= Frobenius <= 1
    addmm = torch.addmm if one else torch.baddbmm
    for _ in range(steps):
        m = x @ x.mT
        x = addmm(x, addmm(m, m, m, beta=b, alpha=c), x, beta=a)   # a x + (b m + c m^2) x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters (see the module docstring). `ns_dtype`: the Newton-Schulz
    precision (None = bf16 where the device has it natively, else fp32)."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = MUON_MOMENTUM,
                 nesterov: bool = True, ns_dtype: Optional[torch.dtype] = None):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(p.shape)}")
        self.ns_dtype = ns_dtype

    def _dtype(self, device: torch.device) -> torch.dtype:
        """The Newton-Schulz precision, decided at the first step (the parameters share one device), not per step."""
        if self.ns_dtype is None:
            self.ns_dtype = self._native_dtype(device)
        return self.ns_dtype

    @staticmethod
    def _native_dtype(device: torch.device) -> torch.dtype:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu":
            from precision import cpu_native_bf16
            return torch.bfloat16 if cpu_native_bf16() else torch.float32
        return torch.float32

    @torch.no_grad()
    def step(self, closure=None):
        """One update. Where `self.found_inf` is set (a 0-d tensor, as fused AdamW takes it from
        `step_unless`), the update is made on the device and kept only where it is 0: no host sync,
        and a kept update equals the plain one exactly."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        keep = None if found_inf is None else found_inf == 0     # on the parameters' device (step_unless)
        pending: dict[tuple, tuple[list, list]] = {}   # (shape, device, dtype) -> [(param, group)], [update]
        for group in self.param_groups:
            mom = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf, grad = state["momentum_buffer"], p.grad
                if keep is None:
                    buf.lerp_(grad, 1 - mom)
                else:
                    grad = torch.where(keep, grad, 0)      # a skipped step's NaNs never reach the state
                    buf.copy_(torch.where(keep, buf.lerp(grad, 1 - mom), buf))
                update = grad.lerp(buf, mom) if group["nesterov"] else buf
                params, updates = pending.setdefault((tuple(p.shape), p.device, p.dtype), ([], []))
                params.append((p, group))
                updates.append(update)
        # Matrices of one shape are orthogonalised together: a few large products instead of many small ones
        for (_, device, _), (params, updates) in pending.items():
            one = len(updates) == 1
            stacked = newton_schulz(updates[0] if one else torch.stack(updates), self._dtype(device))
            updates.clear()                                          # the stack is all that is needed now
            for (p, group), update in zip(params, [stacked] if one else stacked.unbind()):
                lr, wd = group["lr"], group["weight_decay"]
                new = p if keep is None else p.clone()
                new.mul_(1 - lr * wd)
                new.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape)))   # "match_rms_adamw"
                if keep is not None:
                    p.copy_(torch.where(keep, new, p))
        return loss


class OptimizerPair:
    """Several optimizers over disjoint parameters, stepped as one."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        parts = state.get("optimizers") if isinstance(state, dict) else None
        if not isinstance(parts, list) or len(parts) != len(self.optimizers):
            raise ValueError(f"the optimizer state holds {len(parts) if isinstance(parts, list) else 'no'} "
                             f"optimizers, not {len(self.optimizers)}")
        for o, s in zip(self.optimizers, parts):
            o.load_state_dict(s)


def takes_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` can skip its own update on the device (fused AdamW, our Muon)."""
    return isinstance(optimizer, Muon) or bool(optimizer.defaults.get("fused"))


def step_unless(optimizer, found_inf: torch.Tensor) -> None:
    """`optimizer.step()`, skipped where the 0-d float tensor `found_inf` is not 0 (a non-finite
    loss or gradient). The flag stays on the device for optimizers that take it (fused AdamW,
    Muon), so nothing waits for the GPU; others read it on the host first."""
    parts = optimizer.optimizers if isinstance(optimizer, OptimizerPair) else (optimizer,)
    for o in parts:
        if not takes_found_inf(o):
            if not found_inf.item():
                o.step()
            continue
        o.found_inf, o.grad_scale = found_inf.to(torch.float32), None
        try:
            o.step()
        finally:
            del o.found_inf, o.grad_scale


def hidden_matrices(model) -> list[torch.nn.Parameter]:
    """The 2-D weights inside the transformer blocks (attention and MLP projections): Muon's."""
    return [p for block in model.blocks for p in block.parameters() if p.dim() == 2 and p.requires_grad]


def adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has one for the device, else foreach."""
    kw = dict(lr=lr, betas=betas, eps=1e-8)
    try:
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True, **kw)


def make_optimizer(model, cfg):
    """`cfg.optimizer` for `model`: AdamW with weight decay on matrices only
    (model.configure_optimizer_groups), or Muon on the hidden matrices (weight decay
    cfg.weight_decay) with that AdamW on the embedding, norms and biases."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return adamw(model.configure_optimizer_groups(cfg.weight_decay), cfg.lr, betas)
    if cfg.optimizer != "muon":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    hidden = hidden_matrices(model)
    ids = {id(p) for p in hidden}
    groups = []
    for g in model.configure_optimizer_groups(cfg.weight_decay):
        rest = [p for p in g["params"] if id(p) not in ids]
        if rest:
            groups.append({**g, "params": rest})
    return OptimizerPair(Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay), adamw(groups, cfg.lr, betas))
