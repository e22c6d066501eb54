"""Evaluation: window planning, perplexity and bits per byte against hand computations, the
per-document report, and `python main.py evaluate` end to end on a tiny checkpoint."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import corpus
import dataset
import evaluation
import tokenizer
from precision import Precision
from common import UserError, file_sha256
from conftest import assert_user_error, corpus_slice
from model import GPT, ModelConfig

BLOCK = 32
SEP = 0


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """tokenizer.json (byte-level BPE trained on Spanish text), test.txt (12 real documents in
    the corpus format), and run/ckpt_best.pt (a tiny random model with sharp weights)."""
    root = tmp_path_factory.mktemp("eval")
    train_text = root / "train.txt"
    train_text.write_text(corpus_slice("wiki_es.txt", n_chars=150_000), encoding="utf-8")
    tokenizer.train_tokenizer([train_text], vocab_size=600, out_path=root / "tokenizer.json", quiet=True)
    test_text = corpus_slice("wiki_es.txt", n_docs=12)
    (root / "test.txt").write_text(test_text, encoding="utf-8")

    tok = tokenizer.load_tokenizer(root / "tokenizer.json")
    model = sharp_model(tok.get_vocab_size())
    ckpt = {"model": model.state_dict(), "model_config": model.cfg.to_dict(),
            "meta": {"tokenizer_hash": file_sha256(root / "tokenizer.json"),
                     "vocab_size": tok.get_vocab_size(), "corpus_hash": "", "step": 0}}
    (root / "run").mkdir()
    torch.save(ckpt, root / "run" / "ckpt_best.pt")
    return root


@pytest.fixture(scope="module")
def tok(workdir):
    return tokenizer.load_tokenizer(workdir / "tokenizer.json")


@pytest.fixture(scope="module")
def model(tok):
    return sharp_model(tok.get_vocab_size())


def sharp_model(vocab_size: int, block_size: int = BLOCK) -> GPT:
    """A tiny GPT whose weights are large enough that every prediction depends strongly on its
    context (a freshly initialised model is nearly uniform and would hide context mistakes)."""
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=block_size))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m.eval()


def stream_of(tok, docs: list[str]):
    """The token-store layout `SEP d1 SEP d2 ... SEP` built by hand: (tokens, doc_starts, ids)."""
    ids = [tok.encode(d, add_special_tokens=False).ids for d in docs]
    tokens, starts = [SEP], [0]
    for d in ids:
        tokens += d + [SEP]
        starts.append(len(tokens) - 1)
    return np.array(tokens, dtype=np.uint16), np.array(starts, dtype=np.int64), ids


@torch.no_grad()
def full_context_nll(model, ids: list[int]) -> float:
    """Sum of -log p of the document's tokens and its end SEP, one forward pass from its SEP."""
    x = torch.tensor([[SEP] + ids])
    y = torch.tensor([ids + [SEP]])
    logits, _ = model(x)
    return F.cross_entropy(logits[0], y[0], reduction="sum").item()


@torch.no_grad()
def sliding_nll_by_hand(model, tokens: np.ndarray, block: int) -> float:
    """Each target of a one-document stream predicted from at most `block` preceding tokens,
    one forward pass per target (what stride 1 must reproduce)."""
    total = 0.0
    for p in range(1, len(tokens)):
        ctx = torch.tensor(tokens[max(0, p - block):p].astype(np.int64))[None]
        logits, _ = model(ctx)
        total -= torch.log_softmax(logits[0, -1], dim=-1)[int(tokens[p])].item()
    return total


def some_docs(n: int) -> list[str]:
    """The first n documents of the Spanish encyclopedia corpus, stripped."""
    docs = corpus_slice("wiki_es.txt", n_docs=n).split("<|doc|>\n")
    return [d.strip() for d in docs]


# --------------------------------------------------------------------------- window planning

def random_layout(rng, n_docs, max_len):
    return np.concatenate([[0], np.cumsum(rng.integers(1, max_len, size=n_docs))]).astype(np.int64)


@pytest.mark.parametrize("pack", [True, False])
def test_every_target_scored_once_with_enough_context(pack):
    rng = np.random.default_rng(1)
    for _ in range(200):
        doc_starts = random_layout(rng, int(rng.integers(1, 25)), 120)
        block = int(rng.integers(1, 40))
        stride = int(rng.integers(1, block + 1))
        w = evaluation.plan_windows(doc_starts, block, stride, pack=pack)
        assert w.dtype == np.int64 and w.shape[1] == 3
        assert (w[:, 1] <= block + 1).all() and (w[:, 1] >= 2).all()
        pos = evaluation.scored_positions(w)
        assert np.array_equal(np.sort(pos), np.arange(1, doc_starts[-1] + 1))  # each exactly once
        # context = tokens of its own document visible in its window
        win_start = np.repeat(w[:, 0], w[:, 1] - 1 - w[:, 2])
        doc_start = doc_starts[np.searchsorted(doc_starts, pos, side="left") - 1]
        if not pack:
            assert (win_start >= doc_start).all()  # one document per window
        context = pos - np.maximum(win_start, doc_start)
        whole = pos - doc_start
        assert (context[whole <= block] == whole[whole <= block]).all()  # full context near doc start
        assert (context[whole > block] >= block - stride).all()


def test_plan_layout_packs_short_documents_and_slides_over_long_ones():
    # docs of 5, 4, 41, 2, 1 targets; block 16, stride 8
    w = evaluation.plan_windows(np.array([0, 5, 9, 50, 52, 53]), 16, 8)
    assert w.tolist() == [[0, 10, 0],    # docs 0 and 1 packed: 9 inputs + 1
                          [9, 17, 0],    # doc 2, targets 1..16
                          [17, 17, 8],   # targets 17..24 with 8 tokens of context
                          [25, 17, 8],
                          [33, 17, 8],   # targets 33..40
                          [34, 17, 15],  # the last window ends at the doc end: target 41
                          [50, 4, 0]]    # docs 3 and 4 packed


def test_stride_must_fit_in_block():
    with pytest.raises(ValueError):
        evaluation.plan_windows(np.array([0, 10]), 8, 9)


def test_stride_larger_than_block_is_a_user_error(model, tok):
    tokens, starts, _ = stream_of(tok, ["hola mundo"])
    with pytest.raises(UserError, match="stride"):
        evaluation.score_documents(model, tokens, starts, stride=BLOCK + 1, quiet=True)


# --------------------------------------------------------------------------- metrics by hand

def test_loss_perplexity_and_bits_per_byte_by_hand(model, tok):
    docs = ["El río Ebro nace en Cantabria.", "La fotosíntesis es un proceso químico.",
            "Año de ñandúes: ¿qué pasó?"]
    tokens, starts, ids = stream_of(tok, docs)
    assert all(len(d) + 1 <= BLOCK for d in ids)  # each document fits in one window
    r = evaluation.evaluate_tokens(model, tok, tokens, starts, quiet=True)

    nll = sum(full_context_nll(model, d) for d in ids)
    n_tokens = sum(len(d) + 1 for d in ids)  # text tokens plus each end separator
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert r["tokens"] == n_tokens and r["bytes"] == n_bytes and r["documents"] == 3
    assert r["loss"] == pytest.approx(nll / n_tokens, rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-12)
    assert r["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
    assert r["block_size"] == BLOCK and r["stride"] == BLOCK // 2


def test_document_filling_a_window_gets_exactly_the_full_context_loss(model, tok):
    text = " ".join(some_docs(3))
    ids = tok.encode(text, add_special_tokens=False).ids[:BLOCK - 1]  # + end SEP = BLOCK targets
    doc = tok.decode(ids)
    assert tok.encode(doc, add_special_tokens=False).ids == ids
    docs = ["Un documento corto.", doc, "Otro más."]
    tokens, starts, _ = stream_of(tok, docs)
    r = evaluation.evaluate_tokens(model, tok, tokens, starts, per_document=True, quiet=True)
    alone = full_context_nll(model, ids) / BLOCK
    assert r["per_document"][1]["tokens"] == BLOCK
    assert r["per_document"][1]["loss"] == pytest.approx(alone, rel=1e-6, abs=1e-6)


def test_stride_one_equals_per_token_sliding_context_by_hand(model, tok):
    doc = " ".join(some_docs(2))
    ids = tok.encode(doc, add_special_tokens=False).ids[:70]
    doc = tok.decode(ids)
    tokens, starts, _ = stream_of(tok, [doc])
    r = evaluation.evaluate_tokens(model, tok, tokens, starts, stride=1, quiet=True)
    assert r["tokens"] == len(ids) + 1
    expected = sliding_nll_by_hand(model, tokens, BLOCK)
    assert r["loss"] == pytest.approx(expected / (len(ids) + 1), rel=1e-5)


def test_stride_changes_context_but_not_what_is_scored(model, tok):
    docs = some_docs(6)
    tokens, starts, ids = stream_of(tok, docs)
    assert max(len(d) for d in ids) > 3 * BLOCK  # long documents: the stride matters
    results = {s: evaluation.evaluate_tokens(model, tok, tokens, starts, stride=s, quiet=True)
               for s in (3, BLOCK // 2, BLOCK)}
    for r in results.values():
        assert r["tokens"] == len(tokens) - 1 == sum(len(d) + 1 for d in ids)
        assert r["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
    losses = [r["loss"] for r in results.values()]
    assert len({round(x, 6) for x in losses}) == len(losses)  # different context, different loss


def test_per_document_numbers_average_back_to_the_total(model, tok):
    docs = some_docs(8)
    tokens, starts, _ = stream_of(tok, docs)
    r = evaluation.evaluate_tokens(model, tok, tokens, starts, stride=8, per_document=True, quiet=True)
    per = r["per_document"]
    assert [d["document"] for d in per] == list(range(1, len(docs) + 1))
    assert [d["bytes"] for d in per] == [len(d.encode("utf-8")) for d in docs]
    assert sum(d["tokens"] for d in per) == r["tokens"]
    assert sum(d["loss"] * d["tokens"] for d in per) / r["tokens"] == pytest.approx(r["loss"], rel=1e-9)
    bits = sum(d["bits_per_byte"] * d["bytes"] for d in per)
    assert bits / r["bytes"] == pytest.approx(r["bits_per_byte"], rel=1e-9)
    for d in per:
        assert d["perplexity"] == pytest.approx(math.exp(d["loss"]))
    worst = r["worst_documents"]
    assert len(worst) == 5
    assert [d["perplexity"] for d in worst] == sorted((d["perplexity"] for d in per), reverse=True)[:5]
    for w in worst:
        assert docs[w["document"] - 1].split()[:3] == w["first_words"].split()[:3]


@pytest.mark.parametrize("chunk", [7, 1 << 24])
def test_document_bytes_match_the_text_through_the_token_store(workdir, tok, monkeypatch, chunk):
    monkeypatch.setattr(evaluation, "BYTES_CHUNK", chunk)  # small chunks: boundaries inside documents
    store = dataset.load_or_build_token_store(workdir / "test.txt", workdir / "tokenizer.json",
                                              workdir / "store-cache", quiet=True)
    n_bytes = evaluation.document_bytes(store.tokens, store.doc_starts, evaluation.token_byte_lengths(tok))
    texts = list(corpus.read_documents(workdir / "test.txt"))
    assert n_bytes.tolist() == [len(t.encode("utf-8")) for t in texts]


@pytest.mark.gpu
def test_cuda_with_and_without_amp_matches_cpu(model, tok):
    tokens, starts, _ = stream_of(tok, some_docs(6))
    cpu = evaluation.evaluate_tokens(model, tok, tokens, starts, per_document=True, quiet=True)
    on_gpu = copy.deepcopy(model).cuda()
    fp32 = evaluation.evaluate_tokens(on_gpu, tok, tokens, starts, per_document=True, quiet=True)
    bf16 = evaluation.evaluate_tokens(on_gpu, tok, tokens, starts, quiet=True,
                                      precision=Precision("bf16", "cuda", "bf16"))
    assert fp32["tokens"] == bf16["tokens"] == cpu["tokens"]
    assert fp32["loss"] == pytest.approx(cpu["loss"], rel=1e-4)
    for a, b in zip(fp32["per_document"], cpu["per_document"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert bf16["loss"] == pytest.approx(cpu["loss"], rel=5e-2)  # bf16 autocast: close, not equal


# --------------------------------------------------------------------------- command line

def evaluate_cli(cli, workdir, *extra, test_file=None):
    return cli("evaluate", "--tokenizer", workdir / "tokenizer.json", "--ckpt", workdir / "run" / "ckpt_best.pt",
               "--test-file", test_file or workdir / "test.txt", "--device", "cpu", *extra)


def test_cli_json_per_document_and_cache_reuse(cli, workdir):
    proc = evaluate_cli(cli, workdir, "--json", "--per-document", "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    for key in ("loss", "perplexity", "bits_per_byte", "tokens", "bytes", "documents", "block_size", "stride"):
        assert key in r
    assert r["documents"] == 12 and r["block_size"] == BLOCK and r["stride"] == BLOCK // 2
    assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    texts = list(corpus.read_documents(workdir / "test.txt"))
    assert r["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    assert len(r["per_document"]) == 12 and len(r["worst_documents"]) == 5
    assert all(w["first_words"] for w in r["worst_documents"])

    cache = list((workdir / "run" / "cache").glob("tokens-*.bin"))
    assert len(cache) == 1
    before = cache[0].stat()
    proc = evaluate_cli(cli, workdir, "--stride", "8")  # human output this time
    assert proc.returncode == 0, proc.stderr
    after = cache[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rebuilt
    assert "reusing" in proc.stderr
    assert "perplexity" in proc.stdout and "bits per byte" in proc.stdout and "32 / 8" in proc.stdout


def test_cli_raw_text_is_one_document(cli, workdir, tmp_path):
    raw = " ".join(some_docs(4)).replace("\n", " ")
    (tmp_path / "raw.txt").write_text(raw, encoding="utf-8")
    proc = evaluate_cli(cli, workdir, "--json", "--quiet", test_file=tmp_path / "raw.txt")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["documents"] == 1 and r["bytes"] == len(raw.encode("utf-8"))
    assert r["tokens"] > BLOCK  # one long document, scored with sliding windows


def test_cli_bad_inputs_exit_2(cli, workdir, tmp_path):
    assert_user_error(evaluate_cli(cli, workdir, test_file=tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    assert_user_error(evaluate_cli(cli, workdir, test_file=tmp_path / "empty.txt"))
    data = (workdir / "run" / "ckpt_best.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    proc = cli("evaluate", "--tokenizer", workdir / "tokenizer.json", "--ckpt", tmp_path / "truncated.pt",
               "--test-file", workdir / "test.txt", "--device", "cpu")
    assert_user_error(proc)
    assert "truncated" in proc.stderr


def test_bad_inputs_are_user_errors(workdir, tmp_path):
    """The same UserError path as the CLI (main turns it into one `error:` line, exit 2), in process."""
    ckpt, tokenizer, test = workdir / "run" / "ckpt_best.pt", workdir / "tokenizer.json", workdir / "test.txt"
    (tmp_path / "only-separators.txt").write_text("<|doc|>\n\n<|doc|>\n", encoding="utf-8")
    with pytest.raises(UserError, match="no documents"):
        evaluation.evaluate(ckpt, tokenizer, tmp_path / "only-separators.txt", device="cpu", quiet=True)

    other = json.loads(tokenizer.read_text(encoding="utf-8"))  # same tokens, another file hash
    (tmp_path / "other.json").write_text(json.dumps(other, indent=1), encoding="utf-8")
    with pytest.raises(UserError, match="tokenizer .* is not the one"):
        evaluation.evaluate(ckpt, tmp_path / "other.json", test, device="cpu", quiet=True)

    with pytest.raises(UserError, match="--stride 33"):
        evaluation.evaluate(ckpt, tokenizer, test, stride=BLOCK + 1, device="cpu", quiet=True)


# --------------------------------------------------------------------------- several test files

@pytest.fixture(scope="module")
def general_file(workdir):
    """A second test file: 8 other documents of the corpus (not those of test.txt)."""
    docs = corpus_slice("wiki_es.txt", n_docs=40).split("<|doc|>\n")[30:38]
    path = workdir / "general.txt"
    path.write_text("<|doc|>\n".join(docs), encoding="utf-8")
    return path


def evaluate_files_cli(cli, workdir, files, *extra):
    """`evaluate --test-file FILE...` on the tiny checkpoint."""
    return cli("evaluate", "--tokenizer", workdir / "tokenizer.json", "--ckpt", workdir / "run" / "ckpt_best.pt",
               "--device", "cpu", *extra, "--test-file", *files)


@pytest.fixture(scope="module")
def two_files_result(workdir, general_file):
    return evaluation.evaluate_files(workdir / "run" / "ckpt_best.pt", workdir / "tokenizer.json",
                                     [workdir / "test.txt", general_file], device="cpu", per_document=True,
                                     quiet=True)


def test_each_file_row_equals_evaluating_that_file_alone(workdir, general_file, two_files_result):
    files = [workdir / "test.txt", general_file]
    assert [r["test_file"] for r in two_files_result["files"]] == [str(f) for f in files]
    for row, path in zip(two_files_result["files"], files):
        alone = evaluation.evaluate(workdir / "run" / "ckpt_best.pt", workdir / "tokenizer.json", path,
                                    device="cpu", per_document=True, quiet=True)
        assert row.keys() == alone.keys()  # the same dict as a single-file evaluation
        for key in ("tokens", "bytes", "documents", "block_size", "stride", "windows"):
            assert row[key] == alone[key]
        for key in ("loss", "perplexity", "bits_per_byte"):
            assert row[key] == pytest.approx(alone[key], rel=1e-12)
        assert [d["loss"] for d in row["per_document"]] == pytest.approx(
            [d["loss"] for d in alone["per_document"]], rel=1e-12)
    assert two_files_result["checkpoint"] == str(workdir / "run" / "ckpt_best.pt")
    assert two_files_result["device"] == "cpu" and "precision" in two_files_result


def test_total_weighs_files_by_tokens_and_bytes_not_a_mean_of_means(two_files_result):
    files, total = two_files_result["files"], two_files_result["total"]
    nats = [r["loss"] * r["tokens"] for r in files]
    tokens, n_bytes = sum(r["tokens"] for r in files), sum(r["bytes"] for r in files)
    assert files[0]["tokens"] != files[1]["tokens"]  # unequal files: a mean of means would differ
    assert total["tokens"] == tokens and total["bytes"] == n_bytes
    assert total["documents"] == sum(r["documents"] for r in files) and total["files"] == 2
    assert total["loss"] == pytest.approx(sum(nats) / tokens, rel=1e-12)
    assert total["loss"] != pytest.approx(sum(r["loss"] for r in files) / 2, rel=1e-6)
    assert total["perplexity"] == pytest.approx(math.exp(total["loss"]), rel=1e-12)
    assert total["bits_per_byte"] == pytest.approx(sum(nats) / math.log(2) / n_bytes, rel=1e-12)


def test_cli_several_files_json_and_table(cli, workdir, general_file):
    proc = evaluate_files_cli(cli, workdir, [workdir / "test.txt", general_file], "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)  # exactly one JSON object
    assert set(r) == {"checkpoint", "files", "total", "device", "precision", "quantize"}
    assert len(r["files"]) == 2 and r["files"][1]["test_file"] == str(general_file)
    for key in ("loss", "perplexity", "bits_per_byte", "tokens", "bytes", "documents"):
        assert key in r["total"]
    assert r["total"]["tokens"] == sum(f["tokens"] for f in r["files"])

    proc = evaluate_files_cli(cli, workdir, [workdir / "test.txt", general_file], "--per-document", "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = [l for l in lines if "general.txt" in l or "test.txt" in l or "total" in l]
    assert any(l.split("│")[1].strip() == "total" for l in rows if "│" in l)
    assert f"{r['total']['loss']:.4f}" in proc.stdout and f"{r['files'][1]['loss']:.4f}" in proc.stdout
    assert proc.stdout.count("per document") == 2  # one per-document table under each file's name


def test_cli_same_file_twice_is_one_error_line(cli, workdir):
    again = workdir / "run" / ".." / "test.txt"  # another spelling of the same file
    proc = evaluate_files_cli(cli, workdir, [workdir / "test.txt", again])
    assert_user_error(proc)
    assert "same file" in proc.stderr and "--test-file once" in proc.stderr


def test_cli_one_file_keeps_the_single_file_json(cli, workdir):
    proc = evaluate_cli(cli, workdir, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    alone = evaluation.evaluate(workdir / "run" / "ckpt_best.pt", workdir / "tokenizer.json",
                                workdir / "test.txt", device="cpu", quiet=True)
    assert set(r) == set(alone) and "files" not in r and "total" not in r
    assert r["test_file"] == str(workdir / "test.txt") and r["loss"] == pytest.approx(alone["loss"], rel=1e-12)
