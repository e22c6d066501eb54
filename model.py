"""The transformer: RoPE, attention (SDPA / flash-attn / reference; bf16 training on a CPU:
_CpuBf16Attention), blocks, KV cache.

Architecture, one of the families of `config.FAMILIES` (each matches one Hugging Face model class
exactly, so `export.py` is a renaming of weights):

    tok_emb -> dropout -> N x [x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))] -> ln_f -> lm_head
    attn: fused qkv Linear, [qwen3: RMS norm of each head's q and k], RoPE ("rotate_half" / NeoX
          convention) on all head dims of q and k, causal scaled dot-product attention, output Linear.
    mlp:  neox: Linear(C, I) -> exact (erf) GELU -> Linear(I, C), I = 4C by default.
          llama, qwen3: fused Linear(C, 2I) = [gate | up] -> silu(gate) * up -> Linear(I, C).
    norms: neox LayerNorm with biases (GPT-NeoX, `use_parallel_residual=False`, `rotary_pct=1.0`);
           llama and qwen3 RMSNorm and no biases anywhere (Llama, Qwen3).
    lm_head shares its weight with tok_emb (weight tying), or has its own (cfg.tie_embeddings=False).

Document-aware attention (training / evaluation, `cfg.sep_token_id` set): every SEP token starts
a new segment. A token attends only to earlier tokens of its own segment, and RoPE positions
restart at 0 on the SEP. A window [SEP d1 SEP d2] therefore gives exactly the logits of
[SEP d1] and [SEP d2] run alone.

Cached decoding (`input_pos` given): keys/values are written into preallocated buffers at the
slots `input_pos`; each query attends to the slots <= its own slot, minus the padding slots
marked False in `key_mask`. No document segmentation in that mode.

Inference on a CPU (inference.prepare) reorders each head's q and k dimensions so that RoPE's
pairs sit side by side and one complex product rotates them (GPT.interleave_rope); scores and
outputs are unchanged, and training and checkpoints keep the layout above.

Inside a Block, its parts (norms, attention, MLP and their Linear layers) call each other's
`forward` directly, not through nn.Module.__call__, whose hook checks cost ~1.5 us a call: 48
calls and 7% of a token decoded at batch 1 through GPT.forward on a 2-core EPYC (greedy tokens
identical; measured before TokenDecoder, which CPU decoding now runs). Hooks
therefore fire on the model, its embedding, final norm, output head and Blocks (what gradient
checkpointing and DDP wrap), not on a Block's parts.

Decoding on a CPU does not go through the modules at all: TokenDecoder runs the same operations
on the same tensors for one new token per row in one loop (bit-identical logits, no hooks),
1.5x the tokens per second of GPT.forward at batch 1 with bf16 weights on a 2-core EPYC. A
change to Block, attention or MLP changes TokenDecoder with it; the tests compare the two for
every family and weight kind.

Notation: B batch, T time (query length), S key slots (cache length), C channels (n_embd),
H heads, D head dim (C // H), V vocabulary.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from common import log
from config import ACTIVATIONS, FAMILIES, ModelConfig  # noqa: F401  (ACTIVATIONS, FAMILIES: for callers of model)


# =========================================================================== RoPE

def rope_cache(T: int, D: int, base: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (T, D) float32, for positions 0..T-1 ("rotate_half" layout).

    Frequency i (i < D/2) rotates the pair (dim i, dim i + D/2); the tables repeat the D/2
    angles twice so they multiply x directly. Computed in float32 exactly as GPT-NeoX does.
    """
    assert D % 2 == 0, D
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float32, device=device) / D))  # (D/2,)
    t = torch.arange(T, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: Optional[torch.Tensor]) -> torch.Tensor:
    """Rotate x (..., T, D) by the angles in cos/sin, broadcastable to x (e.g. (T, D) or
    (B, 1, T, D)): the "rotate_half" layout, where dims i and i + D/2 pair up. A model set up by
    GPT.interleave_rope pairs dims (2i, 2i + 1) instead and passes cos + i sin as `cos` with
    `sin` None (_rope_pairs_complex), or, under torch.compile, the D/2 columns of each table
    (_rope_pairs_real)."""
    if sin is None:
        return _rope_pairs_complex(x, cos)
    if cos.shape[-1] != x.shape[-1]:
        return _rope_pairs_real(x, cos, sin)
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def _rope_pairs_complex(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """RoPE of the pairs (2i, 2i + 1) of x as one complex product by cis = cos + i sin (..., D/2):
    x read once and written once. On a CPU 4-5x faster than rotate_half's five passes in float32
    (0.9 against 4.5 ms for 16 x 256 tokens of 8 x 32 q and k on 2 cores; the same numbers,
    a*cos - b*sin and b*cos + a*sin), 1.3x in bf16 (computed in float32, rounded once), and
    fewer operations per decoded token (11 against 20 us)."""
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    pairs = work.unflatten(-1, (-1, 2))                                  # (..., D/2, 2)
    try:
        z = torch.view_as_complex(pairs)
    except RuntimeError:                                                 # strides that are not even
        z = torch.view_as_complex(pairs.contiguous())
    out = torch.view_as_real(z * cis).flatten(-2)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _rope_pairs_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """_rope_pairs_complex in real operations, from the D/2 columns of cos and sin (what
    torch.compile traces and fuses)."""
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return F.dropout(x, p, training) if p > 0 and training else x  # no call at all when off


def document_positions(idx: torch.Tensor, sep_id: Optional[int]) -> torch.Tensor:
    """The RoPE positions of a batch of windows idx (B, T), which also say where documents start.

    (T,) 0..T-1 when no row has a SEP after its first token (one document per row, or the middle
    of one): plain causal attention, SDPA's fastest kernel. Otherwise (B, T): positions restart
    at 0 on every SEP, and the forward pass masks attention to each segment. Call it on the CPU
    copy of the batch (the data loader's side): it reads the tokens, a host sync on a GPU.
    """
    B, T = idx.shape
    ar = torch.arange(T, device=idx.device)  # (T,)
    if sep_id is None:
        return ar
    is_sep = idx == sep_id  # (B, T)
    if not bool(is_sep[:, 1:].any()):
        return ar
    start = torch.where(is_sep, ar, 0).cummax(dim=1).values  # (B, T) latest SEP at/before t (0 if none)
    return ar - start  # (B, T)


class Segments(NamedTuple):
    """The document layout of a batch, built once on the data side (segment_layout), on the CPU:
    RoPE positions (B, T) restarting at 0 on every SEP, and for flash-attn's varlen kernel the
    cumulative lengths of the segments over the flattened B x T tokens (int32 (n + 1,)) and the
    longest segment (a Python int, so the kernel needs no host sync)."""
    positions: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int

    def to(self, device, non_blocking: bool = False) -> "Segments":
        return Segments(self.positions.to(device, non_blocking=non_blocking),
                        self.cu_seqlens.to(device, non_blocking=non_blocking), self.max_seqlen)


def segment_layout(idx: torch.Tensor, sep_id: Optional[int]):
    """document_positions(idx, sep_id), and when rows hold several documents the whole Segments
    layout. Call it on the CPU copy of the batch (the data loader's side)."""
    positions = document_positions(idx, sep_id)
    if positions.dim() == 1:
        return positions
    starts = (positions.reshape(-1) == 0).nonzero()[:, 0]   # every row starts a segment (position 0)
    cu = torch.cat((starts, torch.tensor([positions.numel()]))).to(torch.int32)
    return Segments(positions, cu, int((cu[1:] - cu[:-1]).max()))


def segment_mask(positions: torch.Tensor) -> torch.Tensor:
    """Bool mask (B, 1, T, T), True = attend: causal and within one segment, a segment starting
    at each position 0 of `positions` (B, T). Vectorised, no host sync."""
    T = positions.shape[1]
    seg = (positions == 0).cumsum(dim=1)  # (B, T) segment id
    same = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=positions.device).tril()  # (T, T)
    return (same & causal)[:, None]


# =========================================================================== loss

# Rows of the (rows, V) logits computed at once by the chunked loss: ~16 MB of fp32 logits, which
# stay in the CPU's cache between the matmul, the softmax and the gradient.
LOSS_CHUNK_ELEMENTS = 1 << 22


def _loss_chunk_rows(vocab_size: int) -> int:
    return max(64, min(4096, LOSS_CHUNK_ELEMENTS // vocab_size))


# _LinearCrossEntropy gathers the logits' gradients of several chunks, up to this many bytes, and
# multiplies them into grad_h and grad_W at once: grad_W's float32 sum is then read and written
# once per this many rows instead of once per chunk (with a 32,000-token vocabulary: 131-row
# chunks, 1,048 rows a product), and the products get more rows to work on. The training step:
# 1.10x for the small preset (32,000 tokens, batch 32; bf16 and fp32), 1.03x at 8,000 tokens x
# batch 8 (2-core EPYC, alternating in one process), for up to 64 MB more memory.
LOSS_PRODUCT_BYTES = 64 * 2**20


def _loss_product_rows(vocab_size: int, chunk: int, element_size: int) -> int:
    """Rows per product of _LinearCrossEntropy's gradients: a multiple of `chunk`."""
    return chunk * max(1, LOSS_PRODUCT_BYTES // (chunk * vocab_size * element_size))


def _grad_flows(*xs: torch.Tensor) -> bool:
    """Whether autograd records an operation on xs."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


def _matmul_dtype(device_type: str):
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (h @ W.T) against targets, chunk by chunk, never holding the whole
    (N, V) logits: each chunk's softmax gradient is turned into the gradients of h and W at once
    (forward computes them; backward only scales them by the incoming gradient). Saves the logits'
    memory traffic, about a tenth of a small model's training step on a CPU.

    z_loss > 0 adds z_loss * mean(logsumexp^2) to the objective (PaLM's z-loss, which keeps the
    softmax normaliser near 1): its gradient is in grad_h and grad_W, but the value returned is
    the plain cross-entropy, so logged training losses stay comparable with validation losses."""

    @staticmethod
    def forward(ctx, h, W, targets, chunk, z_loss=0.0, vocab=None):  # h (N, C), W (V', C), targets (N,), -1 = ignored
        dt = _matmul_dtype(h.device.type)
        with torch.autocast(h.device.type, enabled=False):
            hm, Wm = (h, W) if dt is None else (h.to(dt), W.to(dt))
            valid = targets != -1
            count = valid.sum()
            scale = valid.to(torch.float32) / count  # (N,) NaN everywhere when nothing is scored
            grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
            grad_W = None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            rows = _loss_product_rows(W.shape[0], chunk, hm.element_size())
            grads = hm.new_empty(min(rows, h.shape[0]), W.shape[0])  # the logits' gradients of `rows` rows
            for a in range(0, h.shape[0], rows):
                n = min(rows, h.shape[0] - a)
                for s in range(a, a + n, chunk):
                    hc, yc = hm[s:s + chunk], targets[s:s + chunk].clamp(min=0)
                    logits = _mask_padding((hc @ Wm.t()).float(), vocab)  # (c, V')
                    target = logits.gather(1, yc[:, None])[:, 0]  # (c,)
                    top = logits.amax(dim=-1)  # (c,)
                    e = logits.sub_(top[:, None]).exp_()  # one exp for both the log-sum-exp and the softmax
                    norm = e.sum(dim=-1)
                    lse = top + norm.log()  # (c,)
                    sc = scale[s:s + chunk]
                    total += ((lse - target) * valid[s:s + chunk]).sum()
                    factor = sc / norm if not z_loss else sc * (1.0 + 2.0 * z_loss * lse) / norm  # + d(z lse^2) / d logits
                    p = e.mul_(factor[:, None])  # softmax, scaled
                    p[torch.arange(len(yc), device=p.device), yc] -= sc  # d loss_row / d logits, scaled
                    grads[s - a:s - a + len(yc)] = p
                g = grads[:n]
                grad_h[a:a + n] = g @ Wm
                part = g.t() @ hm[a:a + n]
                grad_W = part.float() if grad_W is None else grad_W.add_(part)
        ctx.save_for_backward(grad_h, grad_W)
        ctx.dtypes = (h.dtype, W.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad):
        grad_h, grad_W = ctx.saved_tensors
        return (grad_h * grad).to(ctx.dtypes[0]), (grad_W * grad).to(ctx.dtypes[1]), None, None, None, None


def _mask_padding(logits: torch.Tensor, vocab: Optional[int]) -> torch.Tensor:
    """logits (N, V') with the columns from `vocab` on (the embedding's padding rows) set to -inf."""
    if vocab is not None and vocab < logits.shape[-1]:
        logits[:, vocab:] = float("-inf")
    return logits


def linear_cross_entropy(h: torch.Tensor, W: Optional[torch.Tensor], targets: torch.Tensor,
                         reduction: str = "mean", z_loss: float = 0.0, vocab: Optional[int] = None,
                         head: Optional[nn.Module] = None) -> torch.Tensor:
    """Cross-entropy of the logits h @ W.T (h (N, C), W (V', C)) against targets (N,), -1 =
    ignored, computed in row chunks without the whole (N, V') logits: "mean" (as F.cross_entropy,
    differentiable; `z_loss` adds z-loss to its gradient, see _LinearCrossEntropy) or "none"
    (per-row losses, 0 where ignored; no gradient). `vocab`: only W's first `vocab` rows are
    tokens (the rest is padding: -inf logits, so no probability and no gradient). `head`, without
    gradients only: the module that computes the logits instead of h @ W.T (W unused), such as an
    inference.FrozenLinear with its own kernels."""
    chunk = _loss_chunk_rows(W.shape[0] if head is None else head.out_features)
    if head is None and reduction == "mean" and _grad_flows(h, W):
        return _LinearCrossEntropy.apply(h, W, targets, chunk, float(z_loss), vocab)
    dt = _matmul_dtype(h.device.type)
    out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
    if head is not None:
        for s in range(0, h.shape[0], chunk):
            logits = _mask_padding(head(h[s:s + chunk]).float(), vocab)  # (c, V')
            out[s:s + chunk] = F.cross_entropy(logits, targets[s:s + chunk], ignore_index=-1, reduction="none")
    else:
        with torch.autocast(h.device.type, enabled=False):
            hm, Wm = (h, W) if dt is None else (h.to(dt), W.to(dt))
            for s in range(0, h.shape[0], chunk):
                logits = _mask_padding((hm[s:s + chunk] @ Wm.t()).float(), vocab)  # (c, V')
                out[s:s + chunk] = F.cross_entropy(logits, targets[s:s + chunk], ignore_index=-1, reduction="none")
    if reduction == "none":
        return out
    valid = targets != -1
    return out.sum() / valid.sum()


# =========================================================================== attention

def reference_attention(q, k, v, mask=None, is_causal=False):
    """Explicit softmax attention, the test reference for the SDPA call site.

    q (B, H, T, D), k/v (B, H, S, D); mask: bool broadcastable to (B, H, T, S), True = attend.
    """
    D = q.shape[-1]
    att = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H, T, S)
    if is_causal:  # top-left aligned, as SDPA's is_causal (the model only uses it with T == S)
        T, S = q.shape[-2], k.shape[-2]
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        att = att.masked_fill(~causal, float("-inf"))
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = torch.softmax(att.float(), dim=-1).to(q.dtype)
    return att @ v  # (B, H, T, D)


_flash_attn_func = None  # flash_attn.flash_attn_func once use_flash_attn(True) found it usable
_flash_attn_varlen_func = None  # and flash_attn.flash_attn_varlen_func (documents packed in a window)

try:                     # FlexAttention: document masks without a dense (B, 1, T, T) mask (CUDA for training)
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:      # an older torch
    BlockMask = create_block_mask = flex_attention = None

# How document-aware passes (windows holding several documents) attend: "sdpa" with the dense
# segment mask (every device; the reference), "flex" (FlexAttention with a block mask; CUDA,
# no dropout) or "varlen" (flash-attn's variable-length kernel over the packed segments; CUDA,
# fp16/bf16). GPT.use_flash_attn chooses and logs it.
DOCUMENT_KERNELS = ("sdpa", "flex", "varlen")


class Varlen(NamedTuple):
    """The varlen kernel's view of a Segments layout, passed down to every attention layer."""
    cu_seqlens: torch.Tensor
    max_seqlen: int


_compiled_flex = None  # torch.compile(flex_attention): its fused kernel on CUDA (eager, it computes dense scores)


def _flex_attention(q, k, v, block_mask):
    """FlexAttention, compiled on CUDA (inlined when the whole model is already compiled)."""
    global _compiled_flex
    if not q.is_cuda:
        return flex_attention(q, k, v, block_mask=block_mask)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask)


CPU_ATTENTION_MAX_BYTES = 64 * 2**20   # _CpuBf16Attention keeps its probabilities, B*H*T*T bf16 values a
                                       # layer, for the backward: beyond this, SDPA's flash kernel (O(T) memory)
_SCORE_TILE_BYTES = 2 * 2**20          # (T, T) scores of the heads it handles at once, counted at 4 bytes
                                       # each as when they were float32 (half that measured alike): L2-sized


class _CpuBf16Attention(torch.autograd.Function):
    """Attention for bf16 training on a CPU: q (already scaled by 1/sqrt(D)), k, v (B, H, T, D)
    bf16, bias (B|1, T, T) in q's dtype, additive (0 or -inf: causal, or causal within
    documents) -> (B, H, T, D) bf16.

    SDPA's CPU flash kernel is bound by its per-tile softmax work at small head sizes, and its
    bf16 backward is no faster than float32: for 8 heads of 32 at T 256 it spent 4.5 ms forward
    and 12.8 ms backward a layer, ~40% of a bf16 training step. Here the four products are
    oneDNN's bf16 batched products over a few heads at a time (their scores, ~1 MB, stay in the
    core's cache), and everything between them works on bf16 tensors, as eager bf16 attention on
    a GPU does: the masked scores go through ATen's bf16 softmax (float32 inside, bf16 out) and
    its backward (torch._softmax_backward_data: the same, rowsum(dP * P) included), one pass
    each. The probabilities are kept for the backward instead of recomputed. A layer's forward
    and backward against the flash kernel (2-core native-bf16 EPYC): 2.2-2.6x at 8 heads of 32,
    T 256; 1.3-1.7x at T 512; ~1x at T 1,024. Outputs and gradients differ from float32
    attention by about as much as the flash kernel's in bf16."""

    @staticmethod
    def forward(ctx, q, k, v, bias):
        B, H, T, D = q.shape
        q, k, v = (x.reshape(B * H, T, D) for x in (q, k, v))
        probs = q.new_empty(B * H, T, T)
        out = _tiled_attention(q, k, v, bias, H, probs)
        ctx.save_for_backward(q, k, v, probs)
        ctx.tile = _heads_per_tile(H, T)
        return out.view(B, H, T, D)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs = ctx.saved_tensors
        BH, T, D = q.shape
        g = ctx.tile
        do = grad_out.reshape(BH, T, D).to(q.dtype)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for i in range(0, BH, g):
            heads, p = slice(i, i + g), probs[i:i + g]
            torch.bmm(p.transpose(1, 2), do[heads], out=dv[heads])
            dp = torch.bmm(do[heads], v[heads].transpose(1, 2))
            ds = torch._softmax_backward_data(dp, p, -1, q.dtype)   # P * (dP - rowsum(dP * P))
            torch.bmm(ds, k[heads], out=dq[heads])
            torch.bmm(ds.transpose(1, 2), q[heads], out=dk[heads])
        shape = grad_out.shape
        return dq.view(shape), dk.view(shape), dv.view(shape), None


def _tiled_attention(q, k, v, bias, H: int, probs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """_CpuBf16Attention's forward: q (scaled), k, v (B*H, T, D), bias (B|1, T, T) -> (B*H, T, D),
    a few heads at a time; the probabilities are written to `probs` (B*H, T, T) where given."""
    BH, T, _ = q.shape
    out, g = torch.empty_like(q), _heads_per_tile(H, T)
    for i in range(0, BH, g):
        heads = slice(i, i + g)
        scores = torch.baddbmm(bias[i // H if bias.shape[0] > 1 else 0], q[heads], k[heads].transpose(1, 2))
        p = torch.softmax(scores, dim=-1) if probs is None else torch.softmax(scores, dim=-1, out=probs[heads])
        torch.bmm(p, v[heads], out=out[heads])
    return out


def _heads_per_tile(H: int, T: int) -> int:
    """The most heads of one batch row (a divisor of H) whose (T, T) scores, at 4 bytes each, fit a tile."""
    fit = max(1, _SCORE_TILE_BYTES // (T * T * 4))
    return max(g for g in range(1, H + 1) if H % g == 0 and g <= fit)


def cpu_bf16_attention_applies(q: torch.Tensor, mask, dropout_p: float) -> bool:
    """Whether attention over whole windows takes cpu_bf16_attention: a CPU, bf16 q (autocast or
    bf16 weights), no dropout, a causal or dense boolean mask and, where gradients flow, the
    probabilities it keeps within CPU_ATTENTION_MAX_BYTES (the caller checks that no KV cache
    is in use)."""
    B, H, T, _ = q.shape
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or dropout_p or torch.compiler.is_compiling() \
            or not (mask is None or (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool)):
        return False
    return not _grad_flows(q) or B * H * T * T * 2 <= CPU_ATTENTION_MAX_BYTES


_last_bias: tuple = (None, None, None)   # (mask, key, bias) of the last _additive_mask call


def _additive_mask(mask: Optional[torch.Tensor], T: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The additive form (B|1, T, T), 0 or -inf, of mask None (causal) or bool (B|1, 1, T, T),
    True = attend. Every layer of a forward gets the same mask object, so the bias of the last
    call is kept (with that mask, so its identity cannot pass to another tensor) and the other
    layers reuse it; a causal one is reused across steps too (an inference tensor only in
    inference mode)."""
    global _last_bias
    last_mask, last_key, last_bias = _last_bias
    key = (T, dtype, torch.device(device), torch.is_inference_mode_enabled())
    if last_mask is mask and last_key == key:
        return last_bias
    allowed = torch.ones(1, T, T, dtype=torch.bool, device=device).tril() if mask is None else mask[:, 0]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
    _last_bias = (mask, key, bias)
    return bias


def cpu_bf16_attention(q, k, v, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Attention of q, k, v (B, H, T, D) with mask None (causal) or bool (B|1, 1, T, T), True =
    attend: _CpuBf16Attention where gradients flow, else its forward alone, which keeps no
    probabilities (evaluation in bf16: 1.1-1.5x SDPA's CPU flash kernel, D 32-64, T 256-512)."""
    B, H, T, D = q.shape
    bias = _additive_mask(mask, T, q.dtype, q.device)
    q = q * D ** -0.5
    if _grad_flows(q, k, v):
        return _CpuBf16Attention.apply(q, k, v, bias)
    flat = [x.reshape(B * H, T, D) for x in (q, k, v)]
    return _tiled_attention(*flat, bias, H).view(B, H, T, D)


def document_block_mask(positions: torch.Tensor) -> "BlockMask":
    """FlexAttention's block mask for positions (B, T): causal and within one segment."""
    seg = (positions == 0).cumsum(dim=1)  # (B, T) segment id

    def same_document(b, h, q, kv):
        return (seg[b, q] == seg[b, kv]) & (q >= kv)

    B, T = positions.shape
    return create_block_mask(same_document, B, None, T, T, device=positions.device)


class KVCache(nn.Module):
    """Preallocated keys and values of one layer, (B, H, S, D) each, written at slots `input_pos`."""

    def __init__(self, batch_size, n_head, max_seq_len, head_dim, device=None, dtype=None):
        super().__init__()
        shape = (batch_size, n_head, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: Optional[int] = None):
        """Write k/v (B, H, T, D) at slots input_pos (T,); return the caches (B, H, S, D), or
        their first kv_len slots."""
        k_cache, v_cache = self.k, self.v
        if k.shape[0] != k_cache.shape[0]:
            k_cache, v_cache = k_cache[:k.shape[0]], v_cache[:k.shape[0]]
        if k.dtype != k_cache.dtype:
            k, v = k.to(k_cache.dtype), v.to(v_cache.dtype)
        k_cache.index_copy_(2, input_pos, k)
        v_cache.index_copy_(2, input_pos, v)
        if kv_len is not None:
            return k_cache[:, :, :kv_len], v_cache[:, :, :kv_len]
        return k_cache, v_cache


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """The family's normalisation over the last `dim` channels: LayerNorm (neox) or RMSNorm."""
    if cfg.family == "neox":
        return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)
    return nn.RMSNorm(dim, eps=cfg.norm_eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        # fused projection, output rows ordered [q (H*D) | k (H*D) | v (H*D)]
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        if cfg.family == "qwen3":  # per-head RMS norm of queries and keys, one scale (D,) each
            self.q_norm, self.k_norm = make_norm(cfg, cfg.head_dim), make_norm(cfg, cfg.head_dim)
            self.qk_norm_eps = cfg.norm_eps
        else:
            self.q_norm = self.k_norm = None
        self.dropout = cfg.dropout
        self.use_flash = False
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, mask=None, input_pos=None, kv_len=None):
        """x (B, T, C); cos/sin broadcastable to (B, T, 1, 1, D) (or as apply_rope says); mask
        bool (B|1, 1, T, S) or None: causal, or (cached decoding of one token) every cached key."""
        B, T, C = x.shape
        H, D = self.n_head, self.head_dim
        qkv = self.qkv.forward(x).view(B, T, 3, H, D)  # rows ordered [q heads | k heads | v heads]
        qk = qkv[:, :, :2]  # (B, T, 2, H, D)
        if self.q_norm is not None:  # q and k normalised in one pass, each with its own scale
            scale = torch.stack((self.q_norm.weight, self.k_norm.weight))[:, None]  # (2, 1, D)
            qk = F.rms_norm(qk, (D,), eps=self.qk_norm_eps) * scale
        qk = apply_rope(qk, cos, sin)  # (B, T, 2, H, D): q and k rotated in one pass
        q, k = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2)  # (B, H, T, D) each
        v = qkv[:, :, 2].transpose(1, 2)  # (B, H, T, D)
        if input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v, kv_len)  # (B, H, S, D)
            if k.dtype != q.dtype:
                k, v = k.to(q.dtype), v.to(q.dtype)
        dropout_p = self.dropout if self.training else 0.0
        if isinstance(mask, Varlen):  # packed documents, flash-attn over (B*T, H, D) with their lengths
            y = _flash_attn_varlen_func(q.transpose(1, 2).reshape(B * T, H, D), k.transpose(1, 2).reshape(B * T, H, D),
                                        v.transpose(1, 2).reshape(B * T, H, D), mask.cu_seqlens, mask.cu_seqlens,
                                        mask.max_seqlen, mask.max_seqlen, dropout_p=dropout_p, causal=True)
            y = y.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        elif BlockMask is not None and isinstance(mask, BlockMask):
            y = _flex_attention(q, k, v, mask)  # (B, H, T, D)
        elif self.use_flash and mask is None and q.dtype in (torch.float16, torch.bfloat16):
            # flash-attn wants (B, T, H, D); it only does plain causal attention (no segment mask)
            y = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                 dropout_p=dropout_p, causal=True).transpose(1, 2)  # (B, H, T, D)
        elif input_pos is None and cpu_bf16_attention_applies(q, mask, dropout_p):
            y = cpu_bf16_attention(q, k, v, mask)  # (B, H, T, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                               is_causal=mask is None and T > 1)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return _dropout(self.proj.forward(y), self.dropout, self.training)


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


def without_onednn(fn, *args):
    """fn(*args) with torch's global oneDNN switch off, so that ATen's own CPU kernels compute it,
    and the switch put back at once. oneDNN's call has a fixed cost that dominates the tiny
    tensors of a decoding step (see gelu, inference.FrozenLinear). One Python thread computes at a
    time in this program, so nothing else sees the switch off."""
    was = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        return fn(*args)
    finally:
        torch._C._set_mkldnn_enabled(was)


ONEDNN_GELU_MIN = 1 << 15  # values: from here on oneDNN's GELU beats ATen's on a CPU (2x at 4M values)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, as F.gelu and GPT-NeoX's. On a CPU F.gelu hands float32 to oneDNN, whose
    call costs ~15-20 us whatever the size: 4x ATen's own kernel on the 1,024 values of a
    decoding step (GPT-NeoX decoded 10% faster in fp32 and 20% with int8 weights at batch 1
    without it, on a 2-core Xeon), but 2x faster on the millions of values of training and
    evaluation batches. Below ONEDNN_GELU_MIN values ATen computes it (the same function; the
    two kernels differ by ~1e-7)."""
    if torch.compiler.is_compiling() or x.device.type != "cpu" or x.numel() >= ONEDNN_GELU_MIN:
        return F.gelu(x)
    return without_onednn(F.gelu, x)


ACTIVATION_FUNCTIONS = {"gelu": gelu, "silu": F.silu, "relu2": relu2}


class MLP(nn.Module):
    """GELU (neox): proj(gelu(fc(x))). SwiGLU (llama, qwen3): fc computes [gate | up] in one
    matmul, (2I, C) rows, and proj(silu(gate) * up). cfg.activation may swap GELU or SiLU for
    ReLU squared."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.gated_mlp
        self.act = ACTIVATION_FUNCTIONS[cfg.activation]
        hidden = cfg.intermediate_size
        self.fc = nn.Linear(cfg.n_embd, 2 * hidden if self.gated else hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x):
        h = self.fc.forward(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return _dropout(self.proj.forward(h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask=None, input_pos=None, kv_len=None):
        x = x + self.attn.forward(self.ln_1.forward(x), cos, sin, mask, input_pos, kv_len)
        x = x + self.mlp.forward(self.ln_2.forward(x))
        return x


# =========================================================================== model

_VOCAB_ROWS = ("tok_emb.weight", "lm_head.weight")


def _drop_vocab_padding(module, state: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: the embedding / head hold their vocab_size real rows only (a copy,
    so a saved checkpoint does not carry the padding in the slice's storage). A model whose RoPE
    layout was interleaved for inference has no checkpoint layout to give (GPT.interleave_rope)."""
    if module.rope_cis is not None:
        raise RuntimeError("this model's q/k layout was interleaved for inference (GPT.interleave_rope); "
                           "load the checkpoint again to save or export it")
    V, cut = module.cfg.vocab_size, {}
    for name in _VOCAB_ROWS:
        w = state.get(prefix + name)
        if w is not None and w.shape[0] > V:   # a tied pair stays one tensor
            state[prefix + name] = cut.setdefault(w.data_ptr(), w[:V].clone())


def _add_vocab_padding(module, state: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: zero padding rows under the vocab_size real ones."""
    rows = module.cfg.padded_vocab_size
    for name in _VOCAB_ROWS:
        w = state.get(prefix + name)
        if isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[0] == module.cfg.vocab_size < rows:
            state[prefix + name] = torch.cat((w, w.new_zeros(rows - w.shape[0], w.shape[1])))


def pad_vocab_state(model: "GPT", optimizer) -> None:
    """Zero-pad optimizer state written for an unpadded embedding or head (checkpoints from before
    the padding) to the padded rows, so such a run resumes."""
    for weight in {id(w): w for w in (model.tok_emb.weight, model.lm_head.weight)}.values():
        for opt in getattr(optimizer, "optimizers", [optimizer]):
            state = opt.state.get(weight, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[0] < weight.shape[0] \
                        and value.shape[1] == weight.shape[1]:
                    pad = value.new_zeros(weight.shape[0] - value.shape[0], value.shape[1])
                    state[key] = torch.cat((value, pad))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.dropout = cfg.dropout
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = make_norm(cfg, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # padded_vocab_size rows in memory (built at vocab_size first: the same random draws)
        self.tok_emb.weight = nn.Parameter(self.tok_emb.weight.new_zeros(cfg.padded_vocab_size, cfg.n_embd))
        self.tok_emb.num_embeddings = self.lm_head.out_features = cfg.padded_vocab_size
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # weight tying: one tensor
        else:
            self.lm_head.weight = nn.Parameter(torch.zeros_like(self.tok_emb.weight))
        # state dicts (checkpoints, exports) hold the vocab_size real rows only
        self.register_state_dict_post_hook(_drop_vocab_padding)
        self.register_load_state_dict_pre_hook(_add_vocab_padding)
        cos, sin = rope_cache(cfg.block_size, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, D)
        self.register_buffer("rope_sin", sin, persistent=False)  # (block_size, D)
        self.register_buffer("rope_cis", None, persistent=False)  # cos + i sin (block_size, D/2): interleave_rope
        self.gradient_checkpointing = False  # recompute each block in backward (training mode only)
        self.document_kernel = "sdpa"        # set_document_kernel / use_flash_attn
        self._init_weights()

    # ----------------------------------------------------------------------- parameters

    @torch.no_grad()
    def _init_weights(self) -> None:
        """All initialisation in one place: N(0, 0.02) for matrices, the embedding and the head,
        zeros for biases, ones for norm scales (QK-norm included); the two residual output projections of each
        block get std 0.02 / sqrt(2 * n_layer) so the residual stream does not grow with depth."""
        std, V = 0.02, self.cfg.vocab_size
        for module in self.modules():
            if module is self.tok_emb or module is self.lm_head:  # the real rows (the draws of an
                nn.init.normal_(module.weight[:V], mean=0.0, std=std)  # unpadded model); padding 0
                nn.init.zeros_(module.weight[V:])
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        resid_std = std / math.sqrt(2 * self.cfg.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=resid_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=resid_std)

    def num_parameters(self) -> int:
        """Trainable parameter count; a tied embedding / head matrix is counted once, padding rows
        not at all."""
        vocab_matrices = 1 if self.cfg.tie_embeddings else 2
        padding = vocab_matrices * (self.cfg.padded_vocab_size - self.cfg.vocab_size) * self.cfg.n_embd
        return sum(p.numel() for p in self.parameters()) - padding  # parameters() yields a shared tensor once

    def configure_optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: weight decay on matrices (every >= 2-D weight, the embedding
        and output head included, as in GPT-2), none on biases and norm scales."""
        decay, no_decay = [], []
        for _, p in self.named_parameters():  # shared tensors appear once
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 else no_decay).append(p)
        seen = [id(p) for p in decay + no_decay]
        expected = {id(p) for p in self.parameters() if p.requires_grad}
        assert len(seen) == len(set(seen)) and set(seen) == expected, "optimizer groups must cover each param once"
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    # ----------------------------------------------------------------------- attention backends

    def use_flash_attn(self, enable: bool) -> bool:
        """Use the flash-attn package when it is installed and the model is on CUDA: its plain
        causal kernel for windows inside one document, its varlen kernel for windows holding
        several (fed the Segments layout the data side builds). Without flash-attn on CUDA,
        windows holding several documents use FlexAttention with a block mask; elsewhere SDPA
        with the dense mask. The choice is logged in one line. Returns whether flash-attn is on.
        flash-attn needs fp16/bf16 inputs; in fp32 SDPA runs instead."""
        global _flash_attn_func, _flash_attn_varlen_func
        on, kernel = False, "sdpa"
        cuda = self.tok_emb.weight.device.type == "cuda"
        why = "not asked (--flash-attention)"
        if enable:
            try:
                from flash_attn import flash_attn_func, flash_attn_varlen_func
            except Exception:  # ImportError, or a build that does not match this torch / GPU
                why = "the flash-attn package is not installed (or does not load)"
            else:
                if not cuda:
                    why = "flash-attn needs a CUDA GPU"
                else:
                    _flash_attn_func, _flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
                    on, kernel = True, "varlen"
            if not on and cuda and flex_attention is not None:
                kernel = "flex"
        for block in self.blocks:
            block.attn.use_flash = on
        self.set_document_kernel(kernel)
        if enable:
            docs = {"varlen": "flash-attn varlen", "flex": "FlexAttention with a document block mask",
                    "sdpa": "SDPA with a dense document mask"}[kernel]
            log.info(f"attention: {'flash-attn' if on else 'SDPA'} within one document, {docs} across documents"
                     + ("" if on else f" ({why})"))
        return on

    def _document_mask(self, positions: torch.Tensor, layout: Optional[Segments], dtype):
        """What the attention layers get for windows holding several documents: the dense
        (B, 1, T, T) mask, a FlexAttention block mask, or the varlen lengths (document_kernel)."""
        kind = self.document_kernel
        half = self.tok_emb.weight.dtype in (torch.float16, torch.bfloat16) \
            or torch.is_autocast_enabled(positions.device.type)
        if kind == "varlen" and layout is not None and half:   # flash-attn runs fp16 / bf16 only
            return Varlen(layout.cu_seqlens, layout.max_seqlen)
        if kind == "flex" and not (self.training and self.dropout > 0):
            return document_block_mask(positions)
        return segment_mask(positions)  # (B, 1, T, T)

    def set_document_kernel(self, kind: str) -> None:
        """How windows holding several documents attend (DOCUMENT_KERNELS); "sdpa" by default."""
        if kind not in DOCUMENT_KERNELS:
            raise ValueError(f"document kernel {kind!r} must be one of {', '.join(DOCUMENT_KERNELS)}")
        if kind == "flex" and flex_attention is None:
            raise ValueError("FlexAttention needs a newer torch")
        self.document_kernel = kind

    def interleave_rope(self) -> None:
        """For inference only, in place: reorder each head's query and key dimensions so that
        RoPE's pairs (i, i + D/2) sit side by side as (2i, 2i + 1), where one complex product
        rotates them (_rope_pairs_complex). Scores are unchanged: q.k sums over the same
        products, the same permutation applied to both; values are untouched. The weights then
        no longer have the checkpoint's layout: such a model is for running, not for saving or
        exporting. Calling it again does nothing."""
        if self.rope_cis is not None:
            return
        H, D = self.cfg.n_head, self.cfg.head_dim
        perm = torch.arange(D).view(2, D // 2).t().reshape(-1)             # new 2i <- i, 2i + 1 <- i + D/2
        rows = (torch.arange(2 * H)[:, None] * D + perm).reshape(-1)        # the q and k heads' rows
        with torch.no_grad():
            for block in self.blocks:
                attn = block.attn
                for p in (attn.qkv.weight, attn.qkv.bias):
                    if p is not None:
                        p[:2 * H * D] = p[rows.to(p.device)]
                for norm in (attn.q_norm, attn.k_norm):
                    if norm is not None:
                        norm.weight.copy_(norm.weight[perm.to(norm.weight.device)])
        self.rope_cos = self.rope_cos[:, :D // 2].contiguous()             # the tables repeat their halves
        self.rope_sin = self.rope_sin[:, :D // 2].contiguous()             # (what torch.compile traces)
        self.rope_cis = torch.complex(self.rope_cos, self.rope_sin)

    # ----------------------------------------------------------------------- KV cache

    def setup_cache(self, batch_size: int, max_seq_len: int, device=None, dtype=None, reuse: bool = False) -> None:
        """Preallocate (batch_size, H, max_seq_len, D) key/value buffers in every layer.

        max_seq_len is limited to cfg.block_size (the RoPE tables and the trained context).
        dtype defaults to the autocast dtype under autocast, else the parameters' dtype. `reuse`:
        keep the buffers already there when they have this shape, device and dtype (a compiled decode step keeps its inputs; slots
        not yet written in a call are masked, so their old contents are never read).
        """
        if not 0 < max_seq_len <= self.cfg.block_size:
            raise ValueError(f"max_seq_len={max_seq_len} must be in 1..block_size={self.cfg.block_size}")
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be positive")
        p = self.tok_emb.weight
        device = p.device if device is None else torch.device(device)
        if dtype is None:
            dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else p.dtype
        cache = self.blocks[0].attn.kv_cache
        if reuse and cache is not None and cache.k.shape == (batch_size, self.cfg.n_head, max_seq_len,
                                                                self.cfg.head_dim) \
                and cache.k.dtype == dtype and cache.k.device == device:
            return
        for block in self.blocks:
            block.attn.kv_cache = KVCache(batch_size, self.cfg.n_head, max_seq_len, self.cfg.head_dim,
                                          device=device, dtype=dtype)

    def clear_cache(self) -> None:
        for block in self.blocks:
            block.attn.kv_cache = None

    # ----------------------------------------------------------------------- forward

    def forward(self, idx, targets=None, *, input_pos=None, key_mask=None, positions=None, kv_len=None,
                last_only=False, z_loss=0.0):
        """idx (B, T) long -> (logits, loss).

        Without targets: (logits (B, T, V) float32, or (B, 1, V) for the last position only with
        `last_only`, None). With targets (B, T), -1 = not scored: (None, mean cross-entropy),
        computed in chunks without the (B, T, V) logits (linear_cross_entropy; `z_loss` adds
        z-loss to the gradient only). The other keywords are those of `hidden_states`.
        """
        x = self.hidden_states(idx, input_pos=input_pos, key_mask=key_mask, positions=positions, kv_len=kv_len)
        if targets is not None:
            return None, linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.reshape(-1),
                                              z_loss=z_loss, vocab=self.cfg.vocab_size)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x)[..., :self.cfg.vocab_size].float(), None  # (B, T, V): the padding dropped

    @torch.no_grad()
    def token_losses(self, idx, targets, *, positions=None) -> torch.Tensor:
        """Per-target cross-entropy (B, T) float32 (0 where targets == -1), without gradients and
        without the (B, T, V) logits: the output head runs only on the scored positions."""
        x = self.hidden_states(idx, positions=positions).flatten(0, 1)  # (B*T, C)
        y = targets.reshape(-1)
        # a plain Linear multiplies in one matmul per chunk; inference.FrozenLinear by its own kernels
        W, head = (self.lm_head.weight, None) if type(self.lm_head) is nn.Linear else (None, self.lm_head)
        if bool((y != -1).all()):
            return linear_cross_entropy(x, W, y, reduction="none", vocab=self.cfg.vocab_size,
                                        head=head).view(targets.shape)
        out = torch.zeros(y.shape, dtype=torch.float32, device=x.device)
        scored = (y != -1).nonzero()[:, 0]
        out[scored] = linear_cross_entropy(x[scored], W, y[scored], reduction="none", vocab=self.cfg.vocab_size,
                                           head=head)
        return out.view(targets.shape)

    def hidden_states(self, idx, *, input_pos=None, key_mask=None, positions=None, kv_len=None) -> torch.Tensor:
        """idx (B, T) long -> the final norm's output (B, T, C), the input of the output head.

        input_pos None: training / evaluation over whole windows (T <= block_size), causal, and
        document-aware when cfg.sep_token_id is set: `positions` from document_positions(idx)
        ((T,) = one document per row, plain causal; (B, T) = documents restart at each 0),
        computed here from idx when not given.

        input_pos (T,) long: cached decoding at those cache slots (see the module docstring);
        key_mask (B, S) bool, False = padding slot; positions (T,) or (B, T) long RoPE positions
        (default: input_pos); in training also a Segments (segment_layout), which the "varlen"
        document kernel needs. kv_len (int): the slots written so far, input_pos included, when the
        caller knows it (eager decoding): attention reads only those, with no mask for one new
        token or a prefill from slot 0. None: every slot of the cache, masked (fixed shapes,
        as torch.compile wants them).
        """
        B, T = idx.shape
        mask = None
        if input_pos is None:
            if T > self.cfg.block_size:
                raise ValueError(f"sequence length {T} exceeds block_size={self.cfg.block_size}")
            if positions is None:
                positions = document_positions(idx, self.cfg.sep_token_id)
            layout = positions if isinstance(positions, Segments) else None
            if layout is not None:
                positions = layout.positions
            if positions.dim() == 2:
                mask = self._document_mask(positions, layout, idx.dtype)
        else:
            cache = self.blocks[0].attn.kv_cache
            if cache is None:
                raise RuntimeError("cached forward needs setup_cache() first")
            if positions is None:
                positions = input_pos
            S = cache.k.shape[2] if kv_len is None else kv_len
            plain = kv_len is not None and key_mask is None and (T == 1 or T == kv_len)
            if not plain:
                slots = torch.arange(S, device=idx.device)  # (S,)
                mask = slots[None, :] <= input_pos[:, None]  # (T, S) causal over cache slots
                if key_mask is not None:
                    # padding slots are never attended, except by the query sitting in that very slot
                    # (so a padding query still has one key and no row of the softmax is empty / NaN)
                    own = slots[None, :] == input_pos[:, None]  # (T, S)
                    mask = mask[None] & (key_mask[:, None, :S] | own[None])  # (B, T, S)
                    mask = mask[:, None]  # (B, 1, T, S)
                else:
                    mask = mask[None, None]  # (1, 1, T, S)
        # RoPE tables laid out for (B, T, 2, H, D): (T, 1, 1, D) or (B, T, 1, 1, D)
        if self.rope_cis is not None and not torch.compiler.is_compiling():
            cos, sin = self.rope_cis[positions][..., None, None, :], None    # interleave_rope's layout
        else:
            cos, sin = self.rope_cos[positions][..., None, None, :], self.rope_sin[positions][..., None, None, :]

        x = _dropout(self.tok_emb(idx), self.dropout, self.training)  # (B, T, C)
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if ckpt:
                x = checkpoint(block, x, cos, sin, mask, input_pos, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, input_pos, kv_len)
        return self.ln_f(x)


# =========================================================================== one-token decoding

def _norm_function(norm: nn.Module):
    """norm's forward as a function of x with its weights bound (LayerNorm or RMSNorm)."""
    if isinstance(norm, nn.LayerNorm):
        shape, w, b, eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps
        return lambda x: F.layer_norm(x, shape, w, b, eps)
    shape, w, eps = norm.normalized_shape, norm.weight, norm.eps
    return lambda x: F.rms_norm(x, shape, w, eps)


def _rows_product(layer: nn.Module, rows: int):
    """layer's forward for `rows` float32 rows (rows, in) -> (rows, out) float32 outside
    autocast, as a function with its weights bound: a float32 nn.Linear, or a layer with its own
    `rows_product` (inference.FrozenLinear); None for any other layer."""
    if type(layer) is nn.Linear and layer.weight.dtype == torch.float32:
        w, b = layer.weight, layer.bias
        return lambda x: F.linear(x, w, b)
    make = getattr(layer, "rows_product", None)
    return make(rows) if make is not None else None


class TokenDecoder:
    """Cached decoding of one new token per row on a CPU, computed as GPT.forward computes it
    (input_pos = (pos,), kv_len = pos + 1, the batch's key_mask and RoPE positions), with the
    same operations on the same tensors, in one Python function with every weight bound
    beforehand.

    Decoding a small model at small batches is bound by per-operation overhead, not arithmetic:
    the modules' forwards (attribute lookups, shape handling, branches for training, masks,
    prompts and autocast) cost about a third of a batch-1 token. This loop runs only the
    operations, on (B, C) rows, and gives the same logits (tests compare them bit for bit).
    Module hooks do not fire in it.

    Build it with token_decoder(model), after model.setup_cache(B, S), for as long as those
    caches stand; a change to what a Block computes (attention, MLP, norms) changes this loop
    with it."""

    def __init__(self, model: "GPT", layers: list, head):
        self.layers, self.head, self.cis = layers, head, model.rope_cis
        self.emb, self.norm_f, self.vocab = model.tok_emb.weight, _norm_function(model.ln_f), model.cfg.vocab_size
        self.H, self.D = model.cfg.n_head, model.cfg.head_dim

    def __call__(self, tokens: torch.Tensor, pos: int, key_mask: Optional[torch.Tensor] = None,
                 positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens (B, 1) long written at cache slot `pos`, the slots before it filled; key_mask
        (B, S) bool (False: a padding slot) and positions (B, S) long (each slot's RoPE position),
        or None for none and position = slot -> the next-token logits (B, V) float32."""
        B, H, D = tokens.shape[0], self.H, self.D
        C, end = H * D, pos + 1
        if positions is None:
            cis = self.cis[pos]                                              # (D/2,) complex
        else:
            cis = self.cis[positions[:, pos]][:, None, None]                 # (B, 1, 1, D/2)
        mask = None if key_mask is None else key_mask[:, None, None, :end]   # (B, 1, 1, pos + 1)
        x = F.embedding(tokens.view(B), self.emb)                            # (B, C)
        for norm_1, qkv, qk_norm, proj, norm_2, fc, act, gated, fc_proj, k_cache, v_cache in self.layers:
            y = qkv(norm_1(x)).view(B, 3, H, D)                              # [q | k | v] heads
            qk = y[:, :2]
            if qk_norm is not None:                                          # qwen3's q/k RMS norms
                scale, eps = qk_norm
                qk = F.rms_norm(qk, (D,), eps=eps) * scale
            qk = torch.view_as_real(torch.view_as_complex(qk.unflatten(-1, (-1, 2))) * cis).flatten(-2)
            k_cache[:, :, pos] = qk[:, 1]                                    # caches (B, H, S, D)
            v_cache[:, :, pos] = y[:, 2]
            a = F.scaled_dot_product_attention(qk[:, 0, :, None], k_cache[:, :, :end], v_cache[:, :, :end],
                                               attn_mask=mask)              # (B, H, 1, D)
            x = x + proj(a.view(B, C))
            h = fc(norm_2(x))
            if gated:
                gate, up = h.chunk(2, dim=-1)
                h = act(gate) * up
            else:
                h = act(h)
            x = x + fc_proj(h)
        return self.head(self.norm_f(x))[:, :self.vocab].float()            # (B, V)


def token_decoder(model: "GPT") -> Optional[TokenDecoder]:
    """A TokenDecoder for `model` as it stands (its caches set up), or None where it does not
    apply and GPT.forward decodes: not a CPU, training mode, autocast on, caches not float32,
    RoPE not interleaved (GPT.interleave_rope: inference.prepare does it on CPUs), or a layer it
    cannot multiply the batch's rows by (see _rows_product)."""
    cache = model.blocks[0].attn.kv_cache
    if model.training or model.rope_cis is None or cache is None or cache.k.dtype != torch.float32 \
            or model.tok_emb.weight.device.type != "cpu" or torch.is_autocast_enabled("cpu") \
            or torch.compiler.is_compiling():
        return None
    rows = cache.k.shape[0]
    layers = []
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        products = [_rows_product(m, rows) for m in (attn.qkv, attn.proj, mlp.fc, mlp.proj)]
        if any(p is None for p in products) or attn.kv_cache.k.shape != cache.k.shape:
            return None
        qk_norm = None
        if attn.q_norm is not None:       # (scales (2, 1, D), eps) as CausalSelfAttention applies them
            qk_norm = (torch.stack((attn.q_norm.weight, attn.k_norm.weight))[:, None], attn.qk_norm_eps)
        layers.append((_norm_function(block.ln_1), products[0], qk_norm, products[1], _norm_function(block.ln_2),
                       products[2], mlp.act, mlp.gated, products[3], attn.kv_cache.k, attn.kv_cache.v))
    head = _rows_product(model.lm_head, rows)
    return None if head is None else TokenDecoder(model, layers, head)


# =========================================================================== loading
