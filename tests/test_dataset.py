"""Corpus reading, the token store file, train/val split, document-aware windows, sampler."""
from __future__ import annotations

import json
import os
import pickle
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import corpus
import dataset
import tokenizer
from common import UserError
from conftest import corpus_slice


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    corpus = d / "train.txt"
    corpus.write_text(corpus_slice("wiki_es.txt", n_chars=150_000), encoding="utf-8")
    tokenizer.train_tokenizer([corpus], vocab_size=500, out_path=d / "tokenizer.json", quiet=True)
    return d / "tokenizer.json"


@pytest.fixture(scope="module")
def tok(tok_path):
    return tokenizer.load_tokenizer(tok_path)


@pytest.fixture(scope="module")
def varied_corpus(tmp_path_factory):
    """Real Spanish text cut into documents of very different lengths (a few chars to ~20 KB)."""
    text = corpus_slice("novelas_es.txt", n_chars=400_000).replace("<|doc|>\n", "")
    rng = np.random.default_rng(0)
    docs, pos = [], 0
    while pos < len(text) and len(docs) < 300:
        n = int(rng.choice([5, 40, 200, 800, 3000, 20_000], p=[0.15, 0.3, 0.25, 0.15, 0.1, 0.05]))
        doc = text[pos:pos + n].strip()
        pos += n
        if doc:
            docs.append(doc)
    path = tmp_path_factory.mktemp("corpus") / "varied.txt"
    path.write_text("".join(d + "\n<|doc|>\n" for d in docs), encoding="utf-8")
    return path, docs


@pytest.fixture(scope="module")
def store(varied_corpus, tok_path, tmp_path_factory):
    return dataset.load_or_build_token_store(varied_corpus[0], tok_path, tmp_path_factory.mktemp("cache"), quiet=True)


# ------------------------------------------------------------------------------------------ reading

def test_read_documents_separators(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("uno\nlínea 2\n<|doc|>\n\n<|doc|>\n  \n<|doc|>\ndos\n\n<|doc|>\ntres<|doc|>x\n<|doc|>\n",
                 encoding="utf-8")
    assert list(corpus.read_documents(p)) == ["uno\nlínea 2", "dos\n", "tres<|doc|>x"]


def test_read_documents_no_separator_bom_crlf(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes("\ufeffprimera\r\nsegunda\r\n".encode("utf-8"))
    assert list(corpus.read_documents(p)) == ["primera\nsegunda"]
    p.write_bytes(b"a\r\n<|doc|>\r\nb")
    assert list(corpus.read_documents(p)) == ["a", "b"]


def test_read_documents_custom_separator(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("a\n###\nb\n<|doc|>\nc\n", encoding="utf-8")
    assert list(corpus.read_documents(p, "###")) == ["a", "b\n<|doc|>\nc"]


def test_read_documents_bad_bytes(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(b"bien\n" + "mal: ñ".encode("latin-1") + b"\n")
    with pytest.raises(UserError, match="UTF-8"):
        list(corpus.read_documents(p))
    p.write_bytes(b"a\x00b\n")
    with pytest.raises(UserError, match="NUL"):
        list(corpus.read_documents(p))


def test_read_documents_matches_real_corpus():
    text = corpus_slice("wiki_es.txt", n_chars=100_000)
    n = text.count("\n<|doc|>\n")
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "c.txt")
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
        docs = list(corpus.read_documents(p))
    assert len(docs) == n + 1
    assert docs[0] == text.split("\n<|doc|>\n")[0]


# ------------------------------------------------------------------------------------------ pieces

def test_text_pieces_give_the_same_tokens(tok):
    text = corpus_slice("novelas_es.txt", n_chars=300_000).replace("<|doc|>\n", "")
    tricky = ("fin.\n\n  Sangría\tfinal \n \n'sí' \n\t\nx 'll\n\n\n\n123\n 45\n\u00a0\nﬁn\n  \n" * 400)
    one_line = text[:100_000].replace("\n", " ")
    for t in (text, tricky, text[:50_000] + tricky + text[50_000:100_000], one_line):
        pieces = list(corpus._text_pieces(t, piece_chars=997))
        assert len(pieces) > 10
        assert "".join(pieces) == t
        whole = tok.encode(t, add_special_tokens=False).ids
        joined = [i for e in tok.encode_batch(pieces, add_special_tokens=False) for i in e.ids]
        assert joined == whole


def test_text_pieces_fuzz(tok):
    """Random strings over the characters that matter to the pre-tokenizer, cut very finely."""
    import random
    alpha = list("ab ñ\n\t  \n1 2.,;'sltvemdr-¿?¡!«»") + ["\u00a0", "🙂", "\u2028", "\x1c", "\r", "  ",
                                                          "\n\n", "'s", "'ll", " '", "\u3000"]
    rng = random.Random(0)
    for _ in range(500):
        t = "".join(rng.choice(alpha) for _ in range(rng.randint(1, 200)))
        pieces = list(corpus._text_pieces(t, piece_chars=rng.randint(1, 20)))
        assert "".join(pieces) == t
        joined = [i for e in tok.encode_batch(pieces, add_special_tokens=False) for i in e.ids]
        assert joined == tok.encode(t, add_special_tokens=False).ids, repr(t)


def test_text_pieces_without_safe_cut_stay_whole():
    t = "x" * 50_000
    assert list(corpus._text_pieces(t, piece_chars=1000)) == [t]


# ------------------------------------------------------------------------------------------ token store

def test_store_layout_and_round_trip(store, varied_corpus, tok):
    _, docs = varied_corpus
    assert store.n_docs == len(docs)
    assert store.tokens.dtype == np.uint16 and isinstance(store.tokens, np.memmap)
    assert store.doc_starts.dtype == np.int64 and len(store.doc_starts) == len(docs) + 1
    assert store.doc_starts[0] == 0 and store.doc_starts[-1] == len(store) - 1
    assert np.all(store.tokens[store.doc_starts] == store.sep_id)
    # SEP only at document boundaries
    assert np.count_nonzero(np.asarray(store.tokens) == store.sep_id) == len(docs) + 1
    for i in range(len(docs)):
        assert tok.decode(store.document(i).tolist()) == docs[i]
        assert store.document(i).tolist() == tok.encode(docs[i], add_special_tokens=False).ids
    assert (store.sep_id, store.eos_id, store.pad_id) == (0, 1, 2)
    assert store.vocab_size == tok.get_vocab_size()


def test_store_header(store, varied_corpus, tok_path):
    raw = store.path.read_bytes()
    assert raw[:8] == dataset.STORE_MAGIC
    n = int.from_bytes(raw[8:12], "little")
    header = json.loads(raw[12:12 + n])
    assert header["dtype"] == "uint16" and header["version"] == dataset.STORE_VERSION
    assert header["n_tokens"] == len(store) and header["n_docs"] == store.n_docs
    assert header["tokenizer_hash"] == tokenizer.tokenizer_hash(tok_path)
    import hashlib
    assert header["corpus_hash"] == hashlib.sha256(varied_corpus[0].read_bytes()).hexdigest()
    assert store.path.name == f"tokens-{header['corpus_hash'][:12]}-{header['tokenizer_hash'][:12]}.bin"
    assert len(raw) == header["file_size"]


def test_store_cache_reused_without_tokenizing(varied_corpus, tok_path, tmp_path):
    s1 = dataset.load_or_build_token_store(varied_corpus[0], tok_path, tmp_path, quiet=True)
    mtime = s1.path.stat().st_mtime_ns
    time.sleep(0.01)
    s2 = dataset.load_or_build_token_store(varied_corpus[0], tok_path, tmp_path, quiet=True)
    assert s2.path == s1.path and s2.path.stat().st_mtime_ns == mtime
    assert np.array_equal(s1.tokens, s2.tokens)
    assert [p.name for p in tmp_path.iterdir()] == [s1.path.name]     # no temp files left


def test_store_encoded_by_tiktoken_is_the_same_file(varied_corpus, tok_path, tmp_path, monkeypatch, caplog):
    """A corpus large enough for tiktoken (FAST_ENCODER_MIN_BYTES, lowered here) gives the very
    bytes of the store the tokenizers library builds; analyze-corpus counts the same tokens."""
    import analysis
    slow = dataset.load_or_build_token_store(varied_corpus[0], tok_path, tmp_path / "slow", quiet=True)
    slow_counts = analysis.analyze_corpus(varied_corpus[0], tokenizer_path=tok_path, quiet=True)["tokens"]
    used = []
    monkeypatch.setattr(dataset, "FAST_ENCODER_MIN_BYTES", 0)
    monkeypatch.setattr(dataset, "fast_plain_encoder", lambda tok: used.append(tokenizer.fast_plain_encoder(tok)) or used[-1])
    with caplog.at_level("INFO", logger="mini_llm"):
        fast = dataset.load_or_build_token_store(varied_corpus[0], tok_path, tmp_path / "fast", quiet=True)
    assert used and used[-1] is not None                       # tiktoken encoded it
    assert "MB/s, tiktoken) ->" in caplog.text
    assert fast.path.read_bytes() == slow.path.read_bytes()
    assert analysis.analyze_corpus(varied_corpus[0], tokenizer_path=tok_path, quiet=True)["tokens"] == slow_counts
    assert len(used) == 2


def test_store_truncated_or_corrupt_is_rebuilt_or_refused(varied_corpus, tok_path, tmp_path):
    s = dataset.load_or_build_token_store(varied_corpus[0], tok_path, tmp_path, quiet=True)
    good = s.path.read_bytes()
    del s
    for broken in (good[:-10], good[:5000], b"", b"garbage" * 1000, good[:100] + b"X" + good[101:]):
        with open(good_path := tmp_path / _only_file(tmp_path), "wb") as f:
            f.write(broken)
        with pytest.raises(UserError, match="cannot be used"):
            dataset.open_token_store(good_path)
        s = dataset.load_or_build_token_store(varied_corpus[0], tok_path, tmp_path, quiet=True)
        assert s.path.read_bytes() == good


def _only_file(folder):
    (name,) = [p.name for p in folder.iterdir()]
    return name


def test_store_foreign_refused_on_explicit_path(store, tok_path):
    with pytest.raises(UserError, match="another tokenizer"):
        dataset.open_token_store(store.path, tokenizer_hash="0" * 64)
    with pytest.raises(UserError, match="another corpus"):
        dataset.open_token_store(store.path, corpus_hash="0" * 64)
    with pytest.raises(UserError, match="not found"):
        dataset.open_token_store(store.path.parent / "missing.bin")
    ok = dataset.open_token_store(store.path, tokenizer_hash=tokenizer.tokenizer_hash(tok_path))
    assert len(ok) == len(store)


def test_store_changed_corpus_gets_new_file(tok_path, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("uno dos\n<|doc|>\ntres\n", encoding="utf-8")
    s1 = dataset.load_or_build_token_store(corpus, tok_path, tmp_path / "cache", quiet=True)
    corpus.write_text("uno dos\n<|doc|>\ntres cuatro\n", encoding="utf-8")
    s2 = dataset.load_or_build_token_store(corpus, tok_path, tmp_path / "cache", quiet=True)
    assert s1.path != s2.path and s2.n_docs == 2


def test_store_literal_separator_inside_text_is_not_a_boundary(tok_path, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("texto con <|doc|> dentro\n<|doc|>\notro\n", encoding="utf-8")
    s = dataset.load_or_build_token_store(corpus, tok_path, tmp_path / "cache", quiet=True)
    assert s.n_docs == 2
    assert np.count_nonzero(np.asarray(s.tokens) == 0) == 3


def test_store_empty_corpus_refused(tok_path, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("<|doc|>\n \n<|doc|>\n", encoding="utf-8")
    with pytest.raises(UserError, match="no documents"):
        dataset.load_or_build_token_store(corpus, tok_path, tmp_path / "cache", quiet=True)
    assert not list((tmp_path / "cache").iterdir())
    with pytest.raises(UserError, match="not found"):
        dataset.load_or_build_token_store(tmp_path / "missing.txt", tok_path, tmp_path / "cache")


def test_dtype_choice_and_uint32_store(tok_path, tmp_path):
    assert dataset.token_dtype(300) == np.uint16
    assert dataset.token_dtype(65535) == np.uint16
    assert dataset.token_dtype(65536) == np.uint32
    # a real tokenizer with more than 65535 tokens: extra added tokens that never occur in text
    big = tokenizer.load_tokenizer(tok_path)
    extra = [f"\u2603{i}\u2603" for i in range(66_000 - big.get_vocab_size())]
    big.add_tokens(extra)
    big.save(str(tmp_path / "big.json"))
    assert big.token_to_id(extra[-1]) == 65_999
    corpus = tmp_path / "c.txt"
    docs = ["¿Dónde está el niño?", f"¡Aquí! «Mañana» 🙂 {extra[-1]}"]
    corpus.write_text("\n<|doc|>\n".join(docs), encoding="utf-8")
    s = dataset.load_or_build_token_store(corpus, tmp_path / "big.json", tmp_path / "cache", quiet=True)
    assert s.tokens.dtype == np.uint32 and s.vocab_size == 66_000
    assert int(s.tokens.max()) >= 65536                  # the added token in the second document
    assert [big.decode(s.document(i).tolist()) for i in range(2)] == docs


def test_store_pickles_by_path(store):
    blob = pickle.dumps(store)
    assert len(blob) < 10_000
    again = pickle.loads(blob)
    assert np.array_equal(again.tokens[:100], store.tokens[:100])
    assert np.array_equal(again.doc_starts, store.doc_starts)


# ------------------------------------------------------------------------------------------ split

def test_split_documents_deterministic_disjoint_complete():
    tr, va = dataset.split_documents(1000, 0.1, seed=7)
    tr2, va2 = dataset.split_documents(1000, 0.1, seed=7)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert len(va) == 100 and len(tr) == 900
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(1000))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    _, va3 = dataset.split_documents(1000, 0.1, seed=8)
    assert not np.array_equal(va, va3)


@pytest.mark.parametrize("n,frac,n_val", [(2, 0.01, 1), (10, 0.05, 1), (3, 0.9, 2), (1, 0.1, 0), (50, 0.0, 0)])
def test_split_documents_edges(n, frac, n_val):
    tr, va = dataset.split_documents(n, frac, seed=0)
    assert len(va) == n_val and len(tr) == n - n_val


def test_split_documents_refuses_bad_fraction():
    with pytest.raises(UserError):
        dataset.split_documents(10, 1.0, seed=0)
    with pytest.raises(UserError):
        dataset.split_documents(10, -0.1, seed=0)


def test_make_split_windows_by_documents(store):
    tr, va, warning = dataset.make_split_windows(store, 64, 32, 0.1, seed=3)
    assert warning is None
    train_ids, val_ids = dataset.split_documents(store.n_docs, 0.1, seed=3)
    assert _owners(store, tr) <= set(train_ids.tolist())
    assert _owners(store, va) <= set(val_ids.tolist())


def test_single_document_split_inside(tok_path, tmp_path):
    corpus = tmp_path / "one.txt"
    corpus.write_text(corpus_slice("wiki_es.txt", n_chars=20_000).replace("<|doc|>\n", ""), encoding="utf-8")
    s = dataset.load_or_build_token_store(corpus, tok_path, tmp_path / "cache", quiet=True)
    assert s.n_docs == 1
    tr, va, warning = dataset.make_split_windows(s, 64, 48, 0.1, seed=0)
    assert warning and "single document" in warning
    train_t, val_t = _targets(tr), _targets(va)
    assert not train_t & val_t
    assert train_t | val_t == set(range(1, len(s)))
    n_val = round((len(s) - 1) * 0.1)
    assert val_t == set(range(len(s) - n_val, len(s)))
    tr0, va0, _ = dataset.make_split_windows(s, 64, 48, 0.0, seed=0)
    assert len(va0) == 0 and _targets(tr0) == set(range(1, len(s)))


# ------------------------------------------------------------------------------------------ windows

def _targets(windows) -> set:
    out = set()
    for s, n in windows.tolist():
        out.update(range(s + 1, s + n))
    return out


def _owners(store, windows) -> set:
    """Documents whose tokens are targets of the windows (a SEP target belongs to the doc it ends)."""
    t = np.array(sorted(_targets(windows)))
    return set((np.searchsorted(store.doc_starts, t, side="left") - 1).tolist())


@pytest.mark.parametrize("block,stride", [(16, 16), (32, 8), (64, 48), (128, 100)])
def test_windows_cover_every_token(store, block, stride):
    w = dataset.make_windows(store, np.arange(store.n_docs), block, stride)
    assert w.dtype == np.int64 and w.shape[1] == 2
    assert np.all(w[:, 1] <= block + 1) and np.all(w[:, 1] >= 2)
    assert np.all(np.diff(w[:, 0]) >= 0)
    assert _targets(w) == set(range(1, len(store)))


def test_windows_stride_and_last_window_reaches_doc_end(store):
    block, stride = 32, 12
    w = dataset.make_windows(store, np.arange(store.n_docs), block, stride)
    lengths = store.doc_lengths()
    long_docs = np.flatnonzero(lengths + 1 > block)
    assert len(long_docs) > 5
    for i in long_docs.tolist():
        lo, hi = store.doc_starts[i], store.doc_starts[i + 1]
        starts = w[(w[:, 0] >= lo) & (w[:, 0] + w[:, 1] - 1 <= hi), 0]
        assert starts[0] == lo                              # first window starts at the doc's SEP
        assert starts[-1] + block == hi                     # last window ends on the next SEP
        assert np.all(np.diff(starts[:-1]) == stride)
        assert 0 < starts[-1] - starts[-2] <= stride


def test_windows_pack_short_documents(store):
    block = 128
    w = dataset.make_windows(store, np.arange(store.n_docs), block, block)
    short = int(np.count_nonzero(store.doc_lengths() + 1 <= block))
    n_short_windows = sum(1 for s, n in w.tolist() if np.count_nonzero(store.tokens[s + 1:s + n] == 0) >= 2)
    assert n_short_windows > 0
    assert len(w) < short + 1 + sum(-(-(int(l) + 1 - block) // block) + 1 for l in store.doc_lengths() if l + 1 > block)
    # no window is mostly padding (the corpus is one long run of selected documents)
    assert np.all(w[:, 1] >= (block + 1) / 2)


def test_windows_stay_inside_selected_documents(store):
    rng = np.random.default_rng(1)
    ids = np.sort(rng.choice(store.n_docs, size=store.n_docs // 3, replace=False))
    for block, stride in [(16, 8), (64, 64)]:
        w = dataset.make_windows(store, ids, block, stride)
        assert _owners(store, w) == set(ids.tolist())
        # every token of the selected documents (their trailing SEP included) is a target
        want = set()
        for i in ids.tolist():
            want.update(range(store.doc_starts[i] + 1, store.doc_starts[i + 1] + 1))
        assert _targets(w) == want
        # and no input token comes from an unselected document (first inputs: a SEP or a token of one)
        first_owner = np.searchsorted(store.doc_starts, w[:, 0], side="right") - 1
        assert set(first_owner.tolist()) <= set(ids.tolist())


def test_windows_synthetic_lengths_and_bad_stride():
    # doc i has lengths[i] tokens; a plain document index is all make_windows needs
    lengths = np.array([3, 100, 5, 5, 5, 40, 1, 1, 300])
    starts = np.concatenate([[0], np.cumsum(lengths + 1)])
    st = SimpleNamespace(doc_starts=starts, n_docs=len(lengths))
    w = dataset.make_windows(st, np.arange(len(lengths)), 32, 16)
    assert _targets(w) == set(range(1, int(starts[-1]) + 1))
    # documents 2, 3, 4 (5 tokens each) share one window that starts at doc 2's SEP
    assert [int(starts[2]), 33] in w.tolist() or [int(starts[2]), 19] in w.tolist()
    with pytest.raises(UserError, match="stride"):
        dataset.make_windows(st, np.arange(3), 32, 33)
    with pytest.raises(UserError, match="stride"):
        dataset.make_windows(st, np.arange(3), 32, 0)
    assert dataset.make_windows(st, [], 32, 16).shape == (0, 2)


def test_windows_fast_on_many_documents():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 2000, size=100_000)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)])
    st = SimpleNamespace(doc_starts=starts, n_docs=len(lengths))
    t0 = time.perf_counter()
    w = dataset.make_windows(st, np.arange(len(lengths)), 256, 128)
    assert time.perf_counter() - t0 < 5.0
    assert w[:, 1].max() <= 257 and w[0, 0] == 0


# ------------------------------------------------------------------------------------------ dataset + sampler

def test_window_dataset_items(store):
    block = 64
    w = dataset.make_windows(store, np.arange(store.n_docs), block, 32)
    ds = dataset.WindowDataset(store, w, block)
    assert len(ds) == len(w)
    for i in [0, len(ds) // 2, len(ds) - 1]:
        x, y = ds[i]
        s, n = w[i]
        assert x.dtype == torch.long and y.dtype == torch.long and x.shape == y.shape == (block,)
        span = torch.from_numpy(store.tokens[s:s + n].astype(np.int64))
        assert torch.equal(x[:n - 1], span[:-1]) and torch.equal(y[:n - 1], span[1:])
        assert torch.all(x[n - 1:] == store.pad_id) and torch.all(y[n - 1:] == -1)
    assert ds[0][0][0] == store.sep_id                       # the first window starts with the BOS/SEP
    # a short window is padded
    short = dataset.WindowDataset(store, np.array([[0, 5]]), block)
    x, y = short[0]
    assert torch.all(y[4:] == -1) and torch.all(x[4:] == store.pad_id)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=dataset.ResumableSampler(len(ds), 8, seed=0))
    xb, yb = next(iter(loader))
    assert xb.shape == (8, block)


def test_sampler_deterministic_complete_and_resumable():
    s = dataset.ResumableSampler(103, 10, seed=5, epoch=2)
    batches = list(s)
    assert len(batches) == len(s) == 11 and len(batches[-1]) == 3
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert batches == list(dataset.ResumableSampler(103, 10, seed=5, epoch=2))
    assert batches != list(dataset.ResumableSampler(103, 10, seed=5, epoch=3))
    assert batches != list(dataset.ResumableSampler(103, 10, seed=6, epoch=2))
    resumed = dataset.ResumableSampler(103, 10, seed=5, epoch=2, start_batch=4)
    assert list(resumed) == batches[4:] and len(resumed) == 7
    s.set_epoch(3)
    assert list(s) == list(dataset.ResumableSampler(103, 10, seed=5, epoch=3))


def test_sampler_deals_batches_to_ranks_from_a_global_position():
    whole = list(dataset.ResumableSampler(101, 8, seed=1))                  # 13 batches, the last of 5
    for start in (0, 3):
        shards = [list(dataset.ResumableSampler(101, 8, seed=1, start_batch=start, rank=r, world_size=4))
                  for r in range(4)]
        assert len({len(sh) for sh in shards}) == 1                        # every rank runs as many batches
        end = start + (13 - start) // 4 * 4
        for r, sh in enumerate(shards):                                     # round-robin from the position
            assert sh == whole[start + r:end:4]
        assert dataset.ResumableSampler(101, 8, seed=1, start_batch=start, world_size=4).epoch_end() == end
    mixture = dataset.MixtureSampler([30, 12], np.array([20, 10]), 4, seed=3)
    shards = [list(dataset.MixtureSampler([30, 12], np.array([20, 10]), 4, seed=3, rank=r, world_size=2))
              for r in range(2)]
    assert [b for pair in zip(*shards) for b in pair] == list(mixture)[:8]  # 8 of 8 batches: none left out
    with pytest.raises(ValueError):
        dataset.ResumableSampler(10, 2, seed=0, rank=2, world_size=2)


def test_negative_seed_and_empty_sampler():
    tr, va = dataset.split_documents(20, 0.1, seed=-3)
    assert len(va) == 2 and np.array_equal(va, dataset.split_documents(20, 0.1, seed=-3)[1])
    assert list(dataset.ResumableSampler(5, 2, seed=-1)) == list(dataset.ResumableSampler(5, 2, seed=-1))
    empty = dataset.ResumableSampler(0, 4, seed=0)
    assert len(empty) == 0 and list(empty) == []


def test_store_unwritable_cache_is_a_user_error(tok_path, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("uno\n<|doc|>\ndos\n", encoding="utf-8")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match="cannot write .*tokens-.*is a file, not a folder"):
        dataset.load_or_build_token_store(corpus, tok_path, not_a_dir, quiet=True)


def test_first_invalid_utf8_names_the_line_and_byte_across_block_ends(tmp_path):
    """A multi-byte character cut by a block's end is not an error; the real bad byte is found
    with its line and byte offset whatever the block size."""
    from corpus import first_invalid_utf8
    good = "¿Qué año?\nLa canción «niño» — ñandú\n".encode("utf-8")
    path = tmp_path / "t.txt"
    path.write_bytes(good * 3 + b"caf\xe9\n" + good)
    for block in (1, 2, 3, 5, 7, 64, 1 << 20):
        assert first_invalid_utf8(path, block=block) == (7, len(good) * 3 + 3, "invalid continuation byte")
    path.write_bytes(good * 2)
    assert all(first_invalid_utf8(path, block=b) is None for b in (1, 3, 1 << 20))
    path.write_bytes(good + "ñ".encode("utf-8")[:1])                    # cut at the end of the file
    assert first_invalid_utf8(path, block=4)[:2] == (3, len(good))
