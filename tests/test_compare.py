"""bench/compare.py: the quick configuration reports every row with positive numbers, and the
transformers models it builds are the ones it claims (GPT-NeoX = our function, Llama = our size)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_user_error, bench_module

transformers = pytest.importorskip("transformers")  # test/benchmark dependency (requirements-dev.txt)

COMPARE = ROOT / "bench" / "compare.py"
SPECIAL = {"sep": 0, "eos": 1, "pad": 2}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = tmp_path_factory.mktemp("compare")
    proc = subprocess.run([sys.executable, str(COMPARE), "--quick", "--json", "--workdir", str(work)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_quick_run_reports_every_row_with_positive_numbers(report):
    rows = {r["id"]: r for r in report["rows"]}
    expected = {"train.fp32.ours", "train.fp32.ours_loop", "train.fp32.ours_end_to_end",
                "train.fp32.hf_loop_neox", "train.fp32.hf_loop_llama",
                "generate.b1.ours", "generate.b1.hf_neox", "generate.b8.ours", "generate.b8.hf_neox",
                "evaluate.ours", "evaluate.ours_int8", "evaluate.hf_neox"}
    if importlib.util.find_spec("accelerate") is not None:
        expected |= {"train.fp32.hf_trainer_neox", "train.fp32.hf_trainer_llama"}
    else:
        assert "accelerate" in report["notes"]["hf_trainer"]
    assert expected <= set(rows)
    for r in rows.values():
        assert r["tokens_per_second"] > 0 and r["rounds"] and all(v > 0 for v in r["rounds"]), r
    assert 0 < rows["train.fp32.ours"]["mfu"] < 1
    assert report["matmul_peak_gflops"] > 0


def test_quick_run_ratios_targets_and_machine(report):
    ratios = {x["id"]: x for x in report["ratios"]}
    for rid in ("train.fp32.mfu", "train.fp32.ours_over_loop_neox", "train.fp32.ours_over_loop_llama",
                "generate.b1.int8_over_hf", "generate.ours_b8_over_b1", "evaluate.fp32_over_hf",
                "evaluate.int8_over_hf"):
        assert ratios[rid]["value"] > 0 and ratios[rid]["target"] > 0
        assert isinstance(ratios[rid]["pass"], bool)
    assert ratios["generate.b1.fp32_over_hf"]["value"] > 0 and ratios["generate.b1.fp32_over_hf"]["target"] is None
    m = report["machine"]
    assert m["cpu"] and m["torch"] and m["transformers"] == transformers.__version__ and m["threads"] >= 1
    assert m["native_bf16"] is False                       # conftest reports the CPU without native bf16
    assert "bf16" in report["notes"] and not any(r["id"].startswith("train.bf16") for r in report["rows"])
    cfg = report["config"]
    assert abs(cfg["llama_params"] / cfg["params"] - 1) <= 0.02


def test_quick_run_checks_same_function_and_greedy_tokens(report):
    checks = report["checks"]
    assert checks["logits_max_abs_diff"] < 1e-4
    # ours against transformers; int8 against our fp32 (no bf16 side without native bf16; no
    # compiled side in --quick)
    assert set(checks["greedy"]) == {"b1", "b8", "b1.ours_int8_vs_fp32", "b8.ours_int8_vs_fp32"}
    assert report["config"]["generate_compile_seconds"] == {}
    evaluation = checks["evaluation"]                      # int8 evaluates (nearly) our fp32 function
    assert evaluation["loss_ours_int8"] == pytest.approx(evaluation["loss_ours"], rel=0.01)
    for key in checks["greedy"]:
        g = checks["greedy"][key]
        assert g["k"] == 20 and 0 <= g["rows_agreeing_first_k"] <= g["rows"]


def test_transformers_models_built_from_our_config_and_weights():
    """GPT-NeoX from our weights gives our logits (every weight moved off its init, so a
    mis-mapped tensor shows); the Llama model matches our parameter count within 2%, tied."""
    from model import GPT, ModelConfig
    compare = bench_module("compare")
    cfg = ModelConfig(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_embd=32, sep_token_id=0)
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if p.dim() == 1 and "ln" in name else 0.1 * torch.randn_like(p))
    hf = compare.hf_neox(ours, SPECIAL).eval()
    x = torch.randint(3, cfg.vocab_size, (2, 32))
    x[:, 0] = 0
    with torch.no_grad():
        want, _ = ours(x)
        got = hf(input_ids=x).logits
    assert (got - want).abs().max().item() < 1e-4
    for shape in (cfg, ModelConfig(vocab_size=8000, block_size=256, n_layer=6, n_head=8, n_embd=256)):
        llama = compare.hf_llama(shape, SPECIAL, seed=0)
        assert abs(compare.n_params(llama) / shape.num_parameters() - 1) <= 0.02
        assert llama.lm_head.weight.data_ptr() == llama.model.embed_tokens.weight.data_ptr()


def test_missing_corpus_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(COMPARE), "--quick", "--corpus", str(tmp_path / "none.txt"),
                           "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert_user_error(proc)
    assert "none.txt" in proc.stderr


def test_without_transformers_one_error_line(tmp_path):
    code = ("import runpy, sys; sys.modules['transformers'] = None; "   # makes `import transformers` fail
            f"sys.argv = ['compare.py', '--quick', '--workdir', {str(tmp_path)!r}]; "
            f"runpy.run_path({str(COMPARE)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert_user_error(proc)
    assert "needs transformers" in proc.stderr
