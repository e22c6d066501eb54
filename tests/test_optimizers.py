"""optimizers.py: our Muon is torch.optim.Muon's algorithm, its Newton-Schulz step orthogonalises,
`--optimizer muon` splits the parameters as documented, and it trains."""
from __future__ import annotations

import math

import pytest
import torch

import config as C
import optimizers as O
from model import GPT, ModelConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest.py


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_muon_in_bf16_is_torch_muon(shape):
    torch.manual_seed(0)
    ours_p = torch.nn.Parameter(torch.randn(shape))
    ref_p = torch.nn.Parameter(ours_p.detach().clone())
    start = ours_p.detach().clone()
    ours = O.Muon([ours_p], lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16)
    ref = torch.optim.Muon([ref_p], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        g = torch.randn(shape)
        ours_p.grad, ref_p.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.equal(ours_p, ref_p)
    assert (ours_p - start).abs().max() > 1e-3                                # it moved
    assert torch.equal(ours.state[ours_p]["momentum_buffer"], ref.state[ref_p]["momentum_buffer"])


def test_muon_over_many_matrices_is_muon_on_each_alone():
    """Matrices of one shape are orthogonalised as one batch; each result is the one-matrix update."""
    torch.manual_seed(0)
    shapes = [(48, 16), (48, 16), (16, 48), (32, 32), (48, 16), (32, 32)]
    together = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    alone = [torch.nn.Parameter(p.detach().clone()) for p in together]
    opt = O.Muon(together, lr=0.02, weight_decay=0.1, ns_dtype=torch.float32)
    singles = [O.Muon([p], lr=0.02, weight_decay=0.1, ns_dtype=torch.float32) for p in alone]
    for _ in range(3):
        for p, q in zip(together, alone):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
        opt.step()
        for single in singles:
            single.step()
    for p, q, single in zip(together, alone, singles):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)
        assert torch.equal(opt.state[p]["momentum_buffer"], single.state[q]["momentum_buffer"])
    batch = torch.stack([p.grad for p in together[:2]])
    assert torch.allclose(O.newton_schulz(batch, torch.float32)[1], O.newton_schulz(batch[1], torch.float32), atol=1e-6)


@pytest.mark.parametrize("shape", [(64, 24), (24, 64)])
def test_newton_schulz_flattens_the_singular_values(shape):
    torch.manual_seed(1)
    g = torch.randn(shape) @ torch.diag(torch.logspace(0, 2, shape[1]))   # condition number ~100
    s = torch.linalg.svdvals(O.newton_schulz(g, torch.float32))
    assert s.max() < 1.3 and s.min() > 0.3                   # U S' V^T with S' near 1 (was 1 .. 100)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    inner = u.T @ O.newton_schulz(g, torch.float32) @ vh.T     # diagonal: g's singular vectors are kept
    assert torch.allclose(inner, torch.diag(torch.diagonal(inner)), atol=2e-2)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, family="qwen3")
    model = GPT(cfg)
    tcfg = C.TrainConfig(optimizer="muon", lr=1e-2)
    opt = O.make_optimizer(model, tcfg)
    muon, adamw = opt.optimizers
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert not in_muon & in_adamw and in_muon | in_adamw == {id(p) for p in model.parameters()}
    assert in_muon == {id(p) for b in model.blocks for p in b.parameters() if p.dim() == 2}
    assert id(model.tok_emb.weight) in in_adamw
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])

    x = torch.randint(0, 64, (4, 16))
    losses = []
    for _ in range(30):
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]

    state = opt.state_dict()
    fresh = O.make_optimizer(GPT(cfg), tcfg)
    fresh.load_state_dict(state)
    assert len(fresh.state) == len(opt.state)
    with pytest.raises(ValueError, match="holds 1 optimizers, not 2"):
        fresh.load_state_dict({"optimizers": [state["optimizers"][0]]})


def state_tensors(opt) -> list[torch.Tensor]:
    """Every tensor of an optimizer's (or a pair's) state, in a fixed order, cloned."""
    parts = opt.optimizers if isinstance(opt, O.OptimizerPair) else (opt,)
    return [v.clone() for o in parts for p in o.state.values() for _, v in sorted(p.items())
            if isinstance(v, torch.Tensor)]


def twin_models(family: str = "qwen3") -> tuple[GPT, GPT]:
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, family=family)
    torch.manual_seed(0)
    a, b = GPT(cfg), GPT(cfg)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_step_unless_keeps_an_update_exact_and_skips_a_flagged_one_entirely(optimizer):
    """The training step decides on the device whether to update (optimizers.step_unless): an
    unflagged step is the plain step bit for bit; a flagged one (NaN gradients) changes no weight
    and no optimizer state (Adam's step count included)."""
    a, b = twin_models()
    tcfg = C.TrainConfig(optimizer=optimizer, lr=1e-2)
    opt_a, opt_b = O.make_optimizer(a, tcfg), O.make_optimizer(b, tcfg)
    assert all(O.takes_found_inf(o) for o in (opt_b.optimizers if optimizer == "muon" else [opt_b]))
    x = torch.randint(0, 64, (4, 16))
    for _ in range(3):
        for m in (a, b):
            m(x, x)[1].backward()
        opt_a.step()
        O.step_unless(opt_b, torch.tensor(0.0))
        opt_a.zero_grad(set_to_none=True)
        opt_b.zero_grad(set_to_none=True)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(torch.equal(s, t) for s, t in zip(state_tensors(opt_a), state_tensors(opt_b)))

    weights, state = [p.detach().clone() for p in b.parameters()], state_tensors(opt_b)
    for p in b.parameters():
        p.grad = torch.full_like(p, float("nan"))
    O.step_unless(opt_b, torch.tensor(1.0))
    assert all(torch.equal(w, p) for w, p in zip(weights, b.parameters()))
    after = state_tensors(opt_b)
    assert len(after) == len(state) and all(torch.equal(s, t) for s, t in zip(state, after))
    assert not hasattr(opt_b, "found_inf")


def test_step_unless_reads_the_flag_for_an_optimizer_without_a_device_skip():
    a, _ = twin_models()
    opt = torch.optim.AdamW(a.parameters(), lr=1e-2, foreach=True)
    assert not O.takes_found_inf(opt)
    a(torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16)))[1].backward()
    before = [p.detach().clone() for p in a.parameters()]
    O.step_unless(opt, torch.tensor(1.0))
    assert all(torch.equal(w, p) for w, p in zip(before, a.parameters())) and not opt.state
    O.step_unless(opt, torch.tensor(0.0))
    assert all(not torch.equal(w, p) for w, p in zip(before, a.parameters()))


def test_the_training_step_through_an_enabled_gradient_scaler():
    """fp16 training unscales, steps the pair unless the gradients overflowed, and updates the
    scale (checked with the CPU scaler; CUDA's takes the same path). An overflow is the scaler's
    business: no update, a lower scale, and not a skipped step."""
    import contextlib

    import training
    model, _ = twin_models("llama")
    opt = O.make_optimizer(model, C.TrainConfig(optimizer="muon", lr=1e-2))
    x = torch.randint(0, 64, (2, 16))

    def step(scaler):
        return training.read_step(training.optimizer_step(model, model, opt, scaler, [(x, x)], lr=1e-2, grad_clip=1.0,
                                                          device=torch.device("cpu"), autocast=contextlib.nullcontext))

    before = [p.detach().clone() for p in model.parameters()]
    huge = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)           # loss x scale overflows fp32
    loss, norm, tokens = step(huge)
    assert loss is not None and not math.isfinite(norm) and tokens == x.numel()   # not counted as skipped
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))     # but no update
    assert huge.get_scale() == 2.0 ** 126
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    loss, norm, _ = step(scaler)
    assert loss is not None and 0 < norm < 100                           # unscaled (the scale was 1024)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))   # every parameter moved
    assert scaler.get_scale() == 1024.0
