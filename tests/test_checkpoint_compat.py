"""A checkpoint written by an earlier version (tests/data/checkpoint_v1, format version 1)
still works everywhere a checkpoint is used: generate, evaluate, export, and resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import main
from checkpoint import CHECKPOINT_VERSION, TrainState

DATA = Path(__file__).resolve().parent / "data" / "checkpoint_v1"
TRAIN_FLAGS = ["--config", "custom", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
               "--batch-size", "4", "--eval-every", "2", "--eval-batches", "1", "--seed", "7", "--quiet",
               "--family", "neox", "--optimizer", "adamw"]   # what runs from before the qwen3 + Muon recipe used


@pytest.fixture
def old(tmp_path):
    for name in ("ckpt_last.pt", "tokenizer.json", "corpus.txt"):
        shutil.copy(DATA / name, tmp_path / name)
    return tmp_path


def test_the_fixture_is_a_version_1_checkpoint_at_step_4():
    ckpt = torch.load(DATA / "ckpt_last.pt", map_location="cpu", weights_only=True)
    assert ckpt["version"] == 1 and ckpt["step"] == 4 and "amp" in ckpt["train_config"]
    state = TrainState.from_checkpoint(ckpt)              # its loose fields, read into a TrainState
    assert (state.step, state.best_step, len(state.history)) == (4, 4, 2)
    assert state.n_windows == ckpt["data_position"]["n_windows"] > 0


def test_an_unknown_version_is_one_clear_line(tmp_path, capsys):
    ckpt = torch.load(DATA / "ckpt_last.pt", map_location="cpu", weights_only=True)
    ckpt["version"] = 99
    torch.save(ckpt, tmp_path / "future.pt")
    code = main.main(["generate", "--tokenizer", str(DATA / "tokenizer.json"), "--ckpt", str(tmp_path / "future.pt"),
                      "--prompt", "El", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "format version 99" in err and "upgrade mini-llm" in err and "Traceback" not in err


def test_generate_evaluate_export_load_it(old, capsys):
    ckpt, tok = str(old / "ckpt_last.pt"), str(old / "tokenizer.json")
    assert main.main(["generate", "--tokenizer", tok, "--ckpt", ckpt, "--prompt", "El pueblo", "--max-tokens", "5",
                      "--temperature", "0", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("El pueblo")
    assert main.main(["evaluate", "--tokenizer", tok, "--ckpt", ckpt, "--test-file", str(old / "corpus.txt"),
                      "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] > 1000 and 1 < result["perplexity"] < 300      # 4 steps: little learned
    assert main.main(["export", "--ckpt", ckpt, "--tokenizer", tok, "--out", str(old / "hf"), "--quiet"]) == 0
    assert (old / "hf" / "config.json").is_file()


def test_resume_continues_it(old):
    run = old / "run"
    run.mkdir()
    shutil.copy(old / "ckpt_last.pt", run / "ckpt_last.pt")
    argv = ["train", "--tokenizer", str(old / "tokenizer.json"), "--corpus", str(old / "corpus.txt"),
            "--outdir", str(run), *TRAIN_FLAGS, "--max-steps", "6", "--json"]
    assert main.main(argv) == 0
    after = torch.load(run / "ckpt_last.pt", map_location="cpu", weights_only=True)
    assert after["version"] == CHECKPOINT_VERSION and TrainState.from_checkpoint(after).step == 6
    history = json.loads((run / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 4, 6]                       # the old history goes on
