"""bench/gpu.py on a CPU: the FLOPs per token against a hand count, the GPU peak table, and the
whole benchmark path (`--device cpu --tiny --no-compile`) reporting every row with positive
numbers. The GPU run itself is bench/gpu.sh's."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, bench_module
from config import ModelConfig
from model import GPT

GPU_BENCH = ROOT / "bench" / "gpu.py"


def test_flops_per_token_is_6n_plus_12lct_by_hand():
    # qwen3, 2 layers, width 64, 4 heads (head dim 16), SwiGLU width round(8 * 64 / 3) = 171,
    # vocabulary 512, block 64, no biases:
    #   embedding (tied with the output head, counted once)  512 * 64           =  32,768
    #   per layer: 2 RMSNorm scales 2 * 64 = 128, qkv 3 * 64 * 64 = 12,288, output 64 * 64 = 4,096,
    #              MLP 3 * 64 * 171 = 32,832, QK-norm scales 2 * 16 = 32        =  49,376
    #   2 layers + the final norm's 64                                          =  98,816
    #   N = 131,584; 6 N = 789,504; 12 L C T = 12 * 2 * 64 * 64 = 98,304
    cfg = ModelConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64, family="qwen3", sep_token_id=0)
    assert GPT(cfg).num_parameters() == 131_584
    assert bench_module("gpu").flops_per_token(cfg) == 789_504 + 98_304


def test_peak_table_lookup():
    gpu = bench_module("gpu")
    assert gpu.lookup_peak("NVIDIA H200")[0] == 989e12
    assert gpu.lookup_peak("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert gpu.lookup_peak("NVIDIA H100 PCIe")[0] == 756e12
    assert gpu.lookup_peak("NVIDIA A100-SXM4-80GB")[0] == 312e12
    assert gpu.lookup_peak("NVIDIA L4")[0] == 121e12
    assert gpu.lookup_peak("NVIDIA L40S")[0] == 362e12
    assert gpu.lookup_peak("NVIDIA A10G")[0] == 125e12 and "approximate" in gpu.lookup_peak("NVIDIA A10G")[1]
    peak, note = gpu.lookup_peak("Some Future GPU 9000")
    assert peak is None and "Some Future GPU 9000" in note


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    saved = tmp_path_factory.mktemp("gpu_bench") / "gpu.json"
    proc = subprocess.run([sys.executable, str(GPU_BENCH), "--device", "cpu", "--tiny", "--no-compile", "--json",
                           "--save", str(saved)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MINI_LLM_NATIVE_BF16": "0"})  # fp32 on any CPU
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)                          # exactly one JSON object on stdout
    assert json.loads(saved.read_text(encoding="utf-8")) == rep
    return rep


def test_tiny_cpu_run_reports_every_row_with_positive_numbers(tiny_report):
    gpu = bench_module("gpu")
    rows = tiny_report["rows"]
    assert {r["name"] for r in rows} == {"train tiny eager flash-off", "train tiny eager flash-on",
                                         "memory tiny checkpointing b2x64",
                                         "generate tiny b1 eager", "generate tiny b4 eager"}
    for r in rows:
        assert set(r) == set(gpu.ROW_KEYS), r
        assert r["status"] == "ok" and r["error"] is None, r
        assert r["tokens_per_second"] > 0 and r["seconds"] > 0 and r["tokens"] > 0, r
        assert r["mfu"] is None and r["peak_memory_bytes"] is None, r          # a CPU: no peak, no CUDA memory
        assert r["precision"] == "fp32" and r["params"] > 0, r
    train = [r for r in rows if r["kind"] in ("train", "memory")]
    for r in train:
        assert r["flops_per_token"] > 0 and r["document_kernel"] == "sdpa" and r["loss"] > 0, r
        assert (r["batch_size"], r["block_size"], r["steps"]) == (2, 64, 2), r
    assert [r["gradient_checkpointing"] for r in train] == [False, False, True]
    for r in rows:
        if r["kind"] == "generate":
            assert r["new_tokens"] == 8 and r["tokens"] == r["batch_size"] * 8, r
    assert tiny_report["machine"]["peak_flops"] is None and tiny_report["targets"] == []


def test_show_prints_the_table_of_a_saved_result(tiny_report, tmp_path):
    saved = tmp_path / "gpu.json"
    saved.write_text(json.dumps(tiny_report), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(GPU_BENCH), "--show", str(saved)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "train tiny eager flash-off" in proc.stdout and "generate tiny b4 eager" in proc.stdout
