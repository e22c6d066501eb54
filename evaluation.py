"""Perplexity and bits per byte of a checkpoint on one or more test files (`python main.py evaluate`).

What is scored. The test file becomes the token stream `SEP d1 SEP d2 ... SEP dn SEP` (the
token store of dataset.py). Each document is scored on its own: every token of the document is
predicted from the document's SEP onwards, and so is the SEP that ends it (the model has to
predict where the document stops, exactly as in training, so the loss is comparable with the
training validation loss). A document of k text tokens therefore contributes k + 1 scored tokens.
Bits per byte divides the total loss (in bits) by the UTF-8 bytes of the document texts
(separator lines excluded): the end-of-document loss is part of the total, its text is 0 bytes
(the usual convention in language-model papers, which count the end-of-text token).

Sliding windows. A document that fits in one window (at most block_size inputs) is scored in one
window with its full context; consecutive short documents are packed into one window (the model's
document-aware attention keeps them apart, so the numbers are those of each document alone).
A longer document is covered by windows of block_size inputs starting every `stride` tokens, the
last one ending at the document's end; each window scores only the targets the previous one did
not reach. Every token is scored exactly once, with at least block_size - stride tokens of context
except within the first block_size tokens of its document, where it sees the whole document so far.

Several files. The checkpoint is loaded once and each file is scored on its own (its own token
store, the same windows as alone); the total sums the token losses, tokens and bytes of every file,
so it weighs each file by its tokens (its loss is not a mean of the per-file losses).

Notation: N windows, L window length (inputs + 1), B batch, T time, V vocabulary.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import inference
from common import Progress, UserError, log, perplexity, require_file, resolve_device
from model import document_positions
from precision import Precision
from tokenizer import DOC_SEPARATOR

SCORING = ("each document's tokens and the separator that ends it, predicted from the document's "
           "separator onwards; bytes are the UTF-8 bytes of the document texts (separator lines "
           "excluded)")
WORST_SHOWN = 5          # documents listed by --per-document as the worst (highest perplexity)
FIRST_WORDS = 10         # words of each worst document shown to identify it
BYTES_CHUNK = 1 << 24    # tokens per chunk when summing byte lengths over a large stream


# =========================================================================== window planning

def plan_windows(doc_starts: np.ndarray, block_size: int, stride: int, pack: bool = True) -> np.ndarray:
    """Windows that score every target of the stream exactly once, document by document.

    doc_starts: int64 (n_docs + 1,), doc_starts[i] = stream index of the SEP before document i,
    doc_starts[-1] = index of the final SEP. Document i's targets are the stream positions
    doc_starts[i] + 1 .. doc_starts[i + 1] (its tokens and its end SEP).

    Returns int64 (N, 3) rows [start, length, first]: the window is stream[start : start + length]
    (inputs span[:-1], targets span[1:], length <= block_size + 1) and it scores the targets
    span[1:][first:], i.e. the stream positions start + 1 + first .. start + length - 1.
    `pack`: put consecutive short documents in one window (needs document-aware attention).
    Rows are sorted by start.
    """
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride={stride} must be in 1..block_size={block_size}")
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    n_targets = np.diff(doc_starts)  # (n_docs,) targets per document
    assert (n_targets >= 1).all(), "every document has at least its end separator"
    long = n_targets > block_size
    parts = [_short_windows(doc_starts, n_targets, long, block_size, pack),
             _long_windows(doc_starts[:-1][long], n_targets[long], block_size, stride)]
    windows = np.concatenate(parts, axis=0)
    return windows[np.argsort(windows[:, 0], kind="stable")]


def _short_windows(doc_starts, n_targets, long, block_size, pack) -> np.ndarray:
    """One window per run of consecutive short documents, packed greedily up to block_size inputs."""
    n = len(n_targets)
    if pack:
        # nxt[i]: the document after the pack that starts at document i
        fit = np.searchsorted(doc_starts, doc_starts[:-1] + block_size, side="right") - 1
        first_long = np.where(long, np.arange(n), n)
        next_long = np.minimum.accumulate(first_long[::-1])[::-1]  # first long doc at or after i
        nxt = np.where(long, np.arange(n) + 1, np.minimum(fit, next_long))
        starts = _chain_from_zero(nxt)
        ends = nxt[starts]
    else:
        starts = np.arange(n)
        ends = starts + 1
    keep = ~long[starts]
    starts, ends = starts[keep], ends[keep]
    begin = doc_starts[starts]
    rows = np.stack([begin, doc_starts[ends] - begin + 1, np.zeros_like(begin)], axis=1)
    return rows.astype(np.int64).reshape(-1, 3)


def _chain_from_zero(nxt: np.ndarray) -> np.ndarray:
    """The nodes 0, nxt[0], nxt[nxt[0]], ... below n = len(nxt), for a strictly increasing
    successor function (nxt[i] > i). Vectorised by pointer doubling: O(n log n), no Python loop
    over documents."""
    n = len(nxt)
    jump = np.append(nxt, n).astype(np.int64)  # node n is the absorbing end
    path = np.zeros(1, dtype=np.int64)
    while path[-1] < n:  # path holds nxt^0..nxt^(2^k - 1) of node 0; jump is nxt^(2^k)
        path = np.concatenate([path, jump[path]])
        jump = jump[jump]
    return path[path < n]


def _long_windows(starts, n_targets, block_size, stride) -> np.ndarray:
    """Windows of block_size inputs every `stride` tokens over each long document; the last one
    ends at the document's end. Window k of a document starts at a_k = min(k * stride, n - block)
    and scores the document targets a_(k-1) + block + 1 .. a_k + block."""
    if len(starts) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    per_doc = 1 + -(-(n_targets - block_size) // stride)  # windows per document (ceil division)
    doc = np.repeat(np.arange(len(starts)), per_doc)
    k = np.arange(per_doc.sum()) - np.repeat(np.cumsum(per_doc) - per_doc, per_doc)  # window index in its doc
    last_start = n_targets[doc] - block_size
    a = np.minimum(k * stride, last_start)
    prev_end = np.where(k == 0, 0, np.minimum((k - 1) * stride, last_start) + block_size)
    first = np.where(k == 0, 0, prev_end - a)
    rows = np.stack([starts[doc] + a, np.full_like(a, block_size + 1), first], axis=1)
    return rows.astype(np.int64)


def scored_positions(windows: np.ndarray) -> np.ndarray:
    """Stream positions of every scored target, window by window (used by the tests)."""
    counts = windows[:, 1] - 1 - windows[:, 2]
    base = np.repeat(windows[:, 0] + 1 + windows[:, 2], counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return base + offset


# =========================================================================== bytes

def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id adds to the decoded text, int64 (vocab_size,).

    Byte-level BPE tokens are strings over a 256-character alphabet, one character per byte.
    Special (added) tokens count 0: decoding skips them. A token outside that alphabet (a
    tokenizer that is not byte-level) counts the bytes of its own decoding.
    """
    from tokenizers import pre_tokenizers
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    added = tokenizer.get_added_tokens_decoder()  # {id: AddedToken}
    V = tokenizer.get_vocab_size()
    lengths = np.zeros(V, dtype=np.int64)
    for tok_str, i in tokenizer.get_vocab().items():
        if i >= V or (i in added and added[i].special):
            continue
        if i in added:  # a plain added token decodes to its own text
            lengths[i] = len(added[i].content.encode("utf-8"))
        elif all(ch in alphabet for ch in tok_str):
            lengths[i] = len(tok_str)
        else:
            lengths[i] = len(tokenizer.decode([i]).encode("utf-8"))
    return lengths


def document_bytes(tokens: np.ndarray, doc_starts: np.ndarray, byte_len: np.ndarray) -> np.ndarray:
    """UTF-8 bytes of each document's text, int64 (n_docs,), summed over its tokens in chunks
    (the boundary SEPs are special tokens and count 0)."""
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    prefix = np.zeros(len(doc_starts), dtype=np.int64)  # bytes before each doc_starts position
    total = 0
    end = int(doc_starts[-1]) + 1
    for c0 in range(0, end, BYTES_CHUNK):
        c1 = min(c0 + BYTES_CHUNK, end)
        cum = np.cumsum(byte_len[np.asarray(tokens[c0:c1], dtype=np.int64)], dtype=np.int64)
        here = (doc_starts >= c0) & (doc_starts < c1)
        pos = doc_starts[here] - c0
        prefix[here] = total + cum[pos] - byte_len[np.asarray(tokens[doc_starts[here]], dtype=np.int64)]
        total += int(cum[-1])
    return np.diff(prefix)


# =========================================================================== scoring

@torch.inference_mode()
def score_documents(model, tokens: np.ndarray, doc_starts: np.ndarray, *, stride: int | None = None,
                    batch_size: int = 16, precision: Precision | None = None, pad_id: int = 0,
                    quiet: bool = False) -> dict:
    """Sum of token losses (nats) and scored token count per document.

    Returns {"loss_sum": float64 (n_docs,), "tokens": int64 (n_docs,), "block_size", "stride",
    "windows", "seconds"}. Runs in eval mode, batched (windows sorted by length so little is
    padded), under inference_mode, in `precision` (None = fp32; see precision.resolve_precision).
    """
    block_size = model.cfg.block_size
    stride = block_size // 2 if stride is None else stride
    if stride == 0:
        stride = 1  # block_size 1
    if not 1 <= stride <= block_size:
        raise UserError(f"--stride {stride} must be between 1 and the model's block size {block_size} "
                        f"(a larger stride would skip tokens); the default is {max(1, block_size // 2)}")
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    n_docs = len(doc_starts) - 1
    windows = plan_windows(doc_starts, block_size, stride, pack=model.cfg.sep_token_id is not None)
    scored = windows[:, 1] - 1 - windows[:, 2]  # (N,)
    assert scored.sum() == doc_starts[-1] - doc_starts[0], "every target is scored exactly once"
    order = np.argsort(-windows[:, 1], kind="stable")  # longest first: a memory problem shows at once

    model.eval()
    device = next(model.parameters()).device
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    acc_device = device if device.type in ("cpu", "cuda") else torch.device("cpu")  # float64 support
    loss_sum = torch.zeros(n_docs, dtype=torch.float64, device=acc_device)
    pin = device.type == "cuda"

    t0 = time.perf_counter()
    with Progress("evaluating", total=int(scored.sum()), unit="tok", quiet=quiet) as progress:
        for b0 in range(0, len(order), batch_size):
            rows = windows[order[b0:b0 + batch_size]]  # (B, 3)
            x, y, doc = _batch_arrays(tokens, doc_starts, rows, pad_id)
            x, y, doc = (torch.from_numpy(a) for a in (x, y, doc))
            if pin:
                x, y, doc = x.pin_memory(), y.pin_memory(), doc.pin_memory()
            positions = document_positions(x, model.cfg.sep_token_id).to(device, non_blocking=True)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with autocast():
                token_loss = model.token_losses(x, y, positions=positions)  # (B, T), 0 where not scored
            loss_sum.index_add_(0, doc.flatten().to(acc_device, non_blocking=True),
                                token_loss.flatten().to(acc_device, torch.float64))
            progress.update(int(scored[order[b0:b0 + batch_size]].sum()))
    loss_sum = loss_sum.cpu().numpy()
    seconds = time.perf_counter() - t0
    return {"loss_sum": loss_sum, "tokens": np.diff(doc_starts), "block_size": block_size,
            "stride": stride, "windows": len(windows), "seconds": seconds}


def _batch_arrays(tokens, doc_starts, rows, pad_id):
    """Padded inputs x (B, T), targets y (B, T) with -1 where not scored, and the document of
    each target doc (B, T) (0 where not scored: its loss is 0 there). T = longest window - 1."""
    start, length, first = rows[:, 0], rows[:, 1], rows[:, 2]
    L = int(length.max())
    j = np.arange(L)[None, :]  # (1, L)
    idx = start[:, None] + j  # (B, L) stream indices
    valid = j < length[:, None]  # (B, L)
    span = np.asarray(tokens[np.where(valid, idx, start[:, None])], dtype=np.int64)  # (B, L)
    x = np.where(valid[:, :-1], span[:, :-1], pad_id)  # (B, T)
    scored = valid[:, 1:] & (j[:, :-1] >= first[:, None])  # (B, T)
    y = np.where(scored, span[:, 1:], -1)  # (B, T)
    doc = np.searchsorted(doc_starts, idx[:, 1:], side="left") - 1  # doc i: doc_starts[i] < p <= doc_starts[i+1]
    doc = np.where(scored, doc, 0)
    return x, y, doc.astype(np.int64)


# =========================================================================== results

def summarize(loss_sum: np.ndarray, n_tokens: np.ndarray, n_bytes: np.ndarray) -> dict:
    """loss (mean nats per token), perplexity = exp(loss), bits per byte, tokens, bytes."""
    total_loss, tokens, nbytes = float(loss_sum.sum()), int(n_tokens.sum()), int(n_bytes.sum())
    loss = total_loss / tokens
    return {"loss": loss, "perplexity": perplexity(loss),
            "bits_per_byte": total_loss / math.log(2) / nbytes if nbytes else None,
            "tokens": tokens, "bytes": nbytes}


def per_document_results(loss_sum, n_tokens, n_bytes) -> list[dict]:
    """One dict per document (document = 1-based position in the test file)."""
    out = []
    for i, (ls, nt, nb) in enumerate(zip(loss_sum.tolist(), n_tokens.tolist(), n_bytes.tolist())):
        loss = ls / nt
        out.append({"document": i + 1, "tokens": nt, "bytes": nb, "loss": loss, "perplexity": perplexity(loss),
                    "bits_per_byte": ls / math.log(2) / nb if nb else None})
    return out


def first_words(tokenizer, tokens, start: int, end: int, n_words: int = FIRST_WORDS) -> str:
    """The first words of the document whose text tokens are tokens[start:end]."""
    stop = min(end, start + 4 * n_words)  # a word is rarely more than 4 tokens
    words = tokenizer.decode(np.asarray(tokens[start:stop], dtype=np.int64).tolist()).split()
    text = " ".join(words[:n_words])
    return text + " ..." if len(words) > n_words or stop < end else text


def evaluate_tokens(model, tokenizer, tokens, doc_starts, *, stride=None, batch_size=16, precision=None,
                    per_document=False, pad_id=0, quiet=False) -> dict:
    """Evaluate `model` on a token stream; the result dict printed by `evaluate` (see module doc)."""
    return _evaluate_stream(model, tokenizer, tokens, doc_starts, stride=stride, batch_size=batch_size,
                            precision=precision, per_document=per_document, pad_id=pad_id, quiet=quiet)[0]


def _evaluate_stream(model, tokenizer, tokens, doc_starts, *, stride, batch_size, precision, per_document,
                     pad_id, quiet) -> tuple[dict, float]:
    """evaluate_tokens' result and the total loss (nats) it was computed from: a total over several
    files sums these, never the per-file means."""
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    scores = score_documents(model, tokens, doc_starts, stride=stride, batch_size=batch_size,
                             precision=precision, pad_id=pad_id, quiet=quiet)
    n_bytes = document_bytes(tokens, doc_starts, token_byte_lengths(tokenizer))
    result = summarize(scores["loss_sum"], scores["tokens"], n_bytes)
    result.update(documents=len(doc_starts) - 1, block_size=scores["block_size"], stride=scores["stride"],
                  scoring=SCORING, windows=scores["windows"], seconds=round(scores["seconds"], 3),
                  tokens_per_second=round(result["tokens"] / max(scores["seconds"], 1e-9), 1))
    if per_document:
        docs = per_document_results(scores["loss_sum"], scores["tokens"], n_bytes)
        worst = sorted(docs, key=lambda d: d["loss"], reverse=True)[:WORST_SHOWN]
        worst = [dict(d, first_words=first_words(tokenizer, tokens, int(doc_starts[d["document"] - 1]) + 1,
                                                 int(doc_starts[d["document"]])))
                 for d in worst]
        result.update(per_document=docs, worst_documents=worst)
    return result, float(scores["loss_sum"].sum())


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready to score test files: model, tokenizer, device and precision resolved once
    and shared by every file of one `evaluate` command."""
    path: Path
    model: torch.nn.Module
    meta: dict
    identity: object       # tokenizer.TokenizerIdentity
    device: torch.device
    precision: Precision
    cache_dir: Path        # <checkpoint folder>/cache: the token stores, shared with training
    quantize: Optional[str] = None   # "int8": weight-only int8 (inference.py)


def load_checkpoint_for_evaluation(ckpt_path, tokenizer, *, device="auto", precision="auto",
                                   batch_size=16, quantize=None) -> LoadedCheckpoint:
    """Load the model and resolve the tokenizer identity, device and precision (UserError on bad input).
    `tokenizer`: a TokenizerIdentity or the path of the training tokenizer.json."""
    from checkpoint import load_model
    from tokenizer import as_identity

    ckpt_path = require_file(ckpt_path, "checkpoint")
    dev = resolve_device(device)
    identity = as_identity(tokenizer)
    model, meta = load_model(ckpt_path, dev, identity)
    prec = inference.resolve_precision_for(precision, dev, quantize, n_embd=model.cfg.n_embd,
                                           vocab_size=model.cfg.vocab_size, rows=batch_size * model.cfg.block_size,
                                           inference_layers=model.cfg.n_layer)
    inference.prepare(model, prec, quantize)          # runs under prec.autocast, as score_documents does
    inference.log_setup(prec, quantize, "evaluation", weight_only=False)
    return LoadedCheckpoint(path=ckpt_path, model=model, meta=meta, identity=identity, device=dev,
                            precision=prec, cache_dir=Path(ckpt_path).resolve().parent / "cache", quantize=quantize)


def _evaluate_file(loaded: LoadedCheckpoint, test_file, *, separator, stride, batch_size, per_document,
                   quiet) -> tuple[dict, float]:
    """Tokenise `test_file` through the cached token store and score it: (result, total nats)."""
    import dataset

    model = loaded.model
    store = dataset.load_or_build_token_store(test_file, loaded.identity, loaded.cache_dir, separator=separator,
                                              quiet=quiet)
    if model.cfg.sep_token_id is not None and store.sep_id != model.cfg.sep_token_id:
        raise UserError(f"the tokenizer's separator id {store.sep_id} differs from the model's "
                        f"{model.cfg.sep_token_id}; pass the training tokenizer.json")
    unseen = _unprepared(test_file, separator, loaded.identity.lowercase)
    if unseen:
        log.warning(f"warning: {test_file} has {' and '.join(unseen)}, which prepare-corpus changes in every "
                    f"corpus: the model never saw them and scores them badly; to measure it on this text as "
                    f"it was trained, run the file through prepare-corpus first")
    log.info(f"evaluating {loaded.path.name} (step {loaded.meta.get('step', '?')}, block {model.cfg.block_size}) "
             f"on {test_file}: {store.n_docs} documents, {len(store.tokens)} tokens, device {loaded.device.type}")
    result, nats = _evaluate_stream(model, loaded.identity.tokenizer, store.tokens, store.doc_starts,
                                    stride=stride, batch_size=batch_size, precision=loaded.precision,
                                    per_document=per_document, pad_id=store.pad_id, quiet=quiet)
    result.update(checkpoint=str(loaded.path), test_file=str(test_file), device=loaded.device.type,
                  precision=loaded.precision.to_dict(), quantize=loaded.quantize)
    log.info(f"{result['tokens']} tokens in {result['seconds']:.1f}s ({result['tokens_per_second']:.0f} tokens/s)")
    return result, nats


def _unprepared(path, separator: str, lowercase: bool, chunk_chars: int = 1 << 20) -> list[str]:
    """What prepare-corpus would change in the text file at `path` (UTF-8), outside its separator
    lines, that a model trained on its output never saw: accents as separate combining marks (not
    Unicode NFC) and, where `lowercase` (the tokenizer was trained on lowercased text), capitals."""
    checks = {"decomposed accents (not Unicode NFC)": lambda text: not unicodedata.is_normalized("NFC", text)}
    if lowercase:
        checks["capital letters (the tokenizer was trained on lowercased text)"] = lambda text: text != text.lower()
    found = []
    with open(path, encoding="utf-8", errors="replace") as f:
        while checks and (chunk := f.read(chunk_chars)):
            chunk = chunk.replace(separator, "")
            for what, present in list(checks.items()):
                if present(chunk):
                    found.append(what)
                    del checks[what]
    return found


def evaluate(ckpt_path, tokenizer, test_file, *, separator=DOC_SEPARATOR, stride=None, batch_size=16,
             device="auto", precision="auto", per_document=False, quiet=False, quantize=None) -> dict:
    """Load the checkpoint and tokenizer, tokenise `test_file` (cached beside the checkpoint, in
    <checkpoint folder>/cache, shared with training), and evaluate. UserError on bad input.
    `tokenizer`: a TokenizerIdentity or the path of the training tokenizer.json."""
    test_file = require_file(test_file, "test file")
    loaded = load_checkpoint_for_evaluation(ckpt_path, tokenizer, device=device, precision=precision,
                                            batch_size=batch_size, quantize=quantize)
    return _evaluate_file(loaded, test_file, separator=separator, stride=stride, batch_size=batch_size,
                          per_document=per_document, quiet=quiet)[0]


def refuse_repeated_files(paths) -> list[Path]:
    """The paths, checked to be readable files, none of them the same file as another (UserError)."""
    checked = [require_file(p, "test file") for p in paths]
    for i, p in enumerate(checked):
        for q in checked[:i]:
            if os.path.samefile(p, q):
                what = f"test file {q} is given twice" if str(p) == str(q) else f"{q} and {p} are the same file"
                raise UserError(f"{what}: give each test file to --test-file once")
    return checked


def combine_files(results: list[dict], nats: list[float]) -> dict:
    """The total over several files, from their summed token losses, tokens and bytes (not a mean
    of the per-file means): loss, perplexity, bits_per_byte, tokens, bytes, documents, files, seconds."""
    total = summarize(np.array(nats, dtype=np.float64), np.array([r["tokens"] for r in results], dtype=np.int64),
                      np.array([r["bytes"] for r in results], dtype=np.int64))
    seconds = sum(r["seconds"] for r in results)
    total.update(documents=sum(r["documents"] for r in results), files=len(results), seconds=round(seconds, 3),
                 tokens_per_second=round(total["tokens"] / max(seconds, 1e-9), 1))
    return total


def evaluate_files(ckpt_path, tokenizer, test_files, *, separator=DOC_SEPARATOR, stride=None, batch_size=16,
                   device="auto", precision="auto", per_document=False, quiet=False, quantize=None) -> dict:
    """Evaluate one checkpoint on several test files, loading it once: {"checkpoint", "files": [one
    `evaluate` result per file, in order], "total": combine_files(...), "device", "precision"}.
    The same file given twice is a UserError."""
    test_files = refuse_repeated_files(test_files)
    loaded = load_checkpoint_for_evaluation(ckpt_path, tokenizer, device=device, precision=precision,
                                            batch_size=batch_size, quantize=quantize)
    scored = [_evaluate_file(loaded, f, separator=separator, stride=stride, batch_size=batch_size,
                             per_document=per_document, quiet=quiet) for f in test_files]
    results, nats = [r for r, _ in scored], [n for _, n in scored]
    return {"checkpoint": str(loaded.path), "files": results, "total": combine_files(results, nats),
            "device": loaded.device.type, "precision": loaded.precision.to_dict(), "quantize": quantize}


# =========================================================================== human output

def _num(v, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _console(file):
    from rich.console import Console
    return Console(file=file or sys.stdout, soft_wrap=False)


def print_report(result: dict, file=None) -> None:
    """Small rich tables on stdout: the totals, then (with --per-document) every document and the
    worst ones."""
    from rich.table import Table

    console = _console(file)
    table = Table(title="evaluation", show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for name, value in [("loss (nats/token)", _num(result["loss"])),
                        ("perplexity", _num(result["perplexity"], ".3f")),
                        ("bits per byte", _num(result["bits_per_byte"])),
                        ("tokens scored", f"{result['tokens']:,}"),
                        ("bytes", f"{result['bytes']:,}"),
                        ("documents", f"{result['documents']:,}"),
                        ("block size / stride", f"{result['block_size']} / {result['stride']}")]:
        table.add_row(name, value)
    console.print(table)
    if "per_document" in result:
        _print_documents(console, result)


def print_files_report(result: dict, file=None) -> None:
    """One rich table for an `evaluate_files` result: a row per test file and a final total row,
    then (with --per-document) each file's document tables under its name."""
    from rich.table import Table

    console = _console(file)
    first = result["files"][0]
    table = Table(title=f"evaluation (block size / stride {first['block_size']} / {first['stride']})",
                  title_justify="left")
    table.add_column("file", overflow="fold")
    for col in ("documents", "tokens", "loss", "perplexity", "bits/byte"):
        table.add_column(col, justify="right")
    rows = [(r["test_file"], r) for r in result["files"]] + [("total", result["total"])]
    last = len(rows) - 1
    for i, (name, r) in enumerate(rows):
        table.add_row(name, f"{r['documents']:,}", f"{r['tokens']:,}", _num(r["loss"]),
                      _num(r["perplexity"], ".3f"), _num(r["bits_per_byte"]),
                      style="bold" if i == last else None, end_section=i == last - 1)
    console.print(table)
    for r in result["files"]:
        if "per_document" in r:
            console.rule(r["test_file"], align="left")
            _print_documents(console, r)


def _print_documents(console, result: dict) -> None:
    """The per-document table and the worst documents of one file's result."""
    from rich.table import Table

    docs = Table(title="per document", title_justify="left")
    for col in ("document", "tokens", "bytes", "loss", "perplexity", "bits/byte"):
        docs.add_column(col, justify="right")
    for d in result["per_document"]:
        docs.add_row(str(d["document"]), str(d["tokens"]), str(d["bytes"]), _num(d["loss"]),
                     _num(d["perplexity"], ".2f"), _num(d["bits_per_byte"]))
    console.print(docs)
    worst = Table(title=f"worst {len(result['worst_documents'])} documents (highest perplexity)",
                  title_justify="left")
    for col, just in (("document", "right"), ("perplexity", "right"), ("bits/byte", "right"),
                      ("first words", "left")):
        worst.add_column(col, justify=just, overflow="fold")
    for d in result["worst_documents"]:
        worst.add_row(str(d["document"]), _num(d["perplexity"], ".2f"), _num(d["bits_per_byte"]),
                      d["first_words"])
    console.print(worst)
