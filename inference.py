"""A loaded model set up for generation or evaluation: where its weights live and in what dtype.

- fp32: the model as trained.
- bf16 on a CPU: every Linear layer of the blocks and the output head become `FrozenLinear`s
  holding a bf16 copy of their weight (the output head its own: the weight tying is undone).
  Batch-1 decoding reads every weight once per token, so it is bound by their bytes, not by
  arithmetic. Generation then runs *weight-only*: the activations, norms, attention and KV cache
  stay float32 and only the matmuls see bf16 inputs (SDPA over a KV cache is 3-4x slower in bf16
  than in float32 on a CPU, and autocast would add casts around every op). Evaluation, whose
  passes hold thousands of rows, runs the whole model under bf16 autocast.
- int8 on a CPU (`--quantize int8`): the same, with int8 weights and one float scale per output
  row (symmetric, per-channel). Up to INT8_KERNEL_ROWS rows (token-by-token decoding) the matmul
  is torch's int8 matrix-vector kernel (aten._weight_int8pack_mm), ~3x faster than bf16 here;
  longer passes (prompts, evaluation windows) dequantize the weight first, except as below.
- With native bf16, bf16 products of more than one row (batched decoding, prompts, evaluation)
  multiply by a copy of the weight reordered once into oneDNN's blocked layout
  (mkldnn._reorder_linear_weight, as inductor's weight freezing does), made at first use: F.linear
  reorders the plain weight at every call. On a native-bf16 EPYC (6 x 256 model): 1.5x the
  products of a batch-8 decoding step, 1.16x the whole decoding (the same greedy tokens), ~1%
  on evaluation. One-row products stay ATen's (oneDNN's fixed cost is larger there, packed or
  not), except for weights of PACKED_ONE_ROW values or more, the output head of a small model
  (1.03-1.05x batch-1 decoding). The copy is as large as the bf16 weights it comes from.
- Outside autocast, products of more than one row run in bf16 where the CPU has native bf16,
  else in float32 (the stored weight converted at each call, a small cost beside the product):
  emulated bf16 is 10-30x slower. Products of a few rows need no native bf16: ATen reads the
  bf16 weight and computes in float32, faster than float32 weights up to ~4 rows (ATEN_BF16_ROWS;
  AVX2 kernels, 6 x 256 model: decoding at batch 2 2.2x, at batch 4 1.3-1.5x, at batch 8 0.8x), so
  `auto` may pick bf16 weights for decoding up to 4 rows at a time on any CPU
  (precision.resolve_precision). On such a CPU `--quantize int8` also evaluates outside bf16
  autocast, and where the CPU has int8 dot products (VNNI) its products of more than
  INT8_KERNEL_ROWS rows are int8 ones (`quantized::linear_dynamic` on oneDNN: the rows quantized
  to uint8 with one scale per product, the int32 sums scaled back to float32 with the bias, in
  one call), 1.7-2.5x the float32 product on an AVX-512 VNNI Xeon; else in float32 from the
  dequantized weight.
- bf16 / fp16 on a GPU: the Linear weights are cast in place and the model runs under autocast.

The model must not be trained or saved after `prepare`.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import without_onednn

QUANTIZE = ("int8",)
INT8_KERNEL_ROWS = 8   # _weight_int8pack_mm beats a bf16 matmul up to ~8 rows and is 3x slower at 64
INT8_ENGINE = "onednn"  # quantized::linear_dynamic's engine: on the AVX-512 VNNI Xeon 1.2x fbgemm's
                       # ("x86") in whole evaluations; its weights are packed once, at first use
PACKED_ONE_ROW = 1_500_000   # weights of this many values or more multiply even one row by the packed
                             # weight (with native bf16): the output head, 8,000 x 256: 1.4-2.9x ATen's
INT8_ALIGN = 32        # ... and, with bf16 inputs, gave garbage or crashed for in_features of 24, 40
                       # and 683 (multiples of 16 worked); layers not aligned to 32 stay bf16


class FrozenLinear(nn.Module):
    """An inference-only Linear layer with its weight stored in bf16, or in int8 with per-row
    scales. Outside autocast it returns float32 (the bias added in float32); under autocast it
    returns the autocast dtype, as nn.Linear would."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], kind: str = "bf16"):
        super().__init__()
        weight = weight.detach().float()
        self.out_features, self.in_features = weight.shape
        if kind == "int8" and self.in_features % INT8_ALIGN:
            kind = "bf16"                         # the kernel's shape limit: this layer stays bf16
        self.kind = kind
        if kind == "int8":
            scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.register_buffer("qweight", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scales.to(torch.bfloat16))
        elif kind == "bf16":
            self.register_buffer("bf16_weight", weight.to(torch.bfloat16))
        else:
            raise ValueError(f"FrozenLinear kind {kind!r} must be bf16 or int8")
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        from precision import aten_bf16_rows, cpu_native_bf16
        # Products of many rows: bf16 with native bf16; else int8 ones (int8 weights, a CPU with VNNI)
        # or float32.
        self.native_bf16 = cpu_native_bf16() is not None
        self.int8_rows = kind == "int8" and not self.native_bf16 and int8_rows_here()
        self._packed = None                                # linear_dynamic's packed weight and bias
        self._onednn = None                   # the bf16 weight in oneDNN's layout; False: none here
        self.packs = self.native_bf16 and kind == "bf16"      # multi-row products by _onednn_weight()
        self.packed_one_row = self.packs and weight.numel() >= PACKED_ONE_ROW
        # products of up to this many rows by ATen's bf16 product (precision.aten_bf16_rows)
        self.aten_rows = aten_bf16_rows(self.native_bf16) if kind == "bf16" and not self.packed_one_row else 0

    @property
    def weight(self) -> torch.Tensor:
        """The weight in bf16 (dequantized for int8), for the products no int8 kernel computes."""
        if self.kind == "int8":
            return self.qweight.to(torch.bfloat16) * self.scales[:, None]
        return self.bf16_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        rows, cpu, bias = x2.shape[0], x2.is_cpu, self.bias
        autocast = torch.is_autocast_enabled(x.device.type)
        eager_cpu = cpu and not torch.compiler.is_compiling()         # our own kernels (not traced)
        if autocast and bias is not None and eager_cpu and self._packs_rows(rows):
            # the float32 bias added inside oneDNN's product, the sum rounded to bf16 once: one
            # pass over the output less than adding it after, 1.06-1.15x these products of 4,096 rows
            y = _packed_product(x2, self._onednn_weight(), bias)
            return y.view(*lead, self.out_features)
        if eager_cpu and (product := self._cpu_product(rows)) is not None:
            y = product(x2)
        elif self.kind == "int8" and rows <= INT8_KERNEL_ROWS and cpu:   # what torch.compile traces
            y = _int8_product(x2, self.qweight, self.scales)
        elif cpu and not self.native_bf16 and not autocast:
            if self.int8_rows and eager_cpu:
                y = torch.ops.quantized.linear_dynamic(x2.float().contiguous(), self._packed_weight(), False)
                return y.view(*lead, self.out_features)         # float32, the bias added
            y = F.linear(x2.float(), self.weight.float())   # bf16 would be emulated: 10-30x slower
        else:
            y = F.linear(x2.to(torch.bfloat16), self.weight)
        if autocast:
            y = y if bias is None else y + bias.to(y.dtype)
        else:
            y = y.float() if bias is None else torch.add(bias, y)   # float32, one pass
        return y.view(*lead, self.out_features)

    def _cpu_product(self, rows: int) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """The product of `rows` rows (rows, in) -> (rows, out) bf16, without the bias, that this
        layer's own CPU kernels compute, as a function with its tensors bound; None where forward
        falls back to F.linear (products of many rows in float32, from the dequantized int8
        weight, or without a packed weight).

        One row: ATen's bf16 product; oneDNN's bf16 matrix-vector product is ~1.7x slower (0.85
        against 0.51 ms for the 25 products of a 6 x 256 model here), though it wins from two rows
        on, and from PACKED_ONE_ROW values with the packed weight. Without native bf16, ATen's
        product up to ATEN_BF16_ROWS rows (precision.aten_bf16_rows). Up to INT8_KERNEL_ROWS rows
        of int8 weights: the int8 kernel. Else, with native bf16: the packed weight."""
        if rows <= self.aten_rows:
            return functools.partial(aten_bf16_product, weight=self.bf16_weight)
        if self.kind == "int8" and rows <= INT8_KERNEL_ROWS:
            return functools.partial(_int8_product, qweight=self.qweight, scales=self.scales)
        if self._packs_rows(rows):
            return functools.partial(_packed_product, packed=self._onednn_weight())
        return None

    def _packs_rows(self, rows: int) -> bool:
        """Whether products of `rows` rows multiply by the packed weight (_cpu_product's last case)."""
        return rows > self.aten_rows and self.packs and self._onednn_weight() is not None

    def rows_product(self, rows: int) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """forward for `rows` float32 rows (rows, in) -> (rows, out) float32 outside autocast, as a
        function with its branch chosen once and its tensors bound (model.TokenDecoder calls it
        for every layer and token); None where _cpu_product is None."""
        product, bias = self._cpu_product(rows), self.bias
        if product is None:
            return None
        if bias is None:
            return lambda x: product(x).float()
        return lambda x: torch.add(bias, product(x))

    def _onednn_weight(self) -> Optional[torch.Tensor]:
        """The bf16 weight reordered for oneDNN's bf16 products, made once; None where this torch
        or CPU has none (the reorder needs AVX-512 or AVX-NE-CONVERT)."""
        if self._onednn is None:
            try:
                self._onednn = torch.ops.mkldnn._reorder_linear_weight(self.bf16_weight)
            except (AttributeError, RuntimeError):
                self._onednn = False
        return self._onednn if self._onednn is not False else None

    def __getstate__(self) -> dict:
        # oneDNN's opaque tensor cannot be copied (deepcopy, pickle): a copy makes its own
        return {**super().__getstate__(), "_onednn": None}

    def _packed_weight(self):
        """The int8 weight and per-row scales (the same as the int8 kernel's) and the bias, packed
        for quantized::linear_dynamic on INT8_ENGINE, once."""
        if self._packed is None:
            with warnings.catch_warnings():   # the quantized tensor type is deprecated; it only carries
                warnings.simplefilter("ignore")   # the weight into the packing here
                qweight = torch._make_per_channel_quantized_tensor(
                    self.qweight, self.scales.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
            engine = torch.backends.quantized.engine
            torch.backends.quantized.engine = INT8_ENGINE
            try:
                self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias)
            finally:
                torch.backends.quantized.engine = engine
        return self._packed

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}"


def _int8_product(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (N, in) times the int8 weight with its per-row scales, by torch's int8 kernel (bf16 out)."""
    return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), qweight, scales)


def _packed_product(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (N, in) times a bf16 weight in oneDNN's layout (FrozenLinear._onednn_weight), plus `bias`
    (float32, added before the rounding) where given, bf16 out."""
    return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), packed, bias, "none", [], "")


def aten_bf16_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (N, in) times the bf16 weight (out, in) transposed, by ATen's bf16 kernel with oneDNN
    off: bf16 output, float32 arithmetic, no bf16 instructions needed. FrozenLinear's product of
    few rows, and what precision.measure_bf16_speedup times for decoding them."""
    return without_onednn(torch.mm, x.to(torch.bfloat16), weight.t())


def int8_products_available() -> bool:
    """Whether this torch build has quantized::linear_dynamic on INT8_ENGINE (a deprecated part of
    torch, so checked rather than assumed)."""
    try:
        return INT8_ENGINE in torch.backends.quantized.supported_engines and \
            hasattr(torch.ops.quantized, "linear_dynamic")
    except (AttributeError, RuntimeError):
        return False


def int8_rows_here() -> bool:
    """Whether int8 products of many rows run here: the CPU has int8 dot products (VNNI) and torch
    has the op."""
    from precision import cpu_int8_dot_product
    return cpu_int8_dot_product() and int8_products_available()


def freeze_linear_layers(model, kind: str) -> None:
    """Replace the blocks' Linear layers and the output head by FrozenLinear(kind)."""
    for block in model.blocks:
        for module in list(block.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, FrozenLinear(child.weight, child.bias, kind))
    model.lm_head = FrozenLinear(model.lm_head.weight, None, kind)  # a tied head gets its own copy


@torch.no_grad()
def half_weights(model, dtype: torch.dtype) -> None:
    """Cast the blocks' Linear weights and a separate output head to `dtype` in place (autocast
    then has nothing to cast at each call)."""
    for block in model.blocks:
        for module in block.modules():
            if isinstance(module, nn.Linear):
                module.weight.data = module.weight.data.to(dtype)
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().to(dtype), requires_grad=False)


def prepare(model, precision, quantize: Optional[str] = None, *, weight_only: bool = False
            ) -> Callable[[], contextlib.AbstractContextManager]:
    """Set `model` up for inference in `precision` (precision.Precision) and `quantize` (None or
    "int8", CPU only) and return the context to run it in. `weight_only`: on a CPU, keep the
    activations float32 (generation, see the module docstring); else bf16 autocast (evaluation).
    On a CPU the model's RoPE layout is interleaved too (GPT.interleave_rope): the model is for
    running from then on, not for saving."""
    device = model.tok_emb.weight.device
    if quantize is not None and quantize not in QUANTIZE:
        raise ValueError(f"quantize {quantize!r} must be one of {', '.join(QUANTIZE)}")
    if quantize is not None and device.type != "cpu":
        raise ValueError("--quantize int8 is for CPUs")
    if device.type == "cpu":
        model.interleave_rope()          # RoPE as one complex product (GPT.interleave_rope)
    if _freezes_linear_layers(device.type, precision, quantize):
        freeze_linear_layers(model, quantize or "bf16")
        return contextlib.nullcontext if weight_only else precision.autocast
    if precision.dtype is not None:
        half_weights(model, precision.dtype)
    return precision.autocast


def _freezes_linear_layers(device_type: str, precision, quantize: Optional[str]) -> bool:
    """Whether `prepare` replaces the Linear layers by FrozenLinear: on a CPU, int8 or bf16."""
    return device_type == "cpu" and (quantize is not None or precision.dtype == torch.bfloat16)


def log_setup(precision, quantize: Optional[str], stage: str, *, weight_only: bool) -> None:
    """The one line that says how a stage computes (precision.log_choice, with what `prepare`
    does on a CPU: weight-only bf16 or int8 weights)."""
    from common import log
    from precision import log_choice
    if not _freezes_linear_layers(precision.device_type, precision, quantize):
        log_choice(precision, stage)
        return
    bf16 = precision.dtype == torch.bfloat16
    weights = (f"{quantize} weights" + (" (bf16 matmuls)" if bf16 else "")) if quantize else "bf16 weights"
    if weight_only:
        rest = "float32 activations, attention and KV cache"
    else:
        rest = "bf16 autocast" if bf16 else "float32 activations"
    why = f" ({precision.reason})" if precision.reason else ""
    log.info(f"{stage} precision: {weights}, {rest}{why}")


def resolve_precision_for(requested: str, device, quantize: Optional[str], **shape):
    """precision.resolve_precision for generation or evaluation. `--quantize int8` needs a CPU. Where
    the CPU has native bf16 its products take bf16 activations, so an explicit fp32 or fp16 is
    refused (UserError); without native bf16 its activations stay float32 (auto and fp32 alike:
    bf16 autocast would be emulated) and only fp16 is refused. See the module docstring."""
    from common import UserError
    from precision import Precision, cpu_native_bf16, resolve_precision
    if quantize is not None:
        if device.type != "cpu":
            raise UserError(f"--quantize {quantize} runs on CPUs (its kernel is a CPU one); on {device.type} "
                            f"use --precision bf16 instead")
        native = cpu_native_bf16() is not None
        if requested == "fp16" or (requested == "fp32" and native):
            why = "multiplies in bf16 on this CPU (it has native bf16)" if native else "has no fp16 kernel"
            raise UserError(f"--quantize {quantize} {why} and cannot run with --precision {requested}; "
                            f"drop --precision (or use --precision bf16)")
        if not native and requested in ("auto", "fp32"):   # no bf16 autocast where it is emulated
            rows = "int8 products of many rows (VNNI)" if int8_rows_here() else "float32 products of many rows"
            return Precision("fp32", device.type, requested, "no native bf16 on this CPU (AVX512_BF16/AMX): "
                             f"float32 activations, {rows}")
        return resolve_precision("bf16", device, warn_emulated=False, **shape)
    return resolve_precision(requested, device, **shape)
