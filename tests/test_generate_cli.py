"""`python main.py generate` as a user runs it: --prompt, --stream, --prompt-file with batches and
JSON Lines / plain text output, and bad input (exit 2, one error line)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import generation as G
from common import file_sha256
from conftest import ROOT, assert_user_error
from checkpoint import load_model
from tokenizer import load_identity
from test_generation import load_tok, tokenizer_json, trained_state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tokenizer.json and a checkpoint in the INTERFACES format (the trained tiny model)."""
    d = tmp_path_factory.mktemp("gen_cli")
    tok_path = d / "tokenizer.json"
    tok_path.write_text(tokenizer_json(), encoding="utf-8")
    state, cfg = trained_state()
    ckpt = d / "ckpt_best.pt"
    torch.save({"model": state, "model_config": cfg, "step": 200,
                "meta": {"tokenizer_hash": file_sha256(tok_path), "vocab_size": cfg["vocab_size"],
                         "corpus_hash": "0" * 64, "step": 200}}, ckpt)
    return d, tok_path, ckpt


def run(files, *args, **kw):
    """Run generate; stdout as bytes (to compare streams byte for byte), stderr as text."""
    _, tok, ckpt = files
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "generate", "--tokenizer", str(tok),
                           "--ckpt", str(ckpt), "--device", "cpu", *map(str, args)],
                          cwd=ROOT, capture_output=True, timeout=300, env=env, **kw)
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    return proc


def expected(files, prompts, **kw):
    _, tok_path, ckpt = files
    model, _ = load_model(ckpt, "cpu", load_identity(tok_path))
    return G.generate_texts(model, load_tok(), prompts, **kw)


def test_prompt_greedy_prints_prompt_and_continuation(files):
    prompt = "La fotosíntesis es un proceso"
    proc = run(files, "--prompt", prompt, "--max-tokens", 30, "--temperature", 0)
    assert proc.returncode == 0, proc.stderr
    want = expected(files, [prompt], max_new_tokens=30, cfg=G.SamplingConfig(temperature=0))[0]
    assert proc.stdout.decode("utf-8") == prompt + want.text + "\n"
    assert "tokens/s" in proc.stderr
    quiet = run(files, "--prompt", prompt, "--max-tokens", 30, "--temperature", 0, "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == proc.stdout


def test_stream_output_equals_non_stream_byte_for_byte(files, tmp_path):
    prompt = "El año pasado, en España"
    cfg = G.SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    # the first seed whose sample holds multi-byte characters (the numerics, and so the sample of
    # a seed, differ between CPUs)
    for seed in range(50):
        want = expected(files, [prompt], max_new_tokens=80, cfg=cfg,
                        generator=torch.Generator().manual_seed(seed))[0]
        if any(ord(c) > 127 for c in want.text):
            break
    assert any(ord(c) > 127 for c in want.text), want.text
    sampling = ["--temperature", 1.0, "--top-k", 0, "--top-p", 1.0, "--seed", seed, "--max-tokens", 80]
    streamed = run(files, "--prompt", prompt, *sampling, "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == (prompt + want.text + "\n").encode("utf-8")  # what the plain run prints
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("La música\n\nEl niño comió\n", encoding="utf-8")
    many = ["--prompt-file", prompts, "--num-samples", 2]
    plain, streamed = run(files, *many, *sampling), run(files, *many, *sampling, "--stream")
    assert plain.returncode == 0 and streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == plain.stdout
    text = plain.stdout.decode("utf-8")
    assert text.count("--- output ---") == 4 and "=== prompt 2/2, sample 2/2 ===\nEl niño comió\n" in text
    assert any(c in text.split("--- output ---", 1)[1] for c in "áéíóúñ")


def test_prompt_file_batched_to_jsonl_equals_single_runs(files, tmp_path):
    prompts = ["La", "El río Amazonas es el más caudaloso", "", "Durante el Imperio Romano, la ciudad"]
    pf = tmp_path / "prompts.txt"
    pf.write_text("\n".join(prompts) + "\n\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = run(files, "--prompt-file", pf, "--output", out, "--batch-generate", "--batch-size", 2,
               "--temperature", 0, "--max-tokens", 25, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"" and proc.stderr == ""
    records = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
    real = [p for p in prompts if p]
    assert [r["prompt"] for r in records] == real
    want = expected(files, real, max_new_tokens=25, cfg=G.SamplingConfig(temperature=0))  # one at a time
    for r, w in zip(records, want):
        assert {"prompt", "text", "tokens", "finish_reason"} <= set(r)
        assert r["finish_reason"] in ("length", "stop", "end_of_document")
        assert (r["text"], r["tokens"], r["finish_reason"]) == (w.text, w.tokens, w.finish_reason)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_prompt_separator_and_plain_text_output_with_stop(files, tmp_path):
    pf = tmp_path / "prompts.txt"
    pf.write_text("Primera línea\nsegunda línea\n###\n\nOtro texto\n###\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    proc = run(files, "--prompt-file", pf, "--prompt-separator", "###", "--output", out,
               "--temperature", 0, "--max-tokens", 20, "--stop", "zzz", "fe")
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")
    assert text.startswith("=== prompt 1/2 ===\nPrimera línea\nsegunda línea\n--- output ---\n")
    assert "=== prompt 2/2 ===\nOtro texto\n--- output ---\n" in text
    want = expected(files, ["Primera línea\nsegunda línea", "Otro texto"], max_new_tokens=20,
                    cfg=G.SamplingConfig(temperature=0), stop_strings=["zzz", "fe"])
    assert all(w.text in text and "fe" not in w.text for w in want)


@pytest.fixture(scope="module")
def bad_files(files):
    d, tok, ckpt = files
    truncated = d / "truncated.pt"
    data = ckpt.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    other_tok = d / "other_tokenizer.json"
    other = json.loads(tok.read_text(encoding="utf-8"))
    other["model"]["merges"] = other["model"]["merges"][:-1]  # a different tokenizer, same specials
    other_tok.write_text(json.dumps(other), encoding="utf-8")
    blank = d / "blank_prompts.txt"
    blank.write_text("\n  \n\n", encoding="utf-8")
    prompts = d / "prompts.txt"
    prompts.write_text("Hola\n", encoding="utf-8")
    return {"truncated": truncated, "other_tok": other_tok, "blank": blank, "missing": d / "nope.pt",
            "prompts": prompts}


@pytest.mark.parametrize("case", ["temperature", "missing_ckpt", "truncated_ckpt", "tokenizer_mismatch",
                                  "blank_prompt_file", "output_is_input"])
def test_bad_input_exits_2_with_one_error_line(files, bad_files, case):
    base = ["--prompt", "Hola", "--max-tokens", 5]
    args = {
        "temperature": base + ["--temperature", -1],
        "missing_ckpt": base + ["--ckpt", bad_files["missing"]],
        "truncated_ckpt": base + ["--ckpt", bad_files["truncated"]],
        "tokenizer_mismatch": base + ["--tokenizer", bad_files["other_tok"]],
        "blank_prompt_file": ["--prompt-file", bad_files["blank"]],
        "output_is_input": ["--prompt-file", bad_files["prompts"], "--output", bad_files["prompts"]],
    }[case]
    proc = run(files, *args)
    assert_user_error(proc)
    assert proc.stdout == b""
    if case == "output_is_input":
        assert bad_files["prompts"].read_text(encoding="utf-8") == "Hola\n"


@pytest.mark.parametrize("args", [
    ["--top-p", 1.5], ["--top-p", 0], ["--min-p", 1.0], ["--repetition-penalty", 0], ["--temperature", "inf"],
    ["--prompt-separator", "###"], ["--stream", "--batch-generate"], ["--stop", ""], ["--seed", -1]])
def test_more_bad_input_in_process(files, args, capsys):
    """The same path as above without a new interpreter per case (main.main is what main.py runs)."""
    import main
    from common import log
    _, tok, ckpt = files
    handlers, level = log.handlers[:], log.level
    try:
        code = main.main(["generate", "--tokenizer", str(tok), "--ckpt", str(ckpt), "--device", "cpu",
                          "--prompt", "Hola", "--max-tokens", "5", *map(str, args)])
    finally:  # main() points the project logger at this test's captured stderr: put it back
        log.handlers[:], log.level = handlers, level
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert len([l for l in captured.err.splitlines() if l.startswith("error:")]) == 1, captured.err
    assert "Traceback" not in captured.err


def test_compile_gives_the_same_text_and_a_failed_compile_is_one_line(files, tmp_path):
    """--compile prints what the eager run prints; without a working C++ compiler (inductor's CPU
    backend) it is one error line and exit 2, not a traceback."""
    prompt = "Durante el Imperio Romano"
    args = ("--prompt", prompt, "--max-tokens", 40, "--temperature", 0)
    env = dict(os.environ, PYTHONIOENCODING="utf-8", TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    _, tok, ckpt = files
    base = [sys.executable, str(ROOT / "main.py"), "generate", "--tokenizer", str(tok), "--ckpt", str(ckpt),
            "--device", "cpu", *map(str, args), "--compile"]
    proc = subprocess.run(base, cwd=ROOT, capture_output=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    want = expected(files, [prompt], max_new_tokens=40, cfg=G.SamplingConfig(temperature=0))[0]
    assert proc.stdout.decode("utf-8") == prompt + want.text + "\n"
    assert "compiled" in proc.stderr.decode()
    broken = subprocess.run(base, cwd=ROOT, capture_output=True, timeout=600,
                            env={**env, "CXX": str(tmp_path / "no-such-compiler"),
                                 "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-2")})
    broken.stderr = broken.stderr.decode("utf-8", "replace")
    assert_user_error(broken)
    assert "--compile" in broken.stderr and "run without --compile" in broken.stderr
