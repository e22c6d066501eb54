"""optimizers.py: our Muon is torch.optim.Muon's algorithm, its Newton-Schulz step orthogonalises,
`--optimizer muon` splits the parameters as documented, and it trains."""
from __future__ import annotations

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


def test_the_pair_works_through_an_enabled_gradient_scaler():
    """fp16 training unscales and steps through torch.amp.GradScaler: the pair must pass for an
    optimizer there (checked with the CPU scaler; CUDA's takes the same path)."""
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16, family="llama")
    model = GPT(cfg)
    opt = O.make_optimizer(model, C.TrainConfig(optimizer="muon", lr=1e-2))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(0, 64, (2, 16))
    _, loss = model(x, x)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    grads = [p.grad.clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    assert all(g.abs().max() < 100 for g in grads)                     # unscaled (scale was 1024)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))   # every parameter moved
