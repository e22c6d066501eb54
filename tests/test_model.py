"""model.py: shapes, RoPE, attention references, document-aware masking, KV cache, loading."""
from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import checkpoint as CK
import model as M
from common import UserError, file_sha256
from tokenizer import load_identity

SEP = 0


def tiny_cfg(**kw) -> M.ModelConfig:
    base = dict(vocab_size=97, block_size=64, n_layer=2, n_head=2, n_embd=32, sep_token_id=SEP)
    base.update(kw)
    return M.ModelConfig(**base)


def tiny_model(seed=0, **kw) -> M.GPT:
    torch.manual_seed(seed)
    return M.GPT(tiny_cfg(**kw)).eval()


def random_tokens(B, T, vocab=97, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (B, T), generator=g)  # ids 0..2 are the special tokens


# =========================================================================== config

def test_config_collects_every_problem_with_values_and_limits():
    with pytest.raises(ValueError) as e:
        M.ModelConfig(n_embd=100, n_head=6, block_size=0, dropout=1.0, vocab_size=10, sep_token_id=10)
    msg = str(e.value)
    assert "n_embd=100 is not divisible by n_head=6" in msg
    assert "block_size=0" in msg
    assert "dropout=1.0" in msg and "[0, 1)" in msg
    assert "sep_token_id=10 must be < vocab_size=10" in msg


@pytest.mark.parametrize("kw, fragment", [
    (dict(n_embd=12, n_head=4), "must be even for RoPE"),
    (dict(n_layer=0), "n_layer=0"),
    (dict(n_head=-2), "n_head=-2"),
    (dict(vocab_size=3.5), "vocab_size=3.5"),
    (dict(dropout=-0.1), "dropout=-0.1"),
    (dict(rope_base=0), "rope_base=0"),
    (dict(norm_eps=0.0), "norm_eps=0.0"),
    (dict(sep_token_id=-1), "sep_token_id=-1"),
    (dict(family="neox", activation="silu"), "activation='silu' must be one of gelu, relu2 for the neox family"),
    (dict(family="qwen3", activation="gelu"), "activation='gelu' must be one of silu, relu2"),
])
def test_config_single_errors(kw, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        M.ModelConfig(**kw)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = tiny_cfg(sep_token_id=None, dropout=0.1)
    assert M.ModelConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k != "activation"}   # a checkpoint from before the key
    assert M.ModelConfig.from_dict(old) == cfg and cfg.activation == M.ACTIVATIONS[cfg.family][0]
    with pytest.raises(ValueError, match="unknown model config keys"):
        M.ModelConfig.from_dict({**cfg.to_dict(), "n_embed": 32})


PRESET_SHAPES = {  # (n_layer, n_head, n_embd) -> target parameters at a 32k vocabulary
    "small": ((4, 4, 256), 10e6),
    "medium": ((10, 6, 384), 30e6),
    "large": ((10, 10, 640), 70e6),
}


@pytest.mark.parametrize("name", PRESET_SHAPES)
def test_preset_shapes_parameter_counts(name):
    (n_layer, n_head, n_embd), target = PRESET_SHAPES[name]
    cfg = M.ModelConfig(vocab_size=32000, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    m = _count_only(cfg)
    # closed form: embedding (tied head) + per block (ln, qkv, proj, ln, fc, proj) + ln_f
    C, L = n_embd, n_layer
    expected = 32000 * C + L * (2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C + 4 * C * C + C) + 2 * C
    assert m == expected
    assert abs(m - target) / target < 0.20, (name, m)


@pytest.mark.parametrize("family", list(M.FAMILIES))
def test_every_family_counts_its_parameters(family):
    cfg = M.ModelConfig(vocab_size=8192, n_layer=6, n_head=8, n_embd=256, family=family)
    assert cfg.num_parameters() == _count_only(cfg)
    assert cfg.bias == (family == "neox")
    # the gated MLP is 8/3 as wide, so every family has (nearly) the same parameters
    assert cfg.intermediate_size == {"neox": 1024, "llama": 683, "qwen3": 683}[family]
    assert abs(cfg.num_parameters() - 6.8e6) / 6.8e6 < 0.03
    assert M.ModelConfig.from_dict(cfg.to_dict()) == cfg
    wide = M.ModelConfig(vocab_size=97, n_layer=1, n_head=2, n_embd=32, family=family, intermediate_size=40)
    assert wide.num_parameters() == _count_only(wide)


def test_family_config_errors():
    with pytest.raises(ValueError, match="family='gpt2' must be one of neox, llama, qwen3"):
        M.ModelConfig(family="gpt2")
    with pytest.raises(ValueError, match="the llama family has no biases"):
        M.ModelConfig(family="llama", bias=True)
    with pytest.raises(ValueError, match="intermediate_size=0"):
        M.ModelConfig(intermediate_size=0)
    assert M.ModelConfig.from_dict({"n_layer": 2}).family == "neox"  # checkpoints from before families


def test_swiglu_mlp_is_silu_gate_times_up():
    m = tiny_model(family="llama", intermediate_size=24)
    mlp = m.blocks[0].mlp
    x = torch.randn(3, 32)
    gate, up = mlp.fc.weight[:24], mlp.fc.weight[24:]
    want = (F.silu(x @ gate.T) * (x @ up.T)) @ mlp.proj.weight.T
    assert mlp.fc.bias is None and torch.allclose(mlp(x), want, atol=1e-6)
    assert isinstance(m.blocks[0].ln_1, torch.nn.RMSNorm) and isinstance(tiny_model().blocks[0].ln_1, torch.nn.LayerNorm)


@pytest.mark.parametrize("rows", [1, 16, M.ONEDNN_GELU_MIN // 1024 + 1])
def test_gelu_is_exact_gelu_and_leaves_small_tensors_to_aten(monkeypatch, rows):
    """model.gelu equals F.gelu (values and gradients); below ONEDNN_GELU_MIN values it computes
    with oneDNN switched off (its fixed cost dominates a decoding step) and switches it back on."""
    x = torch.randn(rows, 1, 1024, requires_grad=True)
    y = M.gelu(x)
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    F.gelu(x2).sum().backward()
    assert torch.allclose(y, F.gelu(x2), atol=1e-6) and torch.allclose(x.grad, x2.grad, atol=1e-6)
    seen = []
    real = F.gelu
    monkeypatch.setattr(M.F, "gelu", lambda t: seen.append(torch.backends.mkldnn.enabled) or real(t))
    M.gelu(x.detach())
    assert seen == [x.numel() >= M.ONEDNN_GELU_MIN] and torch.backends.mkldnn.enabled
    with torch.backends.mkldnn.flags(enabled=False):  # a caller's choice stands
        M.gelu(x.detach())
        assert seen[-1] is False and torch.backends.mkldnn.enabled is False
    assert torch.backends.mkldnn.enabled


def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k():
    x = random_tokens(2, 16)
    for family, blind in (("qwen3", True), ("llama", False)):
        m = tiny_model(family=family)
        before, _ = m(x)
        with torch.no_grad():
            for block in m.blocks:
                block.attn.qkv.weight[:64] *= 7.0  # the q and k rows (C = 32 each)
        after, _ = m(x)
        assert torch.allclose(before, after, atol=1e-4) == blind, family


def _count_only(cfg):
    with torch.device("meta"):  # counts only: no memory, no init time
        return M.GPT(cfg).num_parameters()


# =========================================================================== shapes, tying, init

def test_forward_shapes_and_loss():
    m = tiny_model()
    idx = random_tokens(3, 20)
    logits, loss = m(idx)
    assert logits.shape == (3, 20, 97) and logits.dtype == torch.float32 and loss is None
    targets = random_tokens(3, 20, seed=2)
    targets[:, :5] = -1
    none, loss = m(idx, targets)  # with targets: the chunked loss, no (B, T, V) logits
    expected = F.cross_entropy(logits[:, 5:].reshape(-1, 97), targets[:, 5:].reshape(-1))
    assert none is None and loss.shape == () and torch.allclose(loss, expected)
    per_token = m.token_losses(idx, targets)
    assert per_token.shape == (3, 20) and (per_token[:, :5] == 0).all()
    assert torch.allclose(per_token[:, 5:].mean(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="exceeds block_size=64"):
        m(random_tokens(1, 65))


def test_tied_weights_share_storage_and_count_once():
    m = tiny_model()
    assert m.lm_head.weight is m.tok_emb.weight
    assert m.lm_head.weight.data_ptr() == m.tok_emb.weight.data_ptr()
    unique = {p.data_ptr(): p.numel() for p in m.state_dict().values()}
    assert m.num_parameters() == sum(unique.values())
    # still tied after loading a state dict into a fresh model
    m2 = M.GPT(tiny_cfg())
    m2.load_state_dict(m.state_dict())
    assert m2.lm_head.weight.data_ptr() == m2.tok_emb.weight.data_ptr()


def test_untied_head_is_its_own_matrix_counted_saved_and_trained():
    tied, untied = tiny_model(), tiny_model(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.tok_emb.weight
    V, C = untied.cfg.vocab_size, untied.cfg.n_embd
    assert untied.num_parameters() == tied.num_parameters() + V * C == untied.cfg.num_parameters()
    assert untied.num_parameters() == _count_only(untied.cfg)
    head = untied.lm_head.weight
    assert head.shape[0] == untied.cfg.padded_vocab_size and (head[V:] == 0).all()
    assert abs(head[:V].std().item() - 0.02) < 0.003
    # saved with its vocab_size real rows, loaded back into a fresh model: the same function
    state = untied.state_dict()
    assert state["lm_head.weight"].shape == (V, C) and not torch.equal(state["lm_head.weight"], state["tok_emb.weight"])
    again = M.GPT(untied.cfg).eval()
    again.load_state_dict(state)
    idx = random_tokens(2, 16)
    assert torch.equal(again(idx)[0], untied(idx)[0])
    # trained apart from the embedding; its padding rows get no gradient
    untied.train()
    _, loss = untied(idx, random_tokens(2, 16, seed=3))
    loss.backward()
    assert head.grad is not None and (head.grad[V:] == 0).all() and head.grad[:V].abs().sum() > 0
    decay, no_decay = untied.configure_optimizer_groups(0.1)
    assert any(p is head for p in decay["params"])
    # the checkpoint check counts both matrices
    assert set(CK.check_weights(state, untied.cfg, "x.pt", "hint")) == set(state)
    with pytest.raises(UserError, match="damaged"):
        CK.check_weights({k: v for k, v in state.items() if k != "lm_head.weight"}, untied.cfg, "x.pt", "hint")
    with pytest.raises(ValueError, match="tie_embeddings='no' must be true or false"):
        tiny_cfg(tie_embeddings="no")


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    m = M.GPT(tiny_cfg(n_layer=8, n_embd=64, n_head=4))
    assert abs(m.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    resid = 0.02 / math.sqrt(2 * 8)
    assert abs(m.blocks[3].mlp.proj.weight.std().item() - resid) < 0.1 * resid
    assert abs(m.blocks[3].attn.proj.weight.std().item() - resid) < 0.1 * resid
    assert torch.all(m.blocks[0].attn.qkv.bias == 0) and torch.all(m.ln_f.weight == 1)


def test_optimizer_groups_cover_every_parameter_once():
    m = tiny_model()
    decay, no_decay = m.configure_optimizer_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    torch.optim.AdamW([decay, no_decay], lr=1e-3)  # accepted as-is


# =========================================================================== RoPE and attention

def test_rope_matches_complex_formula():
    T, D, base = 11, 8, 10000.0
    x = torch.randn(2, 3, T, D, dtype=torch.float64)
    cos, sin = M.rope_cache(T, D, base)
    got = M.apply_rope(x, cos.double(), sin.double())
    # rotate_half pairs dim i with dim i + D/2: z_i = x_i + j * x_{i + D/2}, rotated by pos * theta_i
    half = D // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / D)  # (D/2,)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * theta  # (T, D/2)
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angle), angle)
    want = torch.cat([z.real, z.imag], dim=-1)
    assert torch.allclose(got, want, atol=1e-5)
    # position 0 is the identity; relative property: <rope(q, m), rope(k, n)> depends on m - n only
    assert torch.allclose(got[..., 0, :], x[..., 0, :])
    q, k = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    rq = M.apply_rope(q.expand(T, D), cos.double(), sin.double())
    rk = M.apply_rope(k.expand(T, D), cos.double(), sin.double())
    assert torch.allclose(rq[5] @ rk[2], rq[9] @ rk[6], atol=1e-5)


@pytest.mark.parametrize("family", list(M.FAMILIES))
def test_interleaved_rope_computes_what_the_checkpoint_layout_computes(family):
    """GPT.interleave_rope (inference on a CPU): the same logits, token losses and cached
    decoding as the model in the checkpoint's layout; a second call changes nothing; the real
    form (torch.compile) and bf16 equal the complex product."""
    ref = tiny_model(family=family, bias=family == "neox")
    for block in ref.blocks:                  # zero-initialised biases and unit norms would hide a missed row
        with torch.no_grad():
            for p in (block.attn.qkv.bias, *(n.weight for n in (block.attn.q_norm, block.attn.k_norm) if n)):
                if p is not None:
                    p.uniform_(0.5, 1.5)
    m = copy.deepcopy(ref)
    m.interleave_rope()
    m.interleave_rope()
    with pytest.raises(RuntimeError, match="interleaved for inference"):
        m.state_dict()                                                  # never saved in that layout
    assert m.rope_cos.shape == (64, 8) and not torch.equal(m.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)
    idx = random_tokens(2, 20)
    idx[:, 5] = SEP                                                     # two documents in each row
    plain = random_tokens(2, 12, seed=2)                                # one document, for the KV cache
    with torch.no_grad():
        assert torch.allclose(m(idx)[0], ref(idx)[0], atol=1e-5)
        assert torch.allclose(m.token_losses(idx[:, :-1], idx[:, 1:]), ref.token_losses(idx[:, :-1], idx[:, 1:]),
                              atol=1e-5)
        m.setup_cache(batch_size=2, max_seq_len=16)
        steps = [m(plain[:, :8], input_pos=torch.arange(8))[0]]
        steps += [m(plain[:, t:t + 1], input_pos=torch.tensor([t]))[0] for t in range(8, 12)]
        assert torch.allclose(torch.cat(steps, dim=1), ref(plain)[0], atol=1e-5)
    x = torch.randn(2, 7, 2, 3, 16)                                     # D = 16: tables of D/2 = 8
    cos, sin = m.rope_cos[:7, None, None, :], m.rope_sin[:7, None, None, :]
    complex_form = M.apply_rope(x, torch.complex(cos, sin), None)
    assert torch.allclose(M.apply_rope(x, cos, sin), complex_form, atol=1e-6)       # the real form
    half = M.apply_rope(x.bfloat16(), torch.complex(cos, sin), None)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), complex_form, atol=0.02)


def test_sdpa_matches_reference_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8) for _ in range(3))
    got = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(got, M.reference_attention(q, k, v, is_causal=True), atol=1e-5)
    mask = torch.rand(2, 1, 9, 9) > 0.4
    mask |= torch.eye(9, dtype=torch.bool)  # no empty rows
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(got, M.reference_attention(q, k, v, mask=mask), atol=1e-5)


def _document_positions_3x16() -> torch.Tensor:
    """RoPE positions of three 16-token windows: one document, two, three (segment_mask's input)."""
    return torch.stack([torch.arange(16), torch.cat([torch.arange(5), torch.arange(11)]),
                        torch.cat([torch.arange(1), torch.arange(9), torch.arange(6)])])


@pytest.mark.parametrize("H, tile_heads", [(6, 6), (6, 2), (5, 1)])
def test_cpu_attention_computes_attention_and_its_gradients(monkeypatch, H, tile_heads):
    """_CpuBf16Attention's algorithm, run in float32 (the same code with float32 products): the
    outputs and the q, k, v gradients of SDPA within rounding, causal and with a document mask,
    a whole row of heads per tile or a few."""
    monkeypatch.setattr(M, "_SCORE_TILE_BYTES", tile_heads * 16 * 16 * 4)
    assert M._heads_per_tile(H, 16) == tile_heads
    torch.manual_seed(0)
    for mask in (None, M.segment_mask(_document_positions_3x16())):
        q, k, v = (torch.randn(3, H, 16, 8, requires_grad=True) for _ in range(3))
        w = torch.randn(3, H, 16, 8)
        got = M.cpu_bf16_attention(q, k, v, mask)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        assert torch.allclose(got, want, atol=1e-5)
        got_grads = torch.autograd.grad((got * w).sum(), (q, k, v))
        want_grads = torch.autograd.grad((want * w).sum(), (q, k, v))
        for name, g, ref in zip("qkv", got_grads, want_grads):
            assert torch.allclose(g, ref, atol=1e-4), (mask is None, name, (g - ref).abs().max())


def test_cpu_attention_builds_a_masks_bias_once_and_never_reuses_another_masks():
    """The layers of one forward share the mask object, and with it its additive bias; a new
    mask (the next window's documents, even one equal to the last), another length or dtype, or
    a causal call gets its own, so outputs always follow the mask given."""
    positions = _document_positions_3x16()
    mask = M.segment_mask(positions)
    bias = M._additive_mask(mask, 16, torch.float32, "cpu")
    assert M._additive_mask(mask, 16, torch.float32, "cpu") is bias
    assert M._additive_mask(mask.clone(), 16, torch.float32, "cpu") is not bias
    assert M._additive_mask(mask, 16, torch.bfloat16, "cpu").dtype == torch.bfloat16
    causal = M._additive_mask(None, 16, torch.float32, "cpu")
    assert M._additive_mask(None, 16, torch.float32, "cpu") is causal
    assert M._additive_mask(None, 8, torch.float32, "cpu").shape == (1, 8, 8)
    assert torch.equal(causal[0].isinf(), ~torch.ones(16, 16, dtype=torch.bool).tril())
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 16, 8) for _ in range(3))
    other = M.segment_mask(positions.roll(5, dims=0))       # the rows' documents in another order
    for m in (mask, other, mask, None, other):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=m is None)
        assert torch.allclose(M.cpu_bf16_attention(q, k, v, m), want, atol=1e-5)


def test_cpu_attention_in_bf16_is_about_as_close_to_float32_as_sdpas_kernel():
    """In bf16, its outputs and gradients stay within 3x the error of SDPA's own bf16 kernel
    (both against float32 SDPA): it rounds the scores to bf16, the flash kernel does not."""
    torch.manual_seed(0)
    for mask in (None, M.segment_mask(_document_positions_3x16())):
        qkv, w = [torch.randn(3, 4, 16, 8) for _ in range(3)], torch.randn(3, 4, 16, 8)

        def run(attention, dtype):
            xs = [x.to(dtype).requires_grad_() for x in qkv]
            y = attention(*xs)
            return [y.float()] + [g.float() for g in torch.autograd.grad((y.float() * w).sum(), xs)]

        def sdpa(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)

        ref, flash = run(sdpa, torch.float32), run(sdpa, torch.bfloat16)
        ours = run(lambda q, k, v: M.cpu_bf16_attention(q, k, v, mask), torch.bfloat16)
        for name, r, f, o in zip(("out", "dq", "dk", "dv"), ref, flash, ours):
            assert (o - r).abs().max() <= 3 * (f - r).abs().max() + 1e-3, (mask is None, name)


def test_bf16_training_on_a_cpu_takes_the_cpu_attention(monkeypatch):
    """Training under bf16 autocast on a CPU attends with _CpuBf16Attention in every layer (with
    a document mask too, and under gradient checkpointing), the loss and gradients of the SDPA
    path within bf16 rounding; bf16 evaluation takes its forward alone (the loss of SDPA's within
    bf16 rounding); float32 training and dropout keep SDPA."""
    calls, apply = [], M._CpuBf16Attention.apply
    monkeypatch.setattr(M._CpuBf16Attention, "apply", lambda *a: calls.append(1) or apply(*a))
    forwards, tiled = [], M._tiled_attention
    monkeypatch.setattr(M, "_tiled_attention", lambda *a: forwards.append(1) or tiled(*a))
    idx, y = random_tokens(2, 32), random_tokens(2, 32, seed=9)
    idx[:, 0] = SEP
    idx[1, 10] = SEP                                   # row 1 holds two documents: the dense mask

    def loss_and_grads(m, autocast=True):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, loss = m(idx, y)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])

    def eval_loss(m):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return m.eval()(idx, y)[1].item()

    m = tiny_model(n_layer=3).train()
    loss, grads = loss_and_grads(m)
    assert len(calls) == 3 and len(forwards) == 3
    m.gradient_checkpointing = True
    assert loss_and_grads(m)[0] == loss and len(calls) == 9   # and again in the backward
    m.gradient_checkpointing = False
    calls.clear(), forwards.clear()
    ours_eval = eval_loss(m)
    assert calls == [] and len(forwards) == 3            # evaluation: the forward alone
    applies = M.cpu_bf16_attention_applies
    monkeypatch.setattr(M, "cpu_bf16_attention_applies", lambda *a: False)
    assert abs(ours_eval - eval_loss(m)) < 0.01 * ours_eval
    sdpa_loss, sdpa_grads = loss_and_grads(m.train())
    assert abs(loss - sdpa_loss) < 0.01 * sdpa_loss
    assert F.cosine_similarity(grads, sdpa_grads, dim=0) > 0.99
    monkeypatch.setattr(M, "cpu_bf16_attention_applies", applies)
    calls.clear(), forwards.clear()
    loss_and_grads(m, autocast=False)                  # float32
    loss_and_grads(tiny_model(n_layer=3, dropout=0.1).train())
    assert calls == [] and forwards == []


def _with_reference_attention(monkeypatch):
    def ref(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
        assert dropout_p == 0.0
        return M.reference_attention(q, k, v, mask=attn_mask, is_causal=is_causal)
    monkeypatch.setattr(M.F, "scaled_dot_product_attention", ref)


@pytest.mark.parametrize("sep", [SEP, None])
def test_model_with_sdpa_equals_model_with_reference_attention(monkeypatch, sep):
    m = tiny_model(sep_token_id=sep)
    idx = random_tokens(2, 30)
    idx[:, 0] = SEP
    idx[0, 12] = SEP
    want, _ = m(idx)
    _with_reference_attention(monkeypatch)
    got, _ = m(idx)
    assert torch.allclose(got, want, atol=1e-5)


def test_use_flash_attn_falls_back_to_sdpa_on_cpu(caplog):
    import logging
    m = tiny_model()
    idx = random_tokens(1, 10)
    want, _ = m(idx)
    with caplog.at_level(logging.INFO, logger="mini_llm"):
        assert m.use_flash_attn(True) is False
    assert any(r.getMessage().startswith("attention: SDPA within one document, SDPA with a dense document mask")
               for r in caplog.records)
    assert m.document_kernel == "sdpa"
    got, _ = m(idx)
    assert torch.equal(got, want)


# =========================================================================== document-aware attention

@pytest.mark.parametrize("family", list(M.FAMILIES))
def test_packed_window_equals_documents_run_alone(family):
    m = tiny_model(family=family)
    d1 = random_tokens(1, 9, seed=3)[0]
    d2 = random_tokens(1, 6, seed=4)[0]
    nxt = torch.tensor([5])  # the token after d2 in the stream
    sep = torch.tensor([SEP])
    x = torch.cat([sep, d1, sep, d2])[None]  # (1, 17): [SEP d1 SEP d2]
    y = torch.cat([d1, sep, d2, nxt])[None]  # targets: d1 ends by predicting SEP
    packed_logits, _ = m(x)
    _, packed_loss = m(x, y)

    x1, y1 = torch.cat([sep, d1])[None], torch.cat([d1, sep])[None]
    x2, y2 = torch.cat([sep, d2])[None], torch.cat([d2, nxt])[None]
    (l1, _), (_, loss1) = m(x1), m(x1, y1)
    (l2, _), (_, loss2) = m(x2), m(x2, y2)
    assert torch.allclose(packed_logits, torch.cat([l1, l2], dim=1), atol=1e-5)
    n1, n2 = x1.shape[1], x2.shape[1]
    assert torch.allclose(packed_loss, (n1 * loss1 + n2 * loss2) / (n1 + n2), atol=1e-6)

    # and the mask matters: without document awareness the second document sees the first
    plain = M.GPT(tiny_cfg(sep_token_id=None, family=family)).eval()
    plain.load_state_dict(m.state_dict())
    plain_logits, _ = plain(x)
    assert not torch.allclose(plain_logits[:, n1:], l2, atol=1e-3)


def test_tokens_before_the_first_sep_form_their_own_segment():
    m = tiny_model()
    tail = random_tokens(1, 5, seed=5)  # a window starting mid-document
    doc = torch.cat([torch.tensor([[SEP]]), random_tokens(1, 7, seed=6)], dim=1)
    packed, _ = m(torch.cat([tail, doc], dim=1))
    assert torch.allclose(packed[:, :5], m(tail)[0], atol=1e-5)
    assert torch.allclose(packed[:, 5:], m(doc)[0], atol=1e-5)


def test_document_positions_and_segment_mask():
    idx = torch.tensor([[7, 8, SEP, 9, SEP, SEP, 4]])
    pos = M.document_positions(idx, SEP)
    assert pos.tolist() == [[0, 1, 0, 1, 0, 0, 1]]
    mask = M.segment_mask(pos)
    assert mask.shape == (1, 1, 7, 7)
    assert mask[0, 0, 3].tolist() == [False, False, True, True, False, False, False]
    assert mask[0, 0, 6].tolist() == [False] * 5 + [True, True]
    # one document per row (a SEP first, or none): shared (T,) positions, plain causal attention
    single = torch.tensor([[SEP, 5, 6, 7], [3, 4, 5, 6]])
    assert M.document_positions(single, SEP).tolist() == [0, 1, 2, 3]
    assert M.document_positions(idx, None).tolist() == list(range(7))


def test_positions_given_equal_positions_computed():
    m = tiny_model()
    x = random_tokens(2, 16, seed=11)
    x[:, 0] = SEP
    x[1, 9] = SEP
    for batch in (x, x[:1]):  # (B, T) positions, then the (T,) single-document form
        pos = M.document_positions(batch, SEP)
        assert torch.equal(m(batch, positions=pos)[0], m(batch)[0])


@pytest.mark.parametrize("product_bytes", [1, 2 * 64 * 97 * 2, None])
@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_linear_cross_entropy_equals_the_plain_loss_and_gradients(monkeypatch, autocast, product_bytes):
    """The chunked loss (several chunks: LOSS_CHUNK_ELEMENTS made tiny) gives F.cross_entropy's
    value and the same gradients for h and W, ignored targets included, in fp32 and bf16: with
    the gradients multiplied chunk by chunk, two chunks at a time (bf16; the last group short) or
    all at once."""
    monkeypatch.setattr(M, "LOSS_CHUNK_ELEMENTS", 97 * 64)  # 64-row chunks
    if product_bytes is not None:
        monkeypatch.setattr(M, "LOSS_PRODUCT_BYTES", product_bytes)
    rows = M._loss_product_rows(97, 64, 2)                # bf16 gradients, rows per product
    assert rows == {1: 64, 2 * 64 * 97 * 2: 128}[product_bytes] if product_bytes else rows >= 150
    g = torch.Generator().manual_seed(0)
    h = torch.randn(150, 16, generator=g, requires_grad=True)
    W = (0.3 * torch.randn(97, 16, generator=g)).requires_grad_()
    y = torch.randint(0, 97, (150,), generator=g)
    y[::7] = -1
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    grads = []
    for chunked in (False, True):
        h.grad = W.grad = None
        with ctx:
            loss = M.linear_cross_entropy(h, W, y) if chunked else \
                F.cross_entropy((h @ W.t()).float(), y, ignore_index=-1)
        (3.0 * loss).backward()  # an incoming gradient other than 1
        grads.append((loss.detach(), h.grad.clone(), W.grad.clone()))
    (l0, gh0, gW0), (l1, gh1, gW1) = grads
    tol = dict(atol=1e-2, rtol=1e-2) if autocast else dict(atol=1e-6, rtol=1e-5)
    assert torch.allclose(l0, l1, **tol) and torch.allclose(gh0, gh1, **tol) and torch.allclose(gW0, gW1, **tol)
    with torch.no_grad():
        rows = M.linear_cross_entropy(h, W, y, reduction="none")
        want = F.cross_entropy(h @ W.t(), y, ignore_index=-1, reduction="none")
    assert torch.allclose(rows, want, atol=1e-5) and (rows[::7] == 0).all()


def test_z_loss_is_in_the_gradient_and_not_in_the_value(monkeypatch):
    """z_loss adds z * mean(logsumexp^2) over the scored rows to what is differentiated; the value
    returned is still the plain cross-entropy."""
    monkeypatch.setattr(M, "LOSS_CHUNK_ELEMENTS", 97 * 64)
    monkeypatch.setattr(M, "LOSS_PRODUCT_BYTES", 1)       # each chunk multiplied on its own
    g = torch.Generator().manual_seed(1)
    h = torch.randn(150, 16, generator=g, requires_grad=True)
    W = (2.0 * torch.randn(97, 16, generator=g)).requires_grad_()   # large logits: a visible z-loss
    y = torch.randint(0, 97, (150,), generator=g)
    y[::5] = -1
    z = 1e-2
    loss = M.linear_cross_entropy(h, W, y, z_loss=z)
    loss.backward()
    got = (loss.detach(), h.grad.clone(), W.grad.clone())
    h.grad = W.grad = None
    logits = h @ W.t()
    ce = F.cross_entropy(logits, y, ignore_index=-1)
    (ce + z * torch.logsumexp(logits, -1)[y != -1].pow(2).mean()).backward()
    assert torch.allclose(got[0], ce.detach(), atol=1e-6)
    assert torch.allclose(got[1], h.grad, atol=1e-5, rtol=1e-4) and torch.allclose(got[2], W.grad, atol=1e-5, rtol=1e-4)
    h.grad = W.grad = None
    M.linear_cross_entropy(h, W, y).backward()
    assert not torch.allclose(got[2], W.grad, atol=1e-4)                  # z-loss changed the gradient


# =========================================================================== gradient checkpointing

def test_gradient_checkpointing_same_gradients_and_only_in_training():
    idx, y = random_tokens(2, 24), random_tokens(2, 24, seed=9)
    idx[:, 0] = SEP
    idx[1, 10] = SEP
    grads = []
    calls = []
    for ckpt in (False, True):
        m = tiny_model(seed=0, dropout=0.1).train()
        m.gradient_checkpointing = ckpt
        calls.append(0)
        m.blocks[0].register_forward_pre_hook(   # a Block's parts skip hooks (model.py docstring)
            lambda *a: calls.__setitem__(-1, calls[-1] + 1))
        torch.manual_seed(123)  # same dropout masks; checkpoint replays the RNG state
        _, loss = m(idx, y)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert calls == [1, 2]  # the block really is recomputed in backward
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n
    m.eval()
    calls.append(0)
    m(idx)
    assert calls[-1] == 1  # not active in eval mode


# =========================================================================== KV cache

@pytest.mark.parametrize("family", list(M.FAMILIES))
def test_kv_cache_prefill_and_decode_equal_full_forward(family):
    m = tiny_model(family=family)
    idx = random_tokens(2, 20)
    idx[:, 0] = SEP  # a single document: cached mode has no segmentation
    full, _ = m(idx)
    m.setup_cache(batch_size=2, max_seq_len=24)
    first, _ = m(idx[:, :8], input_pos=torch.arange(8))
    steps = [first]
    for t in range(8, 20):
        logits, _ = m(idx[:, t:t + 1], input_pos=torch.tensor([t]))
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    # a smaller batch reuses the first rows of the buffers
    one, _ = m(idx[:1, :5], input_pos=torch.arange(5))
    assert torch.allclose(one, full[:1, :5], atol=1e-5)
    m.clear_cache()
    assert all(b.attn.kv_cache is None for b in m.blocks)
    with pytest.raises(RuntimeError, match="setup_cache"):
        m(idx[:, :1], input_pos=torch.tensor([0]))


def test_kv_cache_with_left_padding_equals_unpadded_runs():
    m = tiny_model()
    PAD = 2
    a = torch.cat([torch.tensor([SEP]), random_tokens(1, 9, seed=11)[0]])  # 10 tokens
    b = torch.cat([torch.tensor([SEP]), random_tokens(1, 4, seed=12)[0]])  # 5 tokens
    cont_a, cont_b = random_tokens(1, 4, seed=13)[0], random_tokens(1, 4, seed=14)[0]
    full_a, _ = m(torch.cat([a, cont_a])[None])
    full_b, _ = m(torch.cat([b, cont_b])[None])

    S, L = 16, 10
    pad_len = torch.tensor([0, L - len(b)])
    prompt = torch.stack([a, torch.cat([torch.full((L - len(b),), PAD), b])])  # (2, 10) left-padded
    slots = torch.arange(S)
    key_mask = slots[None, :] >= pad_len[:, None]  # (2, S), False on padding slots
    positions = (torch.arange(L)[None, :] - pad_len[:, None]).clamp(min=0)  # (2, 10)
    m.setup_cache(2, S)
    logits, _ = m(prompt, input_pos=torch.arange(L), key_mask=key_mask, positions=positions)
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits[0], full_a[0, :L], atol=1e-5)
    assert torch.allclose(logits[1, L - len(b):], full_b[0, :len(b)], atol=1e-5)
    for i in range(4):
        t = L + i
        step = torch.stack([cont_a[i:i + 1], cont_b[i:i + 1]])  # (2, 1)
        logits, _ = m(step, input_pos=torch.tensor([t]), key_mask=key_mask, positions=(t - pad_len)[:, None])
        assert torch.allclose(logits[0, 0], full_a[0, L + i], atol=1e-5)
        assert torch.allclose(logits[1, 0], full_b[0, len(b) + i], atol=1e-5)


def test_setup_cache_limits_and_dtype():
    m = tiny_model()
    with pytest.raises(ValueError, match="block_size=64"):
        m.setup_cache(1, 65)
    m.setup_cache(1, 16, dtype=torch.bfloat16)
    assert m.blocks[0].attn.kv_cache.k.dtype == torch.bfloat16
    assert m.blocks[0].attn.kv_cache.k.shape == (1, 2, 16, 16)
    logits, _ = m(random_tokens(1, 4), input_pos=torch.arange(4))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert not any("kv_cache" in k for k in m.state_dict())  # never saved


def test_bf16_autocast_forward_backward():
    m = tiny_model().train()
    idx = random_tokens(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = m(idx)
        _, loss = m(idx, idx)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(m.tok_emb.weight.grad).all()


@pytest.mark.gpu
def test_forward_backward_without_host_sync_on_cuda():
    m = tiny_model().cuda().train()
    idx = random_tokens(2, 32).cuda()
    idx[:, 0] = SEP
    idx[1, 9] = SEP
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, loss = m(idx, idx)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# =========================================================================== load_model

def _save_ckpt(path, m, **meta):
    torch.save({"model": m.state_dict(), "model_config": m.cfg.to_dict(),
                "meta": {"vocab_size": m.cfg.vocab_size, "step": 7, **meta}, "step": 7}, path)


def test_load_model_round_trip(tmp_path):
    m = tiny_model()
    path = tmp_path / "ckpt.pt"
    _save_ckpt(path, m, tokenizer_hash="abc")
    loaded, meta = CK.load_model(path)
    assert not loaded.training and meta["step"] == 7 and meta["tokenizer_hash"] == "abc"
    idx = random_tokens(2, 12)
    assert torch.equal(loaded(idx)[0], m(idx)[0])
    assert loaded.lm_head.weight.data_ptr() == loaded.tok_emb.weight.data_ptr()


def test_load_model_strips_compile_prefix(tmp_path):
    m = tiny_model()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"_orig_mod." + k: v for k, v in m.state_dict().items()},
                "model_config": m.cfg.to_dict(), "meta": {}}, path)
    loaded, _ = CK.load_model(path)
    idx = random_tokens(1, 5)
    assert torch.equal(loaded(idx)[0], m(idx)[0])


def test_load_model_bad_files(tmp_path):
    m = tiny_model()
    good = tmp_path / "good.pt"
    _save_ckpt(good, m)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pt"
    text.write_text("hola, esto no es un modelo\n", encoding="utf-8")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    wrong_shape = tmp_path / "wrong.pt"
    torch.save({"model": m.state_dict(), "model_config": {**m.cfg.to_dict(), "n_embd": 64, "n_head": 4},
                "meta": {}}, wrong_shape)
    for bad, fragment in [(tmp_path / "missing.pt", "not found"), (truncated, "truncated"),
                          (text, "cannot be loaded"), (foreign, "not a mini-llm checkpoint"),
                          (wrong_shape, "damaged: its weights hold .* numbers but its model config describes")]:
        with pytest.raises(UserError, match=fragment):
            CK.load_model(bad)


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_load_model_never_runs_pickled_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_config": {}, "meta": _Evil()}, path)
    with pytest.raises(UserError, match="cannot be loaded"):
        CK.load_model(path)
    assert "pickle code ran" not in capsys.readouterr().out


def test_load_model_checks_the_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|doc|>", "<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["el perro come pan", "la casa es grande"] * 20, trainer)
    tok_path = tmp_path / "tokenizer.json"
    tok.save(str(tok_path))
    vocab = tok.get_vocab_size()
    m = tiny_model(vocab_size=vocab)
    good = tmp_path / "good.pt"
    _save_ckpt(good, m, tokenizer_hash=file_sha256(tok_path))
    CK.load_model(good, tokenizer=load_identity(tok_path))
    other = tmp_path / "other.pt"
    _save_ckpt(other, m, tokenizer_hash="0" * 64)
    with pytest.raises(UserError, match="not the one"):
        CK.load_model(other, tokenizer=load_identity(tok_path))
    small = tmp_path / "small.pt"
    _save_ckpt(small, tiny_model(vocab_size=vocab - 1), tokenizer_hash=file_sha256(tok_path))
    with pytest.raises(UserError, match="tokens"):
        CK.load_model(small, tokenizer=load_identity(tok_path))


@pytest.mark.parametrize("family", list(M.FAMILIES))
def test_training_forward_compiles_to_one_graph_without_breaks(family):
    """--compile: the training forward (the Segments layout training passes, fused loss over a
    padded vocabulary, z-loss) is one torch.compile graph. torch._dynamo.explain traces it
    without compiling, so this runs on CPU."""
    torch._dynamo.reset()
    model = M.GPT(M.ModelConfig(vocab_size=500, block_size=32, n_layer=2, n_head=2, n_embd=32, family=family))
    x = torch.randint(3, 500, (2, 32), generator=torch.Generator().manual_seed(0))
    x[:, 0] = 0
    x[0, 10] = 0                                    # a second document inside the first window
    y = torch.randint(3, 500, (2, 32), generator=torch.Generator().manual_seed(1))
    layout = M.segment_layout(x, 0)
    assert isinstance(layout, M.Segments)
    ex = torch._dynamo.explain(model)(x, y, positions=layout, z_loss=1e-4)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), [b.reason for b in ex.break_reasons]
    torch._dynamo.reset()


def test_segment_layout_gives_the_lengths_of_the_packed_documents():
    idx = torch.tensor([[0, 5, 6, 0, 7, 8, 9, 0], [4, 4, 4, 4, 0, 4, 4, 4]])
    lay = M.segment_layout(idx, 0)
    assert torch.equal(lay.positions, M.document_positions(idx, 0))
    assert lay.cu_seqlens.dtype == torch.int32
    assert lay.cu_seqlens.tolist() == [0, 3, 7, 8, 12, 16] and lay.max_seqlen == 4
    plain = M.segment_layout(torch.tensor([[0, 5, 6, 7]]), 0)
    assert isinstance(plain, torch.Tensor) and plain.tolist() == [0, 1, 2, 3]   # one document: no layout


@pytest.mark.parametrize("family", list(M.FAMILIES))
def test_flex_document_mask_equals_the_dense_mask_on_packed_documents(family):
    """FlexAttention with the document block mask gives SDPA's dense-mask outputs. On CPU only
    forward (FlexAttention has no CPU backward; training uses it on CUDA, see the gpu tests)."""
    if M.flex_attention is None:
        pytest.skip("this torch has no FlexAttention")
    import warnings
    m = tiny_model(family=family).eval()
    idx = random_tokens(2, 32)
    idx[:, 0] = 0
    idx[0, 9] = idx[0, 20] = idx[1, 17] = 0
    lay = M.segment_layout(idx, 0)
    with torch.no_grad():
        want = m.hidden_states(idx, positions=lay)
        m.set_document_kernel("flex")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                # eager FlexAttention warns it is unfused
            got = m.hidden_states(idx, positions=lay)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    with pytest.raises(ValueError):
        m.set_document_kernel("dense")


def _document_kernel_step(kernel: str, autocast: bool):
    """Loss and gradients of one training forward/backward on packed documents, on CUDA."""
    m = tiny_model().cuda().train()
    m.set_document_kernel(kernel)
    idx = random_tokens(2, 64).cuda()
    idx[:, 0] = SEP
    idx[0, 9] = idx[0, 40] = idx[1, 17] = SEP
    lay = M.segment_layout(idx.cpu(), SEP).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        _, loss = m(idx, idx, positions=lay)
    loss.backward()
    return float(loss), torch.cat([p.grad.flatten().float() for p in m.parameters()])


@pytest.mark.gpu
def test_flex_document_attention_trains_like_the_dense_mask_on_cuda():
    want_loss, want_grad = _document_kernel_step("sdpa", autocast=False)
    loss, grad = _document_kernel_step("flex", autocast=False)
    assert loss == pytest.approx(want_loss, rel=1e-4)
    assert torch.allclose(grad, want_grad, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
def test_flash_attn_varlen_trains_like_the_dense_mask_on_cuda():
    pytest.importorskip("flash_attn")
    m = tiny_model().cuda()
    assert m.use_flash_attn(True) and m.document_kernel == "varlen"
    want_loss, want_grad = _document_kernel_step("sdpa", autocast=True)
    loss, grad = _document_kernel_step("varlen", autocast=True)
    assert loss == pytest.approx(want_loss, rel=1e-2)
    assert torch.allclose(grad, want_grad, atol=2e-2, rtol=5e-2)


# =========================================================================== vocabulary padding

def test_vocabulary_is_padded_in_memory_only_and_the_padding_never_counts():
    """97 tokens live in 128 embedding rows: logits, losses, gradients and state dicts see the
    97 real ones; the padding stays zero through training with weight decay."""
    m = tiny_model().train()
    V = m.cfg.vocab_size
    assert m.cfg.padded_vocab_size == 128 and m.tok_emb.weight.shape == (128, 32)
    assert not m.tok_emb.weight[V:].any()
    sd = m.state_dict()
    assert sd["tok_emb.weight"].shape == (V, 32) and sd["lm_head.weight"] is sd["tok_emb.weight"]
    assert m.num_parameters() == m.cfg.num_parameters()
    x, y = random_tokens(2, 16), random_tokens(2, 16, seed=2)
    logits, _ = m(x)
    assert logits.shape == (2, 16, V)
    # the loss over the padded head equals the loss over the real rows alone, gradients included
    h = m.hidden_states(x).flatten(0, 1).detach().requires_grad_()
    W = m.lm_head.weight.detach().clone().requires_grad_()
    M.linear_cross_entropy(h, W, y.reshape(-1), vocab=V, z_loss=1e-3).backward()
    h2, W2 = h.detach().clone().requires_grad_(), W.detach()[:V].clone().requires_grad_()
    M.linear_cross_entropy(h2, W2, y.reshape(-1), z_loss=1e-3).backward()
    assert torch.allclose(h.grad, h2.grad, atol=1e-7) and torch.allclose(W.grad[:V], W2.grad, atol=1e-7)
    assert not W.grad[V:].any()
    ref = F.cross_entropy(logits.flatten(0, 1), y.reshape(-1))
    assert float(m(x, y)[1].detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        m(x, y)[1].backward()
        opt.step()
        opt.zero_grad()
    assert not m.tok_emb.weight[V:].any()
    again = M.GPT(m.cfg)
    again.load_state_dict(m.state_dict())                       # 97 rows in, padded again
    assert torch.equal(again.tok_emb.weight, m.tok_emb.weight)


def test_optimizer_state_of_an_unpadded_embedding_is_padded_on_resume():
    """A checkpoint written before the padding holds (97, C) AdamW moments for the embedding:
    pad_vocab_state makes them fit, and the next step equals the one from the padded state."""
    m = tiny_model().train()
    V = m.cfg.vocab_size
    x, y = random_tokens(2, 16), random_tokens(2, 16, seed=2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(x, y)[1].backward()
    opt.step()
    opt.zero_grad()
    old = copy.deepcopy(opt.state_dict())                       # (load_state_dict would share its tensors)
    emb = next(i for i, p in enumerate(m.parameters()) if p is m.tok_emb.weight)
    old["state"][emb] = {k: (v[:V].clone() if v.dim() == 2 else v) for k, v in old["state"][emb].items()}
    twin = M.GPT(m.cfg).train()
    twin.load_state_dict(m.state_dict())
    opt2 = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    opt2.load_state_dict(old)
    M.pad_vocab_state(twin, opt2)
    for model, o in ((m, opt), (twin, opt2)):
        model(x, y)[1].backward()
        o.step()
    assert torch.equal(twin.tok_emb.weight, m.tok_emb.weight)
