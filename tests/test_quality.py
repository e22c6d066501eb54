"""bench/quality.py: the data split keeps the held-out novels out of training, the peer is scored
exactly as transformers scores itself, and a quick run trains and evaluates both sides."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, bench_module

transformers = pytest.importorskip("transformers")  # test/benchmark dependency (requirements-dev.txt)

QUALITY = ROOT / "bench" / "quality.py"


def test_split_holds_out_the_last_documents_and_cuts_training_at_a_document(tmp_path):
    q = bench_module("quality")
    docs = [f"Título {i}\n¿Qué pasó en el año {1800 + i}? «Ñandú» " * (i + 3) + "\n" for i in range(12)]
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(d + "<|doc|>\n" for d in docs), encoding="utf-8")
    budget = sum(len(d.encode()) + 8 for d in docs[:5]) + 3
    train, held, info = q.split_corpus(corpus, budget, heldout_docs=3, heldout_doc_bytes=0)
    assert train.decode("utf-8") == "".join(d + "<|doc|>\n" for d in docs[:5])
    assert held.decode("utf-8") == "".join(d + "<|doc|>\n" for d in docs[-3:])
    assert (info["train_documents"], info["heldout_documents"]) == (5, 3)

    _, cut, _ = q.split_corpus(corpus, budget, heldout_docs=3, heldout_doc_bytes=100)
    pieces = cut.decode("utf-8").split("<|doc|>\n")[:-1]
    assert len(pieces) == 3
    for piece, full in zip(pieces, docs[-3:]):
        assert full.startswith(piece) and piece.endswith("\n") and len(piece.encode()) <= 100


def test_peer_scorer_gives_transformers_own_loss():
    """evaluate_tokens over the peer equals transformers' labels=input_ids loss on the same windows."""
    import evaluation
    q = bench_module("quality")
    a = q.parse_args(["--quick"])
    hf = q.peer_model(a, {"sep": 0, "eos": 1, "pad": 2}, 512).eval()
    T = a.block_size
    doc = np.random.default_rng(0).integers(3, 512, size=3 * T)      # one document: 3 windows + its end
    stream = np.concatenate([[0], doc, [0]]).astype(np.int64)
    doc_starts = np.array([0, len(stream) - 1], dtype=np.int64)
    scores = evaluation.score_documents(q.PeerScorer(hf, T), stream, doc_starts, stride=T, quiet=True)
    want = 0.0
    with torch.no_grad():
        for w in range(3):                                             # T + 1 tokens: T targets each
            x = torch.from_numpy(stream[w * T:(w + 1) * T + 1])[None]
            want += float(hf(input_ids=x, labels=x).loss) * T
        last = hf(input_ids=torch.from_numpy(stream[-T - 1:-1])[None]).logits[0, -1]   # the closing SEP
        want += float(torch.nn.functional.cross_entropy(last[None], torch.tensor([0])))
    assert scores["tokens"][0] == 3 * T + 1
    assert math.isclose(float(scores["loss_sum"][0]), want, rel_tol=1e-4)


def test_quick_run_trains_and_scores_both_sides_at_budget_a(tmp_path):
    proc = subprocess.run([sys.executable, str(QUALITY), "--quick", "--budget", "A", "--json", "--workdir",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)
    ours, peer = rep["results"]["ours.A"], rep["results"]["peer.A"]
    tokens = rep["budgets"]["A"]["tokens"]
    for r in (ours, peer):
        assert tokens <= r["train_tokens"] < tokens * 1.5
        assert 0 < r["bits_per_byte"] < 8 and r["perplexity"] > 1
    assert ours["eval_bytes"] == peer["eval_bytes"] and ours["eval_tokens"] == peer["eval_tokens"]
    assert rep["data"]["heldout_documents"] == 4
    assert math.isclose(rep["ratios"]["A"]["ratio"], ours["bits_per_byte"] / peer["bits_per_byte"])
    assert abs(ours["params"] / peer["params"] - 1) < 0.15      # tiny shapes: the embedding dominates less

    shown = subprocess.run([sys.executable, str(QUALITY), "--show", "/dev/stdin"], input=proc.stdout,
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert shown.returncode == 0 and "budget A: ours / peer" in shown.stdout


def test_missing_corpus_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(QUALITY), "--corpus", str(tmp_path / "none.txt")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not found" in proc.stderr


def test_zero_proj_init_ablation_starts_from_zeroed_projections_at_the_fresh_schedule(tmp_path):
    proc = subprocess.run([sys.executable, str(QUALITY), "--quick", "--budget", "A", "--only", "ours", "--json",
                           "--init", "zero-proj", "--tag", "zp", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0 < json.loads(proc.stdout)["results"]["ours.A"]["bits_per_byte"] < 8
    (init,) = tmp_path.glob("data-*/runs/init-zp-A.pt")
    weights = torch.load(init, weights_only=True)["model"]
    projs = [k for k in weights if k.endswith(("attn.proj.weight", "mlp.proj.weight"))]
    assert projs and all(not weights[k].any() for k in projs)
    assert weights["tok_emb.weight"].std() > 0.01
    (run,) = tmp_path.glob("data-*/runs/ours-zp-A")
    cfg = json.loads((run / "config.json").read_text())
    import config
    assert cfg["init_from"]["path"] == str(init.resolve()) and cfg["init_from"]["step"] == 0
    assert cfg["train"]["lr"] == config.PRESETS[config.CUSTOM_BASE]["lr"]       # not halved as for trained weights
    steps = cfg["train"]["total_steps"]
    assert cfg["train"]["warmup_steps"] == min(config.WARMUP_MAX, int(steps * config.WARMUP_FRACTION))


def test_untied_head_ablation_trains_and_scores_a_model_with_its_own_head(tmp_path):
    proc = subprocess.run([sys.executable, str(QUALITY), "--quick", "--budget", "A", "--only", "ours", "--json",
                           "--untied-head", "--n-layer", "1", "--ours-args", "--intermediate-size 96",
                           "--tag", "untied", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)["results"]["ours.A"]
    assert 0 < result["bits_per_byte"] < 8
    (run,) = tmp_path.glob("data-*/runs/ours-untied-A")
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["tie_embeddings"] is False and model["intermediate_size"] == 96 and model["n_layer"] == 1
    weights = torch.load(run / "ckpt_best.pt", weights_only=True)["model"]
    assert not torch.equal(weights["lm_head.weight"], weights["tok_emb.weight"])
    from config import ModelConfig
    assert result["params"] == ModelConfig.from_dict(model).num_parameters()
