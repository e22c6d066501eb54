"""The memory-mapped token store of a corpus, the train/val split and document-aware windows.

Reading corpus files is corpus.py's; the tokenizer (training, loading, special tokens) is in
tokenizer.py; corpus analysis (analyze-corpus) is in analysis.py, which uses this module's text
encoder.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
import zlib
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from common import Progress, UserError, atomic_path, file_sha256, log, require_file
from config import DEFAULT_VAL_FRACTION
from corpus import _document_bytes, _text_pieces, read_documents
from tokenizer import as_identity, encode_plain, fast_plain_encoder, special_ids, specials_as_text, tokenizer_separator

# ============================================================================ reading, token store, windows

ENCODE_BATCH_CHARS = 4_000_000           # characters handed to one encode_batch call
FAST_ENCODER_MIN_BYTES = 16_000_000      # corpora from this size on are encoded by tiktoken where it can


# ---------------------------------------------------------------------------------------- token store
#
# File layout (little endian):
#   [0, HEADER_BYTES)      magic b"MLLMTOK\0", then uint32 header JSON length, then the header JSON
#                          (format version, dtype, n_tokens, n_docs, vocab_size, sep/eos/pad ids,
#                          tokenizer_hash, corpus_hash, separator, offsets, file_size, and the
#                          CRC-32 of everything after the header), zero padded
#   tokens_offset          n_tokens ids (uint16 or uint32): SEP d1 SEP d2 ... SEP dn SEP
#   doc_starts_offset      n_docs + 1 int64: index of the SEP before each document, then the final SEP
# The header is written last, so a file cut short or never finished fails the checks on load; the
# checksum, verified at every open (~1 GB/s), catches a flipped bit or an overwritten block.

STORE_MAGIC = b"MLLMTOK\0"
STORE_VERSION = 2                       # 2: the header holds a CRC-32 of the data
CHECKSUM_CHUNK = 1 << 24
HEADER_BYTES = 4096


class TokenStore:
    """A corpus as one memory-mapped stream of token ids plus its document index.

    Attributes: tokens (np.memmap, 1-D), doc_starts (np.ndarray int64, n_docs + 1), n_docs,
    vocab_size, sep_id, eos_id, pad_id, tokenizer_hash, corpus_hash, separator, path, header.
    Document i is tokens[doc_starts[i] + 1 : doc_starts[i + 1]]; the SEP before it acts as BOS.
    Pickling keeps only the path (DataLoader workers re-open the map, never copy the tokens).
    """

    def __init__(self, path: str | os.PathLike, header: dict):
        self.path = Path(path)
        self.header = header
        self.n_docs = int(header["n_docs"])
        self.vocab_size = int(header["vocab_size"])
        self.sep_id, self.eos_id, self.pad_id = int(header["sep_id"]), int(header["eos_id"]), int(header["pad_id"])
        self.tokenizer_hash, self.corpus_hash = header["tokenizer_hash"], header["corpus_hash"]
        self.separator = header["separator"]
        self._open()

    def _open(self) -> None:
        h = self.header
        self.tokens = np.memmap(self.path, dtype=np.dtype(h["dtype"]), mode="r",
                                offset=h["tokens_offset"], shape=(h["n_tokens"],))
        self.doc_starts = np.fromfile(self.path, dtype="<i8", count=self.n_docs + 1,
                                      offset=h["doc_starts_offset"]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.header["n_tokens"])

    def doc_lengths(self) -> np.ndarray:
        """Tokens per document (without its SEP)."""
        return np.diff(self.doc_starts) - 1

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.doc_starts[i] + 1: self.doc_starts[i + 1]]

    def __getstate__(self):
        return {"path": str(self.path), "header": self.header}

    def __setstate__(self, state):
        self.__init__(state["path"], state["header"])

    def __repr__(self) -> str:
        return (f"TokenStore({str(self.path)!r}, tokens={len(self):,}, docs={self.n_docs:,}, "
                f"dtype={self.header['dtype']})")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65535), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def token_store_path(cache_dir: str | os.PathLike, corpus_hash: str, tok_hash: str) -> Path:
    return Path(cache_dir) / f"tokens-{corpus_hash[:12]}-{tok_hash[:12]}.bin"


def _read_header(path: Path) -> dict:
    """Parse and sanity-check a token store header; ValueError with the reason if it is not one."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:8] != STORE_MAGIC:
        raise ValueError("not a mini-llm token file (bad magic or too short)")
    n = int.from_bytes(head[8:12], "little")
    try:
        header = json.loads(head[12:12 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("corrupt header")
    if header.get("version") != STORE_VERSION:
        raise ValueError(f"format version {header.get('version')} (this program reads {STORE_VERSION})")
    try:
        itemsize = np.dtype(header["dtype"]).itemsize
        expected = header["doc_starts_offset"] + 8 * (header["n_docs"] + 1)
        consistent = (header["tokens_offset"] == HEADER_BYTES
                      and header["doc_starts_offset"] == HEADER_BYTES + itemsize * header["n_tokens"]
                      and header["file_size"] == expected and header["n_docs"] >= 1)
    except (KeyError, TypeError):
        raise ValueError("incomplete header")
    if not consistent:
        raise ValueError("inconsistent header")
    if size != header["file_size"]:
        raise ValueError(f"truncated or extended: {size} bytes instead of {header['file_size']}")
    return header


def open_token_store(path: str | os.PathLike, tokenizer_hash: Optional[str] = None,
                     corpus_hash: Optional[str] = None, separator: Optional[str] = None) -> TokenStore:
    """Open an existing token file, checking its header (and the hashes/separator when given).
    UserError with the reason when it is not valid or does not match."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"token file not found: {path}")
    try:
        store = _open_checked(path, tokenizer_hash, corpus_hash, separator)
    except ValueError as e:
        raise UserError(f"token file {path} cannot be used: {e}; delete it to rebuild it")
    return store


def _data_checksum(path: Path) -> int:
    """CRC-32 of a token file's data: everything after the header."""
    crc = 0
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        while block := f.read(CHECKSUM_CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def _open_checked(path: Path, tokenizer_hash, corpus_hash, separator) -> TokenStore:
    """TokenStore at `path`, its header and contents checked (_check_store); ValueError if unusable."""
    header = _read_header(path)
    if _data_checksum(path) != header.get("checksum"):
        raise ValueError("its data does not match its checksum (a damaged file)")
    store = TokenStore(path, header)
    _check_store(store, tokenizer_hash, corpus_hash, separator)
    return store


def _check_store(store: TokenStore, tokenizer_hash, corpus_hash, separator) -> None:
    if tokenizer_hash is not None and store.tokenizer_hash != tokenizer_hash:
        raise ValueError("it was made with another tokenizer")
    if corpus_hash is not None and store.corpus_hash != corpus_hash:
        raise ValueError("it was made from another corpus (or the corpus changed)")
    if separator is not None and store.separator != separator:
        raise ValueError(f"it was made with separator {store.separator!r}, not {separator!r}")
    ds = store.doc_starts
    if ds[0] != 0 or ds[-1] != len(store) - 1 or np.any(np.diff(ds) < 2) or np.any(store.tokens[ds] != store.sep_id):
        raise ValueError("its document index does not match its tokens")


def load_or_build_token_store(corpus_path: str | os.PathLike, tokenizer, cache_dir: str | os.PathLike,
                              separator: Optional[str] = None, quiet: bool = False) -> TokenStore:
    """The token store of `corpus_path` under `tokenizer` (a TokenizerIdentity or the path of a
    tokenizer.json), cached in `cache_dir` as
    tokens-<corpus sha256[:12]>-<tokenizer sha256[:12]>.bin.

    A valid cache is reused without tokenizing; a stale, foreign or truncated one is rebuilt.
    `separator`: the corpus separator line; None means the tokenizer's own separator (`<|doc|>`
    unless init-tokenizer was given another --separator).
    """
    corpus_path = require_file(corpus_path, "corpus file")
    identity = as_identity(tokenizer)
    tok_hash, tok = identity.sha256, identity.tokenizer
    if separator is None:
        separator = tokenizer_separator(tok)
    c_hash = file_sha256(corpus_path)
    path = token_store_path(cache_dir, c_hash, tok_hash)
    if path.exists():
        try:
            store = _open_checked(path, tok_hash, c_hash, separator)
            log.info(f"token store: reusing {path} ({len(store):,} tokens, {store.n_docs:,} documents)")
            return store
        except (ValueError, OSError) as e:
            log.warning(f"token store {path} is not usable ({e}): rebuilding it")
    try:
        build_token_store(corpus_path, tok, tok_hash, c_hash, path, separator, quiet)
    except OSError as e:
        raise UserError(f"cannot write the token cache {path} ({e.strerror or e}); "
                        f"free disk space or choose another output folder")
    return _open_checked(path, tok_hash, c_hash, separator)


_PARALLELISM_IS_OURS = False    # True once we set TOKENIZERS_PARALLELISM ourselves


@contextlib.contextmanager
def tokenizer_parallelism(enabled: bool = True):
    """Let the tokenizers library encode on all cores inside the block, unless the user chose.

    Afterwards the library's parallelism is turned off again: DataLoader workers forked later never
    tokenize, and this keeps its fork warning quiet. A user's own TOKENIZERS_PARALLELISM is kept.
    """
    global _PARALLELISM_IS_OURS
    ours = enabled and (_PARALLELISM_IS_OURS or "TOKENIZERS_PARALLELISM" not in os.environ)
    if ours:
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if ours:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            _PARALLELISM_IS_OURS = True


def text_encoder(tok, corpus_bytes: int):
    """(name, a function pieces -> their ids (lists)) for encoding a corpus of `corpus_bytes`
    inside specials_as_text and tokenizer_parallelism: from FAST_ENCODER_MIN_BYTES on, tiktoken
    where it computes exactly tok's ids (tokenizer.fast_plain_encoder: 2-4x faster, checking costs
    ~1 s); else tokenizers (tokenizer.encode_plain)."""
    fast = fast_plain_encoder(tok) if corpus_bytes >= FAST_ENCODER_MIN_BYTES else None
    if fast is not None:
        return "tiktoken", lambda pieces: fast(pieces, _encoder_threads())
    return "tokenizers", lambda pieces: encode_plain(tok, pieces)


def _encoder_threads() -> int:
    """All the cores this process may use, unless TOKENIZERS_PARALLELISM says otherwise."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "true").lower() in ("0", "false", "off", "no"):
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _encode_batches(corpus_path: Path, separator: str) -> Iterator[tuple[list[str], list[int], int]]:
    """(pieces, pieces per document, corpus bytes) batches of about ENCODE_BATCH_CHARS characters."""
    pieces: list[str] = []
    pieces_per_doc: list[int] = []
    n_chars = n_bytes = 0
    for doc in read_documents(corpus_path, separator):
        before = len(pieces)
        pieces.extend(_text_pieces(doc))
        pieces_per_doc.append(len(pieces) - before)
        n_chars += len(doc)
        n_bytes += _document_bytes(doc, separator)
        if n_chars >= ENCODE_BATCH_CHARS:
            yield pieces, pieces_per_doc, n_bytes
            pieces, pieces_per_doc, n_chars, n_bytes = [], [], 0, 0
    if pieces:
        yield pieces, pieces_per_doc, n_bytes


def build_token_store(corpus_path: Path, tok, tok_hash: str, corpus_hash: str, out_path: Path,
                      separator: str, quiet: bool = False) -> None:
    """Tokenize the corpus into `out_path` (atomically), streaming: memory stays flat.

    Documents are gathered into batches of about ENCODE_BATCH_CHARS characters (long documents cut
    into pieces, _text_pieces, so one big document also spreads over all cores) and encoded on all
    cores (text_encoder: tiktoken or tokenizers). Both release the GIL while encoding, so one helper
    thread encodes batch k + 1 while this thread reads the corpus and writes batch k. Text inside a
    document never becomes a special token (encode_special_tokens), so a literal "<|doc|>" in the
    text cannot fake a document boundary.
    """
    from concurrent.futures import ThreadPoolExecutor

    ids = special_ids(tok)
    sep_id = ids["sep"]
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    total_bytes = corpus_path.stat().st_size
    doc_starts_parts: list[np.ndarray] = []
    n_tokens = crc = 0
    t0 = time.perf_counter()

    def put(f, array: np.ndarray) -> None:
        nonlocal crc
        array.tofile(f)
        crc = zlib.crc32(array, crc)

    def write(f, encs, pieces_per_doc) -> None:
        nonlocal n_tokens
        piece_ids = [np.array(ids, dtype=dtype) for ids in encs]
        piece_lens = np.array([len(x) for x in piece_ids], dtype=np.int64)
        first_piece = np.concatenate(([0], np.cumsum(pieces_per_doc)[:-1]))
        doc_lens = np.add.reduceat(piece_lens, first_piece)
        sep_pos = np.concatenate(([0], np.cumsum(doc_lens + 1)[:-1]))    # the SEP before each doc
        out = np.empty(int(piece_lens.sum()) + len(doc_lens), dtype=dtype)
        is_sep = np.zeros(len(out), dtype=bool)
        is_sep[sep_pos] = True
        out[is_sep] = sep_id
        out[~is_sep] = np.concatenate(piece_ids)
        put(f, out)
        doc_starts_parts.append(sep_pos + n_tokens)
        n_tokens += len(out)

    with specials_as_text(tok), tokenizer_parallelism(), atomic_path(out_path) as tmp, \
            open(tmp, "wb") as f, ThreadPoolExecutor(1) as pool, \
            Progress("tokenizing", total=total_bytes, unit="B", quiet=quiet) as progress:
        f.write(b"\0" * HEADER_BYTES)
        engine, encode = text_encoder(tok, total_bytes)
        pending = None
        for pieces, pieces_per_doc, n_bytes in _encode_batches(corpus_path, separator):
            job = (pool.submit(encode, pieces), pieces_per_doc, n_bytes)
            if pending is not None:
                write(f, pending[0].result(), pending[1])
                progress.update(pending[2])
            pending = job
        if pending is None:
            raise UserError(f"corpus {corpus_path} has no documents (only separator lines or "
                            f"whitespace); pass a corpus made by 'python main.py prepare-corpus'")
        write(f, pending[0].result(), pending[1])
        progress.update(pending[2])
        put(f, np.array([sep_id], dtype=dtype))                     # the SEP that ends the last doc
        doc_starts = np.concatenate(doc_starts_parts + [np.array([n_tokens], dtype=np.int64)])
        n_tokens += 1
        doc_starts_offset = HEADER_BYTES + dtype.itemsize * n_tokens
        assert f.tell() == doc_starts_offset
        put(f, doc_starts.astype("<i8"))
        header = {"version": STORE_VERSION, "dtype": dtype.name, "n_tokens": n_tokens,
                  "n_docs": len(doc_starts) - 1, "vocab_size": vocab_size, "sep_id": sep_id,
                  "eos_id": ids["eos"], "pad_id": ids["pad"], "tokenizer_hash": tok_hash,
                  "corpus_hash": corpus_hash, "corpus_bytes": total_bytes, "separator": separator,
                  "tokens_offset": HEADER_BYTES, "doc_starts_offset": doc_starts_offset,
                  "file_size": doc_starts_offset + 8 * len(doc_starts), "checksum": crc}
        blob = json.dumps(header).encode("utf-8")
        assert 12 + len(blob) <= HEADER_BYTES
        f.seek(0)
        f.write(STORE_MAGIC + len(blob).to_bytes(4, "little") + blob)
        f.flush()
    seconds = time.perf_counter() - t0
    log.info(f"token store: {n_tokens:,} tokens, {header['n_docs']:,} documents in {seconds:.1f}s "
             f"({total_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s, {engine}) -> {out_path}")


# ---------------------------------------------------------------------------------------- split

def _rng(*keys: int) -> np.random.Generator:
    """A numpy generator fixed by integer keys (negative seeds allowed)."""
    return np.random.default_rng([k % (1 << 64) for k in keys])


def split_documents(n_docs: int, val_fraction: float = DEFAULT_VAL_FRACTION,
                    seed: int = 1337) -> tuple[np.ndarray, np.ndarray]:
    """Split document ids into (train, val), sorted int64 arrays, by whole documents.

    Deterministic from `seed`. round(n_docs * val_fraction) validation documents, at least one when
    val_fraction > 0 and n_docs >= 2, and always at least one training document. With one document
    everything is train (make_split_windows then splits inside it).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction {val_fraction} must be in [0, 1)")
    if n_docs < 1:
        raise UserError("the corpus has no documents")
    n_val = 0
    if val_fraction > 0 and n_docs >= 2:
        n_val = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    perm = _rng(seed).permutation(n_docs)
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)


def make_split_windows(store: TokenStore, block_size: int, stride: int,
                       val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 1337):
    """(train_windows, val_windows, warning or None) for training.

    Split by whole documents (split_documents). A one-document corpus is split inside the document
    instead: the last `val_fraction` of its tokens are validation, with a warning.
    """
    if store.n_docs >= 2 or val_fraction == 0:
        train_ids, val_ids = split_documents(store.n_docs, val_fraction, seed)
        return (make_windows(store, train_ids, block_size, stride),
                make_windows(store, val_ids, block_size, stride), None)
    start, end = int(store.doc_starts[0]), int(store.doc_starts[1])
    n_val = max(1, round((end - start) * val_fraction))       # targets end - n_val + 1 .. end
    cut = end - n_val                                          # last train target; val span starts here
    if cut - start < 1:
        raise UserError(f"the corpus is a single document of {end - start} tokens: too short to hold "
                        f"out validation text; add text or pass --val-fraction 0")
    _check_block_stride(block_size, stride)
    train = _span_windows(np.array([start]), np.array([cut]), block_size, stride)
    val = _span_windows(np.array([cut]), np.array([end]), block_size, stride)
    warning = (f"the corpus has a single document: its last {n_val:,} tokens "
               f"({100 * val_fraction:.1f}%) are the validation set; more documents give a fairer split")
    return train, val, warning


# ---------------------------------------------------------------------------------------- windows

def _check_block_stride(block_size: int, stride: int) -> None:
    if block_size < 1:
        raise UserError(f"block_size {block_size} must be positive")
    if not 1 <= stride <= block_size:
        raise UserError(f"--stride {stride} must be between 1 and the block size {block_size} "
                        f"(a larger stride would skip tokens)")


def _span_windows(starts: np.ndarray, ends: np.ndarray, block_size: int, stride: int) -> np.ndarray:
    """Windows over spans [start, end] of the stream (end inclusive, its last target): one window
    when the span fits, else windows of block_size + 1 tokens every `stride`, the last one ending
    exactly at `end`. Vectorised; rows [start, length] sorted by start."""
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    n_targets = ends - starts
    fits = n_targets <= block_size
    short = np.stack([starts[fits], n_targets[fits] + 1], axis=1)
    ls, le, ln = starts[~fits], ends[~fits], n_targets[~fits]
    # regular windows at start + k * stride while they end before `end`, then one ending at `end`
    n_regular = -(-(ln - block_size) // stride)                 # ceil((n - block) / stride) >= 1
    counts = n_regular + 1
    owner = np.repeat(np.arange(len(ls)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    win_start = np.where(k < n_regular[owner], ls[owner] + k * stride, le[owner] - block_size)
    long = np.stack([win_start, np.full(len(win_start), block_size + 1, np.int64)], axis=1)
    out = np.concatenate([short, long]).astype(np.int64).reshape(-1, 2)
    return out[np.argsort(out[:, 0], kind="stable")]


def make_windows(store: TokenStore, doc_ids, block_size: int, stride: int) -> np.ndarray:
    """Training windows over the documents `doc_ids`: an (N, 2) int64 array of [start, length].

    A window is the contiguous stream span tokens[start : start + length], length <= block_size + 1
    (inputs are span[:-1], targets span[1:]). Document i is the span from its SEP to the next SEP,
    so the target of its last token is the SEP, never a token of another document.
    - A long document (> block_size targets) gets windows every `stride` tokens from its SEP, the
      last one ending at its final SEP; every token is a target at least once.
    - Short documents that are consecutive both in `doc_ids` and in the stream are packed greedily
      into one window. A window that would still be under half full is widened to block_size + 1
      tokens inside the same run of consecutive selected documents (re-reading the head of the next
      document or the tail of the previous one), so no window is mostly padding unless the whole
      run is shorter than that. No window reaches a document outside `doc_ids`.
    """
    _check_block_stride(block_size, stride)
    doc_ids = np.unique(np.asarray(doc_ids, dtype=np.int64))
    if len(doc_ids) == 0:
        return np.zeros((0, 2), np.int64)
    if doc_ids[0] < 0 or doc_ids[-1] >= store.n_docs:
        raise ValueError(f"doc_ids out of range [0, {store.n_docs})")
    ds = store.doc_starts
    starts, ends = ds[doc_ids], ds[doc_ids + 1]
    is_long = ends - starts > block_size
    windows = [_span_windows(starts[is_long], ends[is_long], block_size, stride)]

    # runs of consecutive selected documents: [run_start, run_end] stream spans
    new_run = np.concatenate(([True], np.diff(doc_ids) != 1))
    run_id = np.cumsum(new_run) - 1
    run_lo = starts[new_run]
    run_hi = ends[np.concatenate((new_run[1:], [True]))]
    half = (block_size + 1) / 2
    packed = []
    s_list, e_list, r_list = starts[~is_long].tolist(), ends[~is_long].tolist(), run_id[~is_long].tolist()
    lo_list, hi_list = run_lo.tolist(), run_hi.tolist()
    cur_s = cur_e = cur_r = None
    for s, e, r in itertools.chain(zip(s_list, e_list, r_list), [(None, None, None)]):
        if cur_s is not None and (s is None or r != cur_r or s != cur_e or e - cur_s > block_size):
            ws, we = cur_s, cur_e                      # close the current group [cur_s, cur_e]
            if we - ws + 1 < half:
                lo, hi = lo_list[cur_r], hi_list[cur_r]
                we = min(hi, ws + block_size)
                ws = max(lo, we - block_size)
            packed.append((ws, we - ws + 1))
            cur_s = None
        if s is None:
            break
        if cur_s is None:
            cur_s, cur_r = s, r
        cur_e = e
    windows.append(np.array(packed, dtype=np.int64).reshape(-1, 2))
    out = np.concatenate(windows)
    return out[np.argsort(out[:, 0], kind="stable")]


class WindowDataset:
    """torch Dataset over windows: item i -> (x, y) LongTensors of shape (block_size,).

    x = span[:-1] padded with pad_id, y = span[1:] padded with -1 (ignored by the loss)."""

    def __init__(self, store: TokenStore, windows: np.ndarray, block_size: int):
        self.store, self.block_size = store, block_size
        self.windows = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
        if len(self.windows) and self.windows[:, 1].max() > block_size + 1:
            raise ValueError("a window is longer than block_size + 1")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i):
        import torch
        start, length = self.windows[i]
        span = torch.from_numpy(self.store.tokens[start: start + length].astype(np.int64))
        n = length - 1
        x = torch.full((self.block_size,), self.store.pad_id, dtype=torch.long)
        y = torch.full((self.block_size,), -1, dtype=torch.long)
        x[:n] = span[:-1]
        y[:n] = span[1:]
        return x, y


class _EpochBatches:
    """What a batch sampler of one epoch shares: subclasses give indices() and num_batches(), and
    set `batch_size`, `start_batch`, `rank` and `world_size`.

    Sharding (DDP) is by batch, so the data position is global and means the same at any number
    of ranks: from `start_batch` on, the epoch's batches are dealt round-robin, rank r taking
    batches start_batch + r, start_batch + r + world_size, ... up to epoch_end() (the last
    (num_batches - start_batch) % world_size batches are left out, so every rank runs as many).
    With one rank: every batch from start_batch on (the last one may be smaller)."""

    rank, world_size = 0, 1

    def _check_rank(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} not in [0, {self.world_size})")

    def epoch_end(self) -> int:
        """The global batch index this epoch stops at (num_batches with one rank)."""
        start = min(self.start_batch, self.num_batches())
        return start + (self.num_batches() - start) // self.world_size * self.world_size

    def __len__(self) -> int:
        return max(0, self.epoch_end() - self.start_batch) // self.world_size

    def __iter__(self):
        idx = self.indices()
        for b in range(self.start_batch + self.rank, self.epoch_end(), self.world_size):
            yield idx[b * self.batch_size:(b + 1) * self.batch_size].tolist()


class ResumableSampler(_EpochBatches):
    """Batch sampler: a permutation of range(n) fixed by (seed, epoch), cut into batches.

    - `start_batch` skips the batches already done (exact resume inside an epoch).
    - `rank` / `world_size`: this rank's share of the batches (_EpochBatches).
    - The last batch may be smaller (drop_last False). Use as DataLoader(batch_sampler=...).
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        if n < 0 or batch_size < 1:
            raise ValueError(f"need n >= 0 and batch_size >= 1 (got n={n}, batch_size={batch_size})")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._check_rank()
        self.epoch, self.start_batch = epoch, start_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> np.ndarray:
        """The epoch's window indices, in order (the same on every rank)."""
        return _rng(self.seed, self.epoch).permutation(self.n)

    def num_batches(self) -> int:
        """Batches in the whole epoch (all ranks together)."""
        return math.ceil(self.n / self.batch_size)


# ---------------------------------------------------------------------------------------- mixtures

class ConcatWindows:
    """torch Dataset over the windows of several WindowDatasets (one per corpus of a mixture):
    global index `offsets[k] + i` is window i of dataset k."""

    def __init__(self, parts: list[WindowDataset]):
        self.parts = parts
        self.offsets = np.concatenate(([0], np.cumsum([len(p) for p in parts]))).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i):
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k][int(i - self.offsets[k])]


def mixture_counts(window_tokens: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Windows per epoch taken from each corpus of a mixture.

    An epoch holds as many target tokens as all the corpora's training windows together (T);
    corpus k gives weights[k] x T of them, so round(weights[k] x T / mean tokens of its windows)
    windows (at least one). A corpus smaller than its share is repeated within the epoch; a
    larger one is partly left for later epochs. `window_tokens[k]`: target tokens of each window.
    """
    total = sum(int(t.sum()) for t in window_tokens)
    return np.array([max(1, round(w * total / float(t.mean()))) for t, w in zip(window_tokens, weights)],
                    dtype=np.int64)


class MixtureSampler(_EpochBatches):
    """Batch sampler over a ConcatWindows: each epoch takes counts[k] windows of corpus k, then
    shuffles them together and cuts them into batches.

    Corpus k's windows come from an endless stream of permutations of its windows (one per cycle,
    fixed by (seed, k, cycle)); epoch e reads positions [e x counts[k], (e + 1) x counts[k]) of it,
    so a small corpus is repeated evenly and a large one is read in full before any repetition.
    Everything is a function of (seed, epoch): `start_batch` resumes inside an epoch exactly.
    Same interface as ResumableSampler (set_epoch, indices, num_batches, iteration, rank / world_size).
    """

    def __init__(self, sizes: list[int], counts: np.ndarray, batch_size: int, seed: int, epoch: int = 0,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or len(sizes) != len(counts) or min(sizes) < 1:
            raise ValueError(f"need batch_size >= 1 and a non-empty corpus per count (sizes {sizes})")
        self.rank, self.world_size = rank, world_size
        self._check_rank()
        self.sizes, self.counts = [int(s) for s in sizes], np.asarray(counts, np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(self.sizes))).astype(np.int64)
        self.batch_size, self.seed, self.epoch, self.start_batch = batch_size, seed, epoch, start_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _stream(self, k: int, start: int, n: int) -> np.ndarray:
        """Positions [start, start + n) of corpus k's endless stream of permutations."""
        size = self.sizes[k]
        out = []
        for cycle in range(start // size, (start + n - 1) // size + 1):
            perm = _rng(self.seed, 1 + k, cycle).permutation(size)
            lo, hi = max(start, cycle * size) - cycle * size, min(start + n, (cycle + 1) * size) - cycle * size
            out.append(perm[lo:hi])
        return np.concatenate(out)

    def indices(self) -> np.ndarray:
        """The epoch's global window indices, in order."""
        picks = [self.offsets[k] + self._stream(k, self.epoch * int(c), int(c)) for k, c in enumerate(self.counts)]
        mixed = np.concatenate(picks)
        return mixed[_rng(self.seed, self.epoch, 0x6D6978).permutation(len(mixed))]

    def num_batches(self) -> int:
        return math.ceil(int(self.counts.sum()) / self.batch_size)
