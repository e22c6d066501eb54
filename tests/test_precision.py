"""precision.py: the per-machine choice of fp32 / bf16, its micro-benchmark and cache, and
--precision on the train, evaluate and generate stages.

The CPU's bf16 capability is injected with MINI_LLM_NATIVE_BF16 (conftest sets 0 for the whole
suite); the micro-benchmark itself always runs for real. A measured ratio is injected, where a
test needs one, by writing it into the precision cache exactly as an earlier run would have.
"""
from __future__ import annotations

import json
import logging
import time

import pytest
import torch

import inference
import main
import precision as P
import tokenizer
from common import UserError, log
from conftest import assert_user_error, corpus_slice, run_cli

QS_SHAPE = dict(n_embd=256, vocab_size=8000, rows=16 * 128)   # the quick start's training shape
CPU = torch.device("cpu")


def cache_file():
    import os
    from pathlib import Path
    return Path(os.environ[P.CACHE_ENV]) / P.CACHE_FILE


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path / "precision-cache"))
    return tmp_path / "precision-cache" / P.CACHE_FILE


def inject_speedup(speedup: float, n_embd: int, vocab_size: int, rows: int) -> None:
    """What a previous measurement on this machine would have left in the cache."""
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({P._cache_key(n_embd, vocab_size, rows): {"bf16_speedup": speedup}}))


# =========================================================================== the choice

def test_auto_is_fp32_on_a_cpu_without_native_bf16(fresh_cache, monkeypatch):
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "0")
    p = P.resolve_precision("auto", CPU, **QS_SHAPE)
    assert p.name == "fp32" and p.dtype is None and not p.use_scaler
    assert "no native bf16" in p.reason and p.bf16_speedup is None
    assert not fresh_cache.exists()                      # nothing measured: bf16 would be emulated


def test_auto_with_native_bf16_follows_the_real_benchmark_and_caches_it(fresh_cache, monkeypatch):
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "1")
    t = time.perf_counter()
    p = P.resolve_precision("auto", CPU, **QS_SHAPE)
    seconds = time.perf_counter() - t
    assert seconds < 1.5, f"the micro-benchmark took {seconds:.2f}s"
    assert p.bf16_speedup is not None and p.bf16_speedup > 0
    assert p.name == ("bf16" if p.bf16_speedup >= P.BF16_MIN_SPEEDUP else "fp32")
    assert "measured" in p.reason and "cached" not in p.reason
    cached = json.loads(fresh_cache.read_text())
    assert list(cached.values())[0]["bf16_speedup"] == p.bf16_speedup
    again = P.resolve_precision("auto", CPU, **QS_SHAPE)      # per machine: measured once
    assert again.name == p.name and again.bf16_speedup == p.bf16_speedup and "(cached)" in again.reason


def test_auto_picks_bf16_when_measured_faster_and_fp32_when_slower(fresh_cache, monkeypatch):
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "1")
    inject_speedup(2.0, **QS_SHAPE)
    p = P.resolve_precision("auto", CPU, **QS_SHAPE)
    assert p.name == "bf16" and p.dtype == torch.bfloat16 and p.bf16_speedup == 2.0
    inject_speedup(0.9, **QS_SHAPE)
    p = P.resolve_precision("auto", CPU, **QS_SHAPE)
    assert p.name == "fp32" and "below" in p.reason


def test_a_damaged_cache_is_measured_again(fresh_cache, monkeypatch):
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "1")
    fresh_cache.parent.mkdir(parents=True)
    fresh_cache.write_text("{not json")
    p = P.resolve_precision("auto", CPU, n_embd=64, vocab_size=512, rows=64)
    assert p.bf16_speedup is not None and json.loads(fresh_cache.read_text())


def test_decoding_a_few_rows_is_measured_without_native_bf16(fresh_cache, monkeypatch, caplog):
    """Products of up to ATEN_BF16_ROWS rows from bf16 weights need no native bf16 (ATen computes
    them in float32): generation at batch 1 to 4 measures them and picks bf16 weights where they
    are faster; larger batches, evaluation and training stay fp32 unmeasured, and an explicit bf16
    at batch 1 runs without the emulation warning."""
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "0")
    one_row = dict(n_embd=64, vocab_size=512, rows=1, inference_layers=2)
    p = P.resolve_precision("auto", CPU, **one_row)
    assert p.bf16_speedup is not None and p.bf16_speedup > 0 and "no native bf16" in p.reason
    assert p.name == ("bf16" if p.bf16_speedup >= P.BF16_MIN_SPEEDUP else "fp32")
    assert list(json.loads(fresh_cache.read_text())) == [P._cache_key(**one_row)]
    few = P.resolve_precision("auto", CPU, **{**one_row, "rows": P.ATEN_BF16_ROWS})
    assert few.bf16_speedup is not None and f"products of {P.ATEN_BF16_ROWS} rows" in few.reason
    for rows in (P.ATEN_BF16_ROWS + 1, 8):                 # more rows: bf16 products would be emulated
        batched = P.resolve_precision("auto", CPU, **{**one_row, "rows": rows})
        assert batched.name == "fp32" and batched.bf16_speedup is None
    assert len(json.loads(fresh_cache.read_text())) == 2
    cache = {P._cache_key(**one_row): {"bf16_speedup": 2.0}}
    fresh_cache.write_text(json.dumps(cache))
    p = P.resolve_precision("auto", CPU, **one_row)
    assert p.name == "bf16" and p.dtype == torch.bfloat16 and p.bf16_speedup == 2.0
    with caplog.at_level("WARNING"):
        assert P.resolve_precision("bf16", CPU, **one_row).name == "bf16"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_few_rows_inference_benchmark_measures_the_product_decoding_runs(monkeypatch):
    """At one row, and without native bf16 up to ATEN_BF16_ROWS rows, the bf16 side of the
    inference benchmark is ATen's product with oneDNN off (inference.FrozenLinear's), not
    autocast's F.linear."""
    import torch.nn.functional as F
    seen = []
    real_mm, real_linear = torch.mm, F.linear
    monkeypatch.setattr(torch, "mm", lambda a, b: seen.append(("mm", a.dtype, b.dtype,
                                                               torch._C._get_mkldnn_enabled())) or real_mm(a, b))
    monkeypatch.setattr(F, "linear", lambda x, w, *a: seen.append(("linear", x.dtype, w.dtype)) or real_linear(x, w, *a))
    P.measure_bf16_speedup(64, 512, rows=1, reps=1, inference_layers=2)
    assert ("mm", torch.bfloat16, torch.bfloat16, False) in seen
    assert {s for s in seen if s[0] == "linear"} == {("linear", torch.float32, torch.float32)}
    for native, rows, aten in (("0", P.ATEN_BF16_ROWS, True), ("0", P.ATEN_BF16_ROWS + 1, False), ("1", 2, False)):
        monkeypatch.setenv(P.NATIVE_BF16_ENV, native)
        seen.clear()
        P.measure_bf16_speedup(64, 512, rows=rows, reps=1, inference_layers=2)   # else autocast, as before
        assert bool([s for s in seen if s[0] == "mm"]) == aten, (native, rows)
        assert (("linear", torch.float32, torch.bfloat16) in seen) != aten, (native, rows)


def test_explicit_bf16_without_native_support_runs_with_one_warning(monkeypatch):
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "0")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    log.addHandler(handler)
    try:
        p = P.resolve_precision("bf16", CPU, **QS_SHAPE)
    finally:
        log.removeHandler(handler)
    assert p.name == "bf16"
    assert len(records) == 1 and "slower than fp32" in records[0].getMessage()
    assert P.resolve_precision("fp32", CPU, **QS_SHAPE).name == "fp32"


def test_amp_aliases():
    assert P.to_precision_arg(None, None) == "auto"
    assert P.to_precision_arg("fp16", None) == "fp16"
    assert P.to_precision_arg(None, True) == P.AMP
    assert P.to_precision_arg(None, False) == "fp32"
    assert P.resolve_precision(P.AMP, CPU, **QS_SHAPE).name == "bf16"      # --amp on CPU: bf16, as before
    with pytest.raises(UserError):
        P.resolve_precision("int4", CPU, **QS_SHAPE)


def test_cli_refuses_precision_with_amp():
    proc = run_cli("evaluate", "--tokenizer", "t.json", "--ckpt", "c.pt", "--test-file", "x.txt",
                   "--precision", "bf16", "--no-amp")
    assert_user_error(proc)
    assert "--no-amp" in proc.stderr


def test_cpu_flags_are_read():
    model, flags = P._cpu_flags()
    assert model
    assert P.matmul_shapes(256, 8000)[-1] == (256, 8000)
    assert P.benchmark_rows(640, 32000, 8192) >= 256


# =========================================================================== the stages

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for a few steps, its tokenizer and a test file."""
    d = tmp_path_factory.mktemp("prec")
    docs = [x.strip() for x in corpus_slice("wiki_es.txt", n_chars=40_000).split("<|doc|>\n")[:-1] if x.strip()]
    corpus, test = d / "corpus.txt", d / "test.txt"
    corpus.write_text("".join(f"{x}\n<|doc|>\n" for x in docs[:-5]), encoding="utf-8")
    test.write_text("".join(f"{x}\n<|doc|>\n" for x in docs[-5:]), encoding="utf-8")
    tok = d / "tok.json"
    tokenizer.train_tokenizer([corpus], vocab_size=400, out_path=tok, quiet=True)
    return {"dir": d, "corpus": corpus, "test": test, "tok": tok}


def train_argv(t, outdir, *extra):
    return ["train", "--tokenizer", str(t["tok"]), "--corpus", str(t["corpus"]), "--outdir", str(outdir),
            "--config", "custom", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
            "--batch-size", "4", "--max-steps", "3", "--eval-every", "3", "--eval-batches", "1", "--quiet", *extra]


def test_train_records_the_choice_in_config_json(trained, fresh_cache, monkeypatch):
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "0")
    assert main.main(train_argv(trained, trained["dir"] / "run_fp32")) == 0
    cfg = json.loads((trained["dir"] / "run_fp32" / "config.json").read_text())
    assert cfg["precision"]["requested"] == "auto" and cfg["precision"]["chosen"] == "fp32"
    assert "no native bf16" in cfg["precision"]["reason"]

    monkeypatch.setenv(P.NATIVE_BF16_ENV, "1")
    inject_speedup(1.8, n_embd=32, vocab_size=400, rows=4 * 32)
    assert main.main(train_argv(trained, trained["dir"] / "run_bf16")) == 0
    cfg = json.loads((trained["dir"] / "run_bf16" / "config.json").read_text())
    assert cfg["precision"] == {"requested": "auto", "chosen": "bf16", "bf16_speedup": 1.8,
                                "reason": cfg["precision"]["reason"]}
    assert "1.80x" in cfg["precision"]["reason"]

    assert main.main(train_argv(trained, trained["dir"] / "run_amp", "--amp")) == 0     # the alias
    cfg = json.loads((trained["dir"] / "run_amp" / "config.json").read_text())
    assert cfg["precision"]["requested"] == "amp" and cfg["precision"]["chosen"] == "bf16"


@pytest.fixture(scope="module")
def ckpt(trained):
    assert main.main(train_argv(trained, trained["dir"] / "run_eval", "--precision", "fp32")) == 0
    return str(trained["dir"] / "run_eval" / "ckpt_best.pt")


def evaluate_json(trained, ckpt, prec, capsys) -> dict:
    capsys.readouterr()
    assert main.main(["evaluate", "--tokenizer", str(trained["tok"]), "--ckpt", ckpt, "--test-file",
                      str(trained["test"]), "--precision", prec, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_and_generate_auto_equal_fp32_where_fp32_is_chosen(trained, ckpt, fresh_cache, monkeypatch, capsys):
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "0")
    fresh_cache.parent.mkdir(parents=True)                              # batch-1 decoding measured slower
    fresh_cache.write_text(json.dumps({P._cache_key(32, 400, 1, inference_layers=1): {"bf16_speedup": 0.5}}))
    results = {}
    for prec in ("auto", "fp32"):
        ev = evaluate_json(trained, ckpt, prec, capsys)
        out = trained["dir"] / f"gen_{prec}.jsonl"
        assert main.main(["generate", "--tokenizer", str(trained["tok"]), "--ckpt", ckpt, "--prompt",
                          "La historia de", "--temperature", "0", "--max-tokens", "20", "--precision", prec,
                          "--output", str(out), "--quiet"]) == 0
        results[prec] = (ev, json.loads(out.read_text(encoding="utf-8")))
    (ev_auto, gen_auto), (ev_fp32, gen_fp32) = results["auto"], results["fp32"]
    assert ev_auto["precision"]["chosen"] == "fp32" and ev_auto["precision"]["requested"] == "auto"
    assert ev_auto["perplexity"] == ev_fp32["perplexity"] and ev_auto["loss"] == ev_fp32["loss"]
    assert gen_auto["token_ids"] == gen_fp32["token_ids"] and len(gen_auto["token_ids"]) > 0


def test_evaluate_and_generate_run_in_bf16_when_asked(trained, ckpt, monkeypatch, capsys):
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "1")                 # no warning noise; bf16 runs anywhere
    fp32 = evaluate_json(trained, ckpt, "fp32", capsys)["loss"]
    bf16 = evaluate_json(trained, ckpt, "bf16", capsys)
    assert bf16["precision"]["chosen"] == "bf16"
    assert bf16["loss"] != fp32 and bf16["loss"] == pytest.approx(fp32, rel=5e-2)
    assert main.main(["generate", "--tokenizer", str(trained["tok"]), "--ckpt", ckpt, "--prompt", "El río",
                      "--max-tokens", "10", "--seed", "1", "--precision", "bf16", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("El río")


# =========================================================================== inference in bf16

def test_kernels_held_below_the_cpu_are_measured_apart(monkeypatch):
    """ONEDNN_MAX_CPU_ISA (and ATEN_CPU_CAPABILITY, read by torch at start-up) change which
    kernels run: a measurement made with them is not the CPU's own, and keys apart."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    own = P._cache_key(32, 400, 1, inference_layers=2)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    held = P._cache_key(32, 400, 1, inference_layers=2)
    assert own != held and "/AVX2|" in held


def test_inference_is_measured_and_cached_apart_from_training(fresh_cache, monkeypatch):
    training = P._cache_key(32, 400, 4)
    inference = P._cache_key(32, 400, 4, inference_layers=2)
    assert training != inference and inference.endswith("inference 2 layers")
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "1")
    inject_speedup(0.5, n_embd=32, vocab_size=400, rows=4)     # training measured bf16 slower ...
    assert P.resolve_precision("auto", CPU, n_embd=32, vocab_size=400, rows=4).name == "fp32"
    p = P.resolve_precision("auto", CPU, n_embd=32, vocab_size=400, rows=4, inference_layers=2)
    cache = json.loads(fresh_cache.read_text())                # ... inference is measured on its own
    assert set(cache) == {training, inference} and cache[inference]["bf16_speedup"] > 0
    assert p.bf16_speedup == pytest.approx(cache[inference]["bf16_speedup"], abs=1e-3)


def tiny_model(n_embd=64, bias=True, tie_embeddings=True):
    from model import GPT, ModelConfig
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_embd=n_embd, bias=bias,
                           tie_embeddings=tie_embeddings)).eval()


@pytest.mark.parametrize("quantize,tie", [(None, True), ("int8", True), ("int8", False)])
def test_cpu_inference_is_weight_only_and_computes_the_same_function(quantize, tie):
    """bf16 (or int8) matmul weights, a separate output head (a copy of the tied embedding, or the
    untied head), float32 activations and KV cache; logits within a few percent of float32, and
    the same greedy tokens for most positions."""
    model = tiny_model(tie_embeddings=tie)
    idx = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        ref = model(idx)[0]
        context = inference.prepare(model, P.Precision("bf16", "cpu", "bf16"), quantize, weight_only=True)
        with context():
            got = model(idx)[0]
            model.setup_cache(2, 32)
    frozen = [m for m in model.modules() if isinstance(m, inference.FrozenLinear)]
    assert len(frozen) == 2 * 4 + 1 and not any(isinstance(m, torch.nn.Linear) for m in model.blocks.modules())
    assert {m.kind for m in frozen} == {quantize or "bf16"}
    assert model.tok_emb.weight.dtype == torch.float32 and model.lm_head.weight is not model.tok_emb.weight
    assert model.blocks[0].attn.kv_cache.k.dtype == torch.float32 and got.dtype == torch.float32
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_frozen_linear_int8_kernel_and_dequantized_path_agree():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96)
    q = inference.FrozenLinear(layer.weight, layer.bias, "int8")
    assert q.qweight.dtype == torch.int8 and q.scales.shape == (96,)
    x = torch.randn(3, 40, 64)
    with torch.no_grad():
        ref = layer(x)
        many = q(x)                                            # 120 rows: dequantized bf16 matmul
        few = torch.cat([q(x[:, i:i + 1]) for i in range(40)], dim=1)   # 3 rows: the int8 kernel
    assert many.dtype == few.dtype == torch.float32
    assert (many - ref).norm() < 0.02 * ref.norm() and (few - ref).norm() < 0.02 * ref.norm()
    assert (few - many).norm() < 0.01 * ref.norm()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert q(x).dtype == torch.bfloat16                  # under autocast, as nn.Linear
    odd = inference.FrozenLinear(torch.randn(8, 24), None, "int8")   # in_features the kernel cannot take
    assert odd.kind == "bf16" and torch.isfinite(odd(torch.randn(1, 24))).all()


def test_frozen_linear_multiplies_many_rows_by_a_weight_packed_once(monkeypatch):
    """With native bf16, products of more than one row use the bf16 weight reordered once for
    oneDNN (where this CPU can reorder it; else F.linear): bf16 products of the same weight, float32
    out (bf16 under autocast); one row stays on ATen's kernel and packs nothing; a deepcopy of a
    used layer computes the same."""
    import copy
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "1")
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96)
    frozen = inference.FrozenLinear(layer.weight, layer.bias, "bf16")
    x = torch.randn(3, 40, 64)
    ref = (x.bfloat16().float() @ frozen.weight.float().t() + layer.bias).detach()
    with torch.no_grad():
        frozen(x[:1, :1])
        assert frozen._onednn is None                                    # one row: nothing packed
        got = frozen(x)
        try:
            torch.ops.mkldnn._reorder_linear_weight(frozen.weight)
            packs = True
        except (AttributeError, RuntimeError):                            # no AVX-512 / AVX-NE-CONVERT
            packs = False
        assert isinstance(frozen._onednn, torch.Tensor) if packs else frozen._onednn is False
        assert got.shape == (3, 40, 96) and got.dtype == torch.float32
        assert (got - ref).abs().max() < 0.02 * ref.abs().max()          # bf16 rounding of the output
        assert torch.equal(copy.deepcopy(frozen)(x), got)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = frozen(x)                  # packed: the bias inside oneDNN's product, rounded once
        assert under.dtype == torch.bfloat16
        assert (under.float() - ref).abs().max() < 0.02 * ref.abs().max()
        if packs:                         # the exact sum rounded once: within half a bf16 step
            assert ((under.float() - ref).abs() <= 2 ** -8 * ref.abs() + 1e-5).all()
        head = inference.FrozenLinear(torch.randn(1500, 1000), None, "bf16")  # PACKED_ONE_ROW values
        one = head(x[0, :1, :1].expand(1, 1000).contiguous())
        assert head._onednn is not None                 # tried for one row too (False: this CPU cannot)
        want = x[0, :1, :1].expand(1, 1000).bfloat16().float() @ head.weight.float().t()
        assert (one - want).abs().max() < 0.02 * want.abs().max()
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "0")
    assert not inference.FrozenLinear(torch.randn(1500, 1000), None, "bf16").packed_one_row


def test_without_native_bf16_a_few_rows_multiply_by_atens_bf16_product(monkeypatch):
    """Without native bf16, FrozenLinear multiplies up to ATEN_BF16_ROWS rows by ATen's bf16
    product (float32 arithmetic: no emulated bf16) and more rows in float32, each within bf16's
    rounding of the float32 product."""
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "0")
    layer = torch.nn.Linear(64, 96)
    frozen = inference.FrozenLinear(layer.weight, layer.bias, "bf16")
    calls, real = [], inference.aten_bf16_product
    monkeypatch.setattr(inference, "aten_bf16_product", lambda x, weight: calls.append(len(x)) or real(x, weight))
    x = torch.randn(P.ATEN_BF16_ROWS + 1, 64)
    with torch.no_grad():
        for rows in range(1, P.ATEN_BF16_ROWS + 2):
            got = frozen(x[:rows])
            want = x[:rows] @ frozen.weight.float().t() + layer.bias
            assert got.shape == (rows, 96) and got.dtype == torch.float32
            assert (got - want).abs().max() < 0.02 * want.abs().max(), rows
    assert calls == list(range(1, P.ATEN_BF16_ROWS + 1))


def test_quantize_int8_on_the_cli(trained, ckpt, monkeypatch, capsys):
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "1")
    fp32 = evaluate_json(trained, ckpt, "fp32", capsys)
    capsys.readouterr()
    assert main.main(["evaluate", "--tokenizer", str(trained["tok"]), "--ckpt", ckpt, "--test-file",
                      str(trained["test"]), "--quantize", "int8", "--json", "--quiet"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["quantize"] == "int8" and q["precision"]["chosen"] == "bf16"
    assert q["perplexity"] == pytest.approx(fp32["perplexity"], rel=0.02)
    out = trained["dir"] / "gen_int8.jsonl"
    assert main.main(["generate", "--tokenizer", str(trained["tok"]), "--ckpt", ckpt, "--prompt", "La historia de",
                      "--temperature", "0", "--max-tokens", "12", "--quantize", "int8", "--output", str(out),
                      "--quiet"]) == 0
    assert len(json.loads(out.read_text(encoding="utf-8"))["token_ids"]) > 0
    proc = run_cli("generate", "--tokenizer", trained["tok"], "--ckpt", ckpt, "--prompt", "El", "--quantize", "int8",
                   "--precision", "fp32")
    assert_user_error(proc)
    assert "--quantize int8" in proc.stderr and "--precision fp32" in proc.stderr


def test_generate_and_evaluate_pick_bf16_from_the_inference_measurement(trained, ckpt, fresh_cache, monkeypatch,
                                                                          capsys):
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "1")
    inject_speedup(0.5, n_embd=32, vocab_size=400, rows=16 * 32)          # the training-shaped key
    path = cache_file()
    cache = json.loads(path.read_text())
    for rows in (1, 16 * 32):                                             # generate batch 1, evaluate 16 x 32
        cache[P._cache_key(32, 400, rows, inference_layers=1)] = {"bf16_speedup": 2.0}
    path.write_text(json.dumps(cache))
    ev = evaluate_json(trained, ckpt, "auto", capsys)
    assert ev["precision"]["chosen"] == "bf16" and ev["precision"]["bf16_speedup"] == 2.0
    fp32 = evaluate_json(trained, ckpt, "fp32", capsys)
    assert ev["perplexity"] == pytest.approx(fp32["perplexity"], rel=0.02)
    assert main.main(["generate", "--tokenizer", str(trained["tok"]), "--ckpt", ckpt, "--prompt", "El río",
                      "--max-tokens", "10", "--temperature", "0", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("El río")


def test_the_log_line_says_how_inference_computes(caplog):
    bf16, fp32 = P.Precision("bf16", "cpu", "bf16", reason="why"), P.Precision("fp32", "cpu", "fp32")
    with caplog.at_level(logging.INFO, logger="mini_llm"):
        inference.log_setup(bf16, None, "generation", weight_only=True)
        inference.log_setup(bf16, "int8", "evaluation", weight_only=False)
        inference.log_setup(fp32, None, "evaluation", weight_only=False)
    assert [r.getMessage() for r in caplog.records] == [
        "generation precision: bf16 weights, float32 activations, attention and KV cache (why)",
        "evaluation precision: int8 weights (bf16 matmuls), bf16 autocast (why)",
        "evaluation precision: fp32"]


def test_int8_without_native_bf16_computes_in_float32(trained, ckpt, monkeypatch, capsys, caplog):
    """--quantize int8 on a CPU without native bf16: no bf16 autocast and no warning (an explicit
    --precision bf16 still warns that it is 10-30x slower); products of many rows in float32 from
    the dequantized weight, one-row products by the int8 kernel; evaluate gives fp32's perplexity."""
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "0")
    shape = dict(n_embd=32, vocab_size=400, rows=1, inference_layers=1)
    with caplog.at_level("WARNING"):
        p = inference.resolve_precision_for("auto", torch.device("cpu"), "int8", **shape)
    assert p.name == "fp32" and p.dtype is None
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    asked = inference.resolve_precision_for("fp32", torch.device("cpu"), "int8", **shape)   # the same, asked for
    assert asked.name == "fp32" and asked.reason == p.reason
    with pytest.raises(UserError, match="no fp16 kernel"):
        inference.resolve_precision_for("fp16", torch.device("cpu"), "int8", **shape)
    with caplog.at_level("WARNING"):
        inference.resolve_precision_for("bf16", torch.device("cpu"), None, **{**shape, "rows": 8})
    assert any("10-30x" in r.getMessage() for r in caplog.records)

    torch.manual_seed(0)
    weight, x = torch.randn(96, 64), torch.randn(40, 64)
    monkeypatch.setattr(P, "cpu_int8_dot_product", lambda: False)         # no VNNI: float32 products
    emulated = inference.FrozenLinear(weight, None, "int8")
    dequantized = emulated.weight.float()
    with torch.no_grad():
        assert torch.equal(emulated(x), x @ dequantized.t())                 # float32, not through bf16
        monkeypatch.setenv(P.NATIVE_BF16_ENV, "1")
        native = inference.FrozenLinear(weight, None, "int8")
        assert torch.equal(native(x), (x.bfloat16() @ native.weight.t()).float())
        assert (native(x) - emulated(x)).norm() < 0.01 * emulated(x).norm()
        one = torch.ops.aten._weight_int8pack_mm(x[:1].bfloat16(), emulated.qweight, emulated.scales).float()
        assert torch.equal(emulated(x[:1]), one)                            # the int8 kernel for one row
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "0")
    monkeypatch.undo()                                                    # the CPU's own VNNI, if any
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "0")

    fp32 = evaluate_json(trained, ckpt, "fp32", capsys)
    assert main.main(["evaluate", "--tokenizer", str(trained["tok"]), "--ckpt", ckpt, "--test-file",
                      str(trained["test"]), "--quantize", "int8", "--json", "--quiet"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["quantize"] == "int8" and q["precision"]["chosen"] == "fp32"
    assert q["perplexity"] == pytest.approx(fp32["perplexity"], rel=0.01)
    assert q["perplexity"] != fp32["perplexity"]                             # the int8 weights were used


@pytest.mark.skipif(not inference.int8_products_available(), reason="this torch has no quantized::linear_dynamic")
def test_int8_products_of_many_rows_where_the_cpu_has_vnni(monkeypatch):
    """Without native bf16 but with int8 dot products, products of more than INT8_KERNEL_ROWS rows
    are int8 ones (the rows quantized per product, the bias added): within about 1% of the float32
    product of the same int8 weights, float32 out, and the one-row kernel unchanged."""
    monkeypatch.setenv(P.NATIVE_BF16_ENV, "0")
    monkeypatch.setattr(P, "cpu_int8_dot_product", lambda: True)
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96)
    q = inference.FrozenLinear(layer.weight, layer.bias, "int8")
    assert q.int8_rows
    x = torch.randn(5, 40, 64)
    with torch.no_grad():
        ref = x @ q.weight.float().t() + layer.bias                         # the same int8 weights, in float32
        got = q(x)
        assert got.shape == (5, 40, 96) and got.dtype == torch.float32
        assert 0 < (got - ref).norm() < 0.02 * ref.norm()                   # int8 rows: close, not float32's
        one = torch.ops.aten._weight_int8pack_mm(x[0, :1].bfloat16(), q.qweight, q.scales).float() + layer.bias
        assert torch.allclose(q(x[0, :1]), one)
        monkeypatch.setattr(P, "cpu_int8_dot_product", lambda: False)
        plain = inference.FrozenLinear(layer.weight, layer.bias, "int8")
        assert not plain.int8_rows and torch.allclose(plain(x), ref, atol=1e-5)
