"""Corpus reading, tokenizer training, the memory-mapped token store, train/val split,
document-aware windows, and corpus analysis."""
from __future__ import annotations

import codecs
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from common import Progress, UserError, atomic_path, file_sha256, log, require_file

# ============================================================================ tokenizer, token store, windows
# (owned by the dataset helper)

DOC_SEPARATOR = "<|doc|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
BYTE_ALPHABET = 256                      # byte-level BPE starts from every byte value
N_SPECIAL = 3                            # separator, end-of-text, padding (ids 0, 1, 2)
MIN_VOCAB_SIZE = BYTE_ALPHABET + N_SPECIAL
DEFAULT_VAL_FRACTION = 0.05              # of documents; at least one document when > 0 (see split_documents)

# Long documents are cut into pieces of about this many characters (at safe line breaks) so that
# batch encoding spreads one big document over all cores; see _text_pieces for why the tokens are
# unchanged by the cut.
PIECE_CHARS = 16_000
ENCODE_BATCH_CHARS = 4_000_000           # characters handed to one encode_batch call
FITNESS_SAMPLE_CHARS = 2_000_000         # characters of training text used for the fitness report
FITNESS_MIN_WORD_CHARS = 8


# ---------------------------------------------------------------------------------------- reading

def read_documents(path: str | os.PathLike, separator: str = DOC_SEPARATOR) -> Iterator[str]:
    """Stream the documents of a corpus file: text between lines holding only `separator`.

    UTF-8 (a BOM is dropped). The newline before a separator line is not part of the document;
    documents that are empty or whitespace only are skipped. A file without separator lines is
    one document. Raises UserError for text that is not UTF-8 or looks binary (NUL bytes).
    """
    path = Path(path)
    sep = _separator_line(separator, "separator")
    lines: list[str] = []
    lineno = 0
    try:
        with open(path, encoding="utf-8-sig", newline=None) as f:
            for lineno, line in enumerate(f, 1):
                # cheap test first: a separator line is short
                if len(line) <= len(sep) + 4 and line.strip() == sep:
                    doc = _finish_document(lines, path)
                    lines = []
                    if doc is not None:
                        yield doc
                else:
                    lines.append(line)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid UTF-8 text (bad byte after line {lineno}: {e.reason}); "
                        f"clean it with 'python main.py prepare-corpus' first")
    doc = _finish_document(lines, path)
    if doc is not None:
        yield doc


def _separator_line(separator: str, what: str) -> str:
    """The separator line's text (`separator` stripped); UserError naming `what` if it is empty or multi-line."""
    sep = separator.strip()
    if not sep or "\n" in sep:
        raise UserError(f"{what} {separator!r} must be a non-empty single line")
    return sep


def _document_bytes(doc: str, separator: str) -> int:
    """Corpus bytes taken by `doc` and its separator line (for progress in bytes)."""
    return len(doc.encode("utf-8")) + len(separator) + 2


def _finish_document(lines: list[str], path: Path) -> Optional[str]:
    if not lines:
        return None
    text = "".join(lines)
    if text.endswith("\n"):
        text = text[:-1]
    if "\x00" in text:
        raise UserError(f"{path} contains NUL bytes (binary data?); pass a text corpus "
                        f"made by 'python main.py prepare-corpus'")
    if not text.strip():
        return None
    return text


# A maximal run of ASCII whitespace between two non-space characters (Python's \S excludes every
# character that the tokenizer's regex counts as whitespace, so the run is maximal there too).
_SAFE_CUT = re.compile(r"(?<=\S)[ \t\n\r\f\v]+(?=\S)")


def _text_pieces(text: str, piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """Cut `text` into pieces of about `piece_chars` characters without changing its tokens:
    encoding the pieces and concatenating the ids gives exactly the ids of the whole text.

    Why: the byte-level pre-tokenizer (GPT-2 regex, no prefix space) splits a whitespace run W
    that sits between non-space characters as W[:-1] | W[-1] + following word (a space joins the
    word, a newline stands alone), and BPE merges never cross pre-tokens. Cutting just before
    W[-1] is therefore a pre-token boundary, and the regex finds the same pre-tokens on both
    sides of the cut (W[:-1] at the end of a piece still matches as one run). So even a document
    that is one 10 MB line is cut (at spaces) and encoded on all cores. tests/test_dataset.py
    checks pieces == whole on real text. A text without such a run stays whole.
    """
    n = len(text)
    start = 0
    while n - start > piece_chars:
        m = _SAFE_CUT.search(text, start + piece_chars)
        if m is None:
            break
        cut = m.end() - 1
        yield text[start:cut]
        start = cut
    yield text[start:]


# ---------------------------------------------------------------------------------------- tokenizer

def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer.json made by init-tokenizer; UserError if missing, invalid or foreign."""
    from tokenizers import Tokenizer
    path = require_file(path, "tokenizer file")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises plain Exception subclasses for bad JSON
        raise UserError(f"{path} is not a valid tokenizer.json ({str(e).splitlines()[0][:200]}); "
                        f"create one with 'python main.py init-tokenizer'")
    special_ids(tok, path)
    return tok


def tokenizer_hash(path: str | os.PathLike) -> str:
    """sha256 (hex) of the tokenizer file bytes: checkpoints and token stores record it."""
    return file_sha256(require_file(path, "tokenizer file"))


def special_ids(tok, path: str | os.PathLike | None = None) -> dict:
    """{'sep': 0, 'eos': 1, 'pad': 2}: ids of the special tokens, looked up by their strings.

    The separator token is `<|doc|>` unless the tokenizer was trained with another --separator;
    in every case it is the special token with id 0 (see tokenizer_separator).
    """
    where = f" {path}" if path is not None else ""
    decoder = tok.get_added_tokens_decoder()
    first = decoder.get(0)
    eos, pad = tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN)
    if first is None or not first.special or eos is None or pad is None:
        raise UserError(f"tokenizer{where} lacks the special tokens of mini-llm (separator id 0, "
                        f"{EOS_TOKEN}, {PAD_TOKEN}); create one with 'python main.py init-tokenizer'")
    return {"sep": 0, "eos": eos, "pad": pad}


def tokenizer_separator(tok) -> str:
    """The document separator string of this tokenizer (the content of special token id 0)."""
    return tok.get_added_tokens_decoder()[0].content


def _iter_training_texts(files: Sequence[Path], separator: str, progress: Progress) -> Iterator[str]:
    for path in files:
        for doc in read_documents(path, separator):
            progress.update(_document_bytes(doc, separator))
            yield from _text_pieces(doc)
    log.info("learning the BPE merges (about a minute per 100 MB of text)")


def train_tokenizer(files: Sequence[str | os.PathLike], vocab_size: int = 32000, min_frequency: int = 2,
                    separator: str = DOC_SEPARATOR, out_path: str | os.PathLike = "tokenizer.json",
                    quiet: bool = False) -> dict:
    """Train a byte-level BPE tokenizer on the documents of `files`, write it atomically to
    `out_path` and return a fitness report (see tokenizer_fitness).

    Special tokens are declared first, so their ids are stable: `separator` (default `<|doc|>`) = 0,
    `<|endoftext|>` = 1, `<|pad|>` = 2. Only document text is fed to the trainer: separator lines
    are never learned as characters. Raises UserError for a vocabulary smaller than the byte
    alphabet plus the special tokens, for missing/empty/non-text files and for empty training text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least "
                        f"{MIN_VOCAB_SIZE} (256 bytes + {N_SPECIAL} special tokens); try 8000-32000")
    if separator.strip() != separator or not separator or "\n" in separator:
        raise UserError(f"--separator {separator!r} must be a non-empty single line without "
                        f"leading or trailing spaces")
    if separator in (EOS_TOKEN, PAD_TOKEN):
        raise UserError(f"--separator {separator!r} clashes with a reserved special token")
    paths = [require_file(f, "training file") for f in files]
    out = Path(out_path)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'tokenizer.json'}")
    if out.exists() and any(os.path.samefile(p, out) for p in paths):
        raise UserError(f"--out {out} is also a training file; choose another --out path")
    if not any(next(iter(read_documents(p, separator)), None) is not None for p in paths):
        raise UserError("the training text is empty (only separator lines or whitespace); "
                        "pass a corpus made by 'python main.py prepare-corpus'")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=[separator, EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    total = sum(p.stat().st_size for p in paths)
    with Progress("reading training text", total=total, unit="B", quiet=quiet) as progress:
        tok.train_from_iterator(_iter_training_texts(paths, separator, progress), trainer=trainer)
    actual = tok.get_vocab_size(with_added_tokens=True)
    assert tok.token_to_id(separator) == 0 and tok.token_to_id(EOS_TOKEN) == 1 and tok.token_to_id(PAD_TOKEN) == 2
    if actual < vocab_size:
        log.warning(f"warning: the training text only supports {actual} tokens "
                    f"(asked for {vocab_size}): more text would give a better tokenizer")

    with atomic_path(out_path) as tmp:
        tok.save(str(tmp))
    report = tokenizer_fitness(tok, _fitness_sample(paths, separator))
    report.update({"path": str(out_path), "vocab_size": actual, "requested_vocab_size": vocab_size,
                   "hash": tokenizer_hash(out_path), "separator": separator,
                   "special_tokens": {separator: 0, EOS_TOKEN: 1, PAD_TOKEN: 2},
                   "files": [str(p) for p in paths]})
    return report


def _fitness_sample(paths: Sequence[Path], separator: str) -> str:
    """The first documents of each file, FITNESS_SAMPLE_CHARS characters in all."""
    budget = max(1, FITNESS_SAMPLE_CHARS // len(paths))
    parts = []
    for p in paths:
        n = 0
        for doc in read_documents(p, separator):
            parts.append(doc[: budget - n])
            n += len(parts[-1])
            if n >= budget:
                break
    return "\n".join(parts)


def tokenizer_fitness(tok, text: str, n_words: int = 10) -> dict:
    """How well `tok` fits `text`: tokens per word, bytes per token, and how the most frequent
    long words (>= 8 characters) split."""
    pieces = list(_text_pieces(text))
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(pieces, add_special_tokens=False))
    n_words_total = len(text.split())
    n_bytes = len(text.encode("utf-8"))
    counts = Counter(w for w in re.findall(r"\w+", text) if len(w) >= FITNESS_MIN_WORD_CHARS)
    words = []
    for word, count in counts.most_common(n_words):
        ids = tok.encode(" " + word, add_special_tokens=False).ids   # as it appears after a space
        words.append({"word": word, "count": count, "tokens": [tok.decode([i]) for i in ids]})
    return {"sample_chars": len(text), "sample_tokens": n_tokens,
            "tokens_per_word": n_tokens / max(1, n_words_total),
            "bytes_per_token": n_bytes / max(1, n_tokens), "long_words": words}


def format_fitness(report: dict) -> str:
    """Human-readable fitness report (init-tokenizer without --json)."""
    lines = [f"tokenizer: {report['path']} ({report['vocab_size']} tokens, separator "
             f"{report['separator']!r} = id 0)",
             f"on {report['sample_chars']:,} characters of training text:",
             f"  tokens per word:  {report['tokens_per_word']:.3f}",
             f"  bytes per token:  {report['bytes_per_token']:.3f}",
             "  frequent long words:"]
    for w in report["long_words"]:
        split = "|".join(t.strip() if i == 0 else t for i, t in enumerate(w["tokens"]))
        lines.append(f"    {w['word']:<20} x{w['count']:<7} -> {split}  ({len(w['tokens'])} tokens)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- token store
#
# File layout (little endian):
#   [0, HEADER_BYTES)      magic b"MLLMTOK\0", then uint32 header JSON length, then the header JSON
#                          (format version, dtype, n_tokens, n_docs, vocab_size, sep/eos/pad ids,
#                          tokenizer_hash, corpus_hash, separator, offsets, file_size), zero padded
#   tokens_offset          n_tokens ids (uint16 or uint32): SEP d1 SEP d2 ... SEP dn SEP
#   doc_starts_offset      n_docs + 1 int64: index of the SEP before each document, then the final SEP
# The header is written last, so a file cut short or never finished fails the checks on load.

STORE_MAGIC = b"MLLMTOK\0"
STORE_VERSION = 1
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


def _open_checked(path: Path, tokenizer_hash, corpus_hash, separator) -> TokenStore:
    """TokenStore at `path`, its header and contents checked (_check_store); ValueError if unusable."""
    store = TokenStore(path, _read_header(path))
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


def load_or_build_token_store(corpus_path: str | os.PathLike, tokenizer_path: str | os.PathLike,
                              cache_dir: str | os.PathLike, separator: Optional[str] = None,
                              quiet: bool = False) -> TokenStore:
    """The token store of `corpus_path` under `tokenizer_path`, cached in `cache_dir` as
    tokens-<corpus sha256[:12]>-<tokenizer sha256[:12]>.bin.

    A valid cache is reused without tokenizing; a stale, foreign or truncated one is rebuilt.
    `separator`: the corpus separator line; None means the tokenizer's own separator (`<|doc|>`
    unless init-tokenizer was given another --separator).
    """
    corpus_path = require_file(corpus_path, "corpus file")
    tok_hash = tokenizer_hash(tokenizer_path)
    tok = load_tokenizer(tokenizer_path)
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


@contextlib.contextmanager
def _specials_as_text(tok):
    """Inside the block, special-token strings in the text `tok` encodes are plain text, so a
    literal "<|doc|>" cannot fake a document boundary. `tok` None: nothing to do."""
    if tok is None:
        yield
        return
    tok.encode_special_tokens = True
    try:
        yield
    finally:
        tok.encode_special_tokens = False


def _batch_encoder(tok):
    """tok.encode_batch_fast (no offsets: faster) where the library has it, else encode_batch."""
    return getattr(tok, "encode_batch_fast", tok.encode_batch)


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
    into pieces, _text_pieces, so one big document also spreads over all cores) and encoded with
    encode_batch on all cores. The library releases the GIL while encoding, so one helper thread
    encodes batch k + 1 while this thread reads the corpus and writes batch k. Text inside a
    document never becomes a special token (encode_special_tokens), so a literal "<|doc|>" in the
    text cannot fake a document boundary.
    """
    from concurrent.futures import ThreadPoolExecutor

    ids = special_ids(tok)
    sep_id = ids["sep"]
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    encode = _batch_encoder(tok)
    total_bytes = corpus_path.stat().st_size
    doc_starts_parts: list[np.ndarray] = []
    n_tokens = 0
    t0 = time.perf_counter()

    def write(f, encs, pieces_per_doc) -> None:
        nonlocal n_tokens
        piece_ids = [np.array(e.ids, dtype=dtype) for e in encs]
        piece_lens = np.array([len(x) for x in piece_ids], dtype=np.int64)
        first_piece = np.concatenate(([0], np.cumsum(pieces_per_doc)[:-1]))
        doc_lens = np.add.reduceat(piece_lens, first_piece)
        sep_pos = np.concatenate(([0], np.cumsum(doc_lens + 1)[:-1]))    # the SEP before each doc
        out = np.empty(int(piece_lens.sum()) + len(doc_lens), dtype=dtype)
        is_sep = np.zeros(len(out), dtype=bool)
        is_sep[sep_pos] = True
        out[is_sep] = sep_id
        out[~is_sep] = np.concatenate(piece_ids)
        out.tofile(f)
        doc_starts_parts.append(sep_pos + n_tokens)
        n_tokens += len(out)

    with _specials_as_text(tok), tokenizer_parallelism(), atomic_path(out_path) as tmp, \
            open(tmp, "wb") as f, ThreadPoolExecutor(1) as pool, \
            Progress("tokenizing", total=total_bytes, unit="B", quiet=quiet) as progress:
        f.write(b"\0" * HEADER_BYTES)
        pending = None
        for pieces, pieces_per_doc, n_bytes in _encode_batches(corpus_path, separator):
            job = (pool.submit(encode, pieces, add_special_tokens=False), pieces_per_doc, n_bytes)
            if pending is not None:
                write(f, pending[0].result(), pending[1])
                progress.update(pending[2])
            pending = job
        if pending is None:
            raise UserError(f"corpus {corpus_path} has no documents (only separator lines or "
                            f"whitespace); pass a corpus made by 'python main.py prepare-corpus'")
        write(f, pending[0].result(), pending[1])
        progress.update(pending[2])
        np.array([sep_id], dtype=dtype).tofile(f)                   # the SEP that ends the last doc
        doc_starts = np.concatenate(doc_starts_parts + [np.array([n_tokens], dtype=np.int64)])
        n_tokens += 1
        doc_starts_offset = HEADER_BYTES + dtype.itemsize * n_tokens
        assert f.tell() == doc_starts_offset
        doc_starts.astype("<i8").tofile(f)
        header = {"version": STORE_VERSION, "dtype": dtype.name, "n_tokens": n_tokens,
                  "n_docs": len(doc_starts) - 1, "vocab_size": vocab_size, "sep_id": sep_id,
                  "eos_id": ids["eos"], "pad_id": ids["pad"], "tokenizer_hash": tok_hash,
                  "corpus_hash": corpus_hash, "corpus_bytes": total_bytes, "separator": separator,
                  "tokens_offset": HEADER_BYTES, "doc_starts_offset": doc_starts_offset,
                  "file_size": doc_starts_offset + 8 * len(doc_starts)}
        blob = json.dumps(header).encode("utf-8")
        assert 12 + len(blob) <= HEADER_BYTES
        f.seek(0)
        f.write(STORE_MAGIC + len(blob).to_bytes(4, "little") + blob)
        f.flush()
    seconds = time.perf_counter() - t0
    log.info(f"token store: {n_tokens:,} tokens, {header['n_docs']:,} documents in {seconds:.1f}s "
             f"({total_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s) -> {out_path}")


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


class ResumableSampler:
    """Batch sampler: a permutation of range(n) fixed by (seed, epoch), cut into batches.

    - `start_batch` skips the batches already done (exact resume inside an epoch).
    - Sharding: the permutation is padded by wrapping to a multiple of world_size and rank r takes
      every world_size-th index, so all ranks get the same number of batches.
    - The last batch may be smaller (drop_last False). Use as DataLoader(batch_sampler=...).
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        if n < 0 or batch_size < 1:
            raise ValueError(f"need n >= 0 and batch_size >= 1 (got n={n}, batch_size={batch_size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = epoch, start_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, in order."""
        perm = _rng(self.seed, self.epoch).permutation(self.n)
        total = -(-self.n // self.world_size) * self.world_size
        if total > self.n:
            perm = np.resize(perm, total)                # wraps around
        return perm[self.rank::self.world_size]

    def num_batches(self) -> int:
        """Batches per epoch on every rank (ceil of this rank's share / batch_size)."""
        per_rank = math.ceil(self.n / self.world_size)
        return math.ceil(per_rank / self.batch_size)

    def __len__(self) -> int:
        return max(0, self.num_batches() - self.start_batch)

    def __iter__(self):
        idx = self.indices()
        for b in range(self.start_batch, self.num_batches()):
            yield idx[b * self.batch_size:(b + 1) * self.batch_size].tolist()



# ============================================================================ corpus analysis (analyze-corpus)
# (owned by the cleaning helper)

# Token estimate without a tokenizer: characters / CHARS_PER_TOKEN. Calibrated on the real
# corpora (../shared/corpora) with 32k byte-level BPE tokenizers built like init-tokenizer's
# (tokenizers ByteLevel, no prefix space, min_frequency 2): "mix", trained on all the Spanish
# corpora together (20 MB of novelas + wiki + parlamento + biblia + debian), and "own", trained on
# that corpus alone (novelas: its first 20 MB); each on cased text and on lowercased text. Measured
# with this function on whole files, error = estimate / exact - 1, cased | lowercased (the
# lowercased files are prepare-corpus output, i.e. also whitespace-normalised):
#   corpus           mix tokenizer     own tokenizer
#   novelas_es       -2.9% | -7.1%     -1.6% | -6.0%     (95 MB, 20M tokens)
#   wiki_es          -8.9% | -5.9%     +5.1% | +6.3%
#   parlamento_es    +4.9% | +6.8%    +10.2% | +10.7%
#   biblia_rv1909    -9.5% | -8.2%     -4.5% | -4.2%
#   debian_docs_es   +0.3% | +2.6%        -  |   -
# i.e. within 11% everywhere (exact characters per token on Spanish prose: 4.2 to 5.2). A fit
# adding punctuation and digit counts did not beat 9% and costs a regex pass over the text, so
# the estimate stays one division. English text with these Spanish tokenizers gives ~3 characters
# per token: the estimate assumes a tokenizer trained on text in the corpus's own language.
CHARS_PER_TOKEN = 4.7
TOKENS_METHOD_ESTIMATE = (f"estimated: characters / {CHARS_PER_TOKEN} (calibrated on Spanish prose against "
                          "32k byte-level BPE tokenizers, within ~11%); pass --tokenizer for exact counts")

# Model presets of the train stage (issue 3): parameters at a 32k vocabulary.
PRESET_PARAMS = {"small": 10_000_000, "medium": 30_000_000, "large": 70_000_000}
TOKENS_PER_PARAM = 20           # Chinchilla (Hoffmann et al. 2022): compute-optimal tokens per parameter
MAX_USEFUL_EPOCHS = 4           # Muennighoff et al. 2023: up to ~4 repetitions are nearly as good as new data
MAX_RECOMMENDED_EPOCHS = 30     # the small preset's default; more only feeds overfitting
BLOCK_SIZES = (128, 256, 512, 1024, 2048)
# Vocabulary for init-tokenizer by corpus size (tokens): a small corpus cannot fill a large
# vocabulary with well-trained merges, and the embedding matrix (vocab x width) would eat the
# parameter budget of a small model.
VOCAB_BY_TOKENS = ((1_000_000, 8000), (10_000_000, 16000))
VOCAB_LARGE = 32000

ANALYZE_LINE_BYTES = 1 << 20          # bytes read per readline: a giant line comes in pieces
ANALYZE_CHUNK_CHARS = 1 << 20         # a document longer than this is processed chunk by chunk
SAMPLE_CHARS = 5000                   # start of each document used for the language/garbage checks
LONG_LINE_CHARS = 50_000
DUPLICATE_WARN_FRACTION = 0.01
OTHER_LANGUAGE_WARN_FRACTION = 0.01
GARBAGE_WARN_FRACTION = 0.001
SINGLE_DOCUMENT_WARN_CHARS = 1_000_000

# Frequent function words, chosen to tell the languages apart (shared ones such as "de", "la",
# "que", "a", "e", "en" left out). A document's guess needs LANG_MIN_HITS hits and twice the
# score of the runner-up; otherwise it stays unknown (short or mixed text).
LANG_STOPWORDS = {
    "es": "el los las y del por con una para es su al lo como pero más fue sus este entre muy sin sobre también",
    "pt": "o os do da dos das não em um uma ao é mais foi pelo pela também seu sua são mas como ele isso",
    "fr": "le les des et est du dans pour pas qui sur au avec ce il sont une ne aux été mais ou nous vous",
    "it": "il di che è gli della non sono nel anche dei alla delle questo per ha nella degli come più una",
    "en": "the and of to is that it was for with on be by this are have which from not at as his",
    "de": "der die und das ist nicht mit den ein eine zu von sich auch auf dem im für wird werden sie es",
}
LANG_MIN_HITS = 6
LANG_MIN_CHARS = 100            # shorter samples cannot reach LANG_MIN_HITS: not guessed
_LANG_NAMES = tuple(LANG_STOPWORDS)
_LANG_INDEX: dict = {}          # word -> indices of the languages listing it (built on first use)
_GARBAGE_CHAR = re.compile("[\ufffd\x00-\x08\x0b-\x1f\x7f-\x9f\ue000-\uf8ff]")
_MOJIBAKE_PAIR = re.compile("[\u00c2\u00c3][\u0080-\u00bf]")


def guess_language(text: str) -> Optional[str]:
    """Cheap stopword guess among es/en/pt/fr/it/de; None when unsure (short or mixed text).

    Words are whitespace-split (C speed); a stopword with punctuation attached is simply missed."""
    if len(text) < LANG_MIN_CHARS:
        return None
    if not _LANG_INDEX:
        for i, words in enumerate(LANG_STOPWORDS.values()):
            for w in words.split():
                _LANG_INDEX[w] = _LANG_INDEX.get(w, ()) + (i,)
    counts = Counter(text.lower().split())
    scores = [0] * len(_LANG_NAMES)
    for word, langs in _LANG_INDEX.items():
        n = counts.get(word)
        if n:
            for i in langs:
                scores[i] += n
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
    best, second = scores[order[0]], scores[order[1]]
    if best < LANG_MIN_HITS or best < 2 * second:
        return None
    return _LANG_NAMES[order[0]]


def looks_like_garbage(text: str) -> bool:
    """Binary or garbled text: replacement/control/private-use characters or mojibake pairs
    (over 1% of the characters), or letters under 40% of the visible characters."""
    n = len(text)
    visible = n - text.count(" ") - text.count("\n") - text.count("\t")
    if visible < 20:
        return False
    bad = 0
    if _GARBAGE_CHAR.search(text):
        bad += len(_GARBAGE_CHAR.findall(text))
    if ("\u00c3" in text or "\u00c2" in text) and _MOJIBAKE_PAIR.search(text):
        bad += len(_MOJIBAKE_PAIR.findall(text))
    if bad > 0.01 * n:
        return True
    return sum(map(str.isalpha, text)) < 0.4 * visible


def _next_power_of_two(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


@dataclass
class _Scan:
    """Per-document statistics gathered while streaming the corpus."""
    tok: object = None
    doc_chars: list = field(default_factory=list)
    doc_tokens: list = field(default_factory=list)
    hashes: set = field(default_factory=set)
    duplicates: int = 0
    empty_docs: int = 0
    garbage_docs: list = field(default_factory=list)
    languages: Counter = field(default_factory=Counter)
    doc_language: list = field(default_factory=list)    # (doc index, language) of guessed documents
    replacement_chars: int = 0
    lines: int = 0
    long_lines: int = 0
    max_line: int = 0
    max_line_doc: int = 0
    pending: list = field(default_factory=list)         # exact mode: (doc index, piece)
    pending_chars: int = 0

    def start_document(self) -> None:
        self.cur_chars = 0
        self.cur_hash = hashlib.blake2b(digest_size=16)
        self.cur_sample = ""
        self.cur_carry = ""
        self.cur_has_text = False

    def add_text(self, text: str, final: bool) -> None:
        """Some text of the current document (all of it when final)."""
        if not text:
            return
        index = len(self.doc_chars)
        self.cur_chars += len(text)
        self.cur_hash.update(text.encode("utf-8", "surrogatepass"))
        self.replacement_chars += text.count("\ufffd")
        if len(self.cur_sample) < SAMPLE_CHARS:
            self.cur_sample += text[:SAMPLE_CHARS - len(self.cur_sample)]
        if not self.cur_has_text and not text.isspace():
            self.cur_has_text = True
        if self.tok is not None:
            text = self.cur_carry + text
            pieces = list(_text_pieces(text))
            self.cur_carry = ""
            if not final and len(pieces[-1]) <= 4 * ANALYZE_CHUNK_CHARS:
                # the last piece may continue in the next chunk: cut only where _text_pieces can
                self.cur_carry = pieces.pop()
            for piece in pieces:
                self.pending.append((index, piece))
                self.pending_chars += len(piece)
            if self.pending_chars >= ENCODE_BATCH_CHARS:
                self.flush()

    def end_line(self, length: int) -> None:
        """A line of `length` characters (without its newline) of the current document ended."""
        self.lines += 1
        if length > self.max_line:
            self.max_line, self.max_line_doc = length, len(self.doc_chars)
        self.long_lines += length > LONG_LINE_CHARS

    def end_document(self, text: str) -> None:
        if text.endswith("\n"):
            text = text[:-1]          # the newline before the separator line is not document text
        self.add_text(text, final=True)
        if self.cur_carry:
            self.pending.append((len(self.doc_chars), self.cur_carry))
            self.pending_chars += len(self.cur_carry)
        index = len(self.doc_chars)
        if not self.cur_has_text:
            self.empty_docs += self.cur_chars > 0
            self.pending = [p for p in self.pending if p[0] != index]
            del self.doc_tokens[index:]          # counts an earlier flush may have added
            self.start_document()
            return
        self.doc_chars.append(self.cur_chars)
        if self.tok is None:
            self.doc_tokens.append(max(1, round(self.cur_chars / CHARS_PER_TOKEN)))
        elif len(self.doc_tokens) <= index:
            self.doc_tokens.append(0)           # filled in by flush()
        digest = self.cur_hash.digest()
        if digest in self.hashes:
            self.duplicates += 1
        else:
            self.hashes.add(digest)
        if looks_like_garbage(self.cur_sample):
            self.garbage_docs.append(index)
        lang = guess_language(self.cur_sample)
        if lang is not None:
            self.languages[lang] += 1
            self.doc_language.append((index, lang))
        self.start_document()

    def flush(self) -> None:
        """Exact mode: encode the pending pieces on all cores and add their lengths."""
        if not self.pending:
            return
        encodings = _batch_encoder(self.tok)([p for _, p in self.pending], add_special_tokens=False)
        for (index, _), enc in zip(self.pending, encodings):
            if index >= len(self.doc_tokens):
                self.doc_tokens.extend([0] * (index + 1 - len(self.doc_tokens)))
            self.doc_tokens[index] += len(enc.ids)
        self.pending, self.pending_chars = [], 0


def analyze_corpus(corpus: str | os.PathLike, separator: str = DOC_SEPARATOR,
                   tokenizer_path: str | os.PathLike | None = None, quiet: bool = False) -> dict:
    """Statistics, recommended hyperparameters and warnings for a corpus file (see README).

    Streams the file (memory stays flat: a document longer than ANALYZE_CHUNK_CHARS is taken
    chunk by chunk); with a tokenizer the counts are exact (batch encoding on all cores),
    without one they are estimated from characters (CHARS_PER_TOKEN)."""
    t0 = time.monotonic()
    path = require_file(corpus, "corpus file")
    sep = _separator_line(separator, "--separator")
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        raise UserError(f"{path} looks like a binary file (NUL bytes); pass a text corpus "
                        "made by 'python main.py prepare-corpus'")
    tok = load_tokenizer(tokenizer_path) if tokenizer_path is not None else None
    scan = _Scan(tok=tok)
    # text never becomes a special token (as in the store)
    with _specials_as_text(tok), tokenizer_parallelism(enabled=tok is not None):
        n_separators = _scan_file(path, sep.encode("utf-8"), scan, quiet)
        if tok is not None:
            scan.flush()
    if not scan.doc_chars:
        raise UserError(f"corpus {path} holds no text (only separator lines or whitespace); "
                        "pass a corpus made by 'python main.py prepare-corpus'")
    report = _analysis_report(scan, path, sep, n_separators, tokenizer_path)
    report["seconds"] = round(time.monotonic() - t0, 3)
    return report


def _scan_file(path: Path, sep: bytes, scan: _Scan, quiet: bool) -> int:
    """Stream `path` into `scan`, document by document; return the number of separator lines."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    n_separators = 0
    parts: list[str] = []
    n_chars = 0
    line_chars = 0          # characters of the current line read so far (it may come in pieces)
    first = True
    scan.start_document()
    with open(path, "rb") as f, Progress("analyzing", total=path.stat().st_size, unit="B",
                                         quiet=quiet) as progress:
        done = 0
        while raw := f.readline(ANALYZE_LINE_BYTES):
            done += len(raw)
            if done >= 1 << 24:
                progress.update(done)
                done = 0
            if first:
                first = False
                if raw.startswith(codecs.BOM_UTF8):
                    raw = raw[3:]
            if line_chars == 0 and len(raw) <= len(sep) + 4 and raw.strip() == sep:
                n_separators += 1
                scan.end_document("".join(parts))
                parts, n_chars = [], 0
                continue
            text = decoder.decode(raw)
            if "\r" in text:
                text = text.replace("\r\n", "\n")
            if raw.endswith(b"\n"):
                scan.end_line(line_chars + len(text) - 1)
                line_chars = 0
            else:
                line_chars += len(text)
            parts.append(text)
            n_chars += len(text)
            if n_chars >= ANALYZE_CHUNK_CHARS:
                chunk = "".join(parts)
                # hold a final newline back: it is not document text if a separator line follows
                held = "\n" if chunk.endswith("\n") else ""
                scan.add_text(chunk[:len(chunk) - len(held)], final=False)
                parts, n_chars = [held], len(held)
        progress.update(done)
    if line_chars:
        scan.end_line(line_chars)
    scan.end_document("".join(parts) + decoder.decode(b"", final=True))
    return n_separators


def recommend(doc_tokens: np.ndarray) -> dict:
    """block_size, stride, preset, epochs and vocab_size from the document lengths (tokens)."""
    total = int(doc_tokens.sum())
    p90 = float(np.percentile(doc_tokens, 90))
    block = min(max(_next_power_of_two(p90), BLOCK_SIZES[0]), BLOCK_SIZES[-1])
    if _next_power_of_two(p90) == block:
        block_reason = f"90% of documents have <= {p90:,.0f} tokens: the smallest power of two that holds them whole"
    elif block == BLOCK_SIZES[-1]:
        block_reason = (f"documents are long (p90 {p90:,.0f} tokens): the longest context offered; "
                        "long documents are cut into overlapping windows")
    else:
        block_reason = (f"documents are short (p90 {p90:,.0f} tokens): the smallest block offered; "
                        "short documents are packed into it")
    long_share = float(doc_tokens[doc_tokens > block].sum()) / max(total, 1)

    # Preset: the largest whose compute-optimal budget (20 tokens/parameter) this corpus reaches
    # within MAX_USEFUL_EPOCHS passes; the small one when none does.
    preset = "small"
    for name, params in PRESET_PARAMS.items():
        if total * MAX_USEFUL_EPOCHS >= TOKENS_PER_PARAM * params:
            preset = name
    budget = TOKENS_PER_PARAM * PRESET_PARAMS[preset]

    if total >= budget:
        stride = block
        stride_reason = ("enough data for one compute-optimal pass: no overlap, every token is trained "
                         "once per epoch and no compute is spent on repeats")
    else:
        stride = block // 2
        stride_reason = (f"data is scarce ({total:,} tokens < {budget:,} wanted by the {preset} preset): "
                         f"half-overlapping windows in long documents give every token at least "
                         f"{block // 2} tokens of context and twice the distinct windows")
    if long_share < 0.05:
        stride_reason += (f"; only {100 * long_share:.1f}% of the tokens are in documents longer than "
                          f"block_size, so stride matters little here (short documents are packed)")
    # Tokens presented per epoch: long documents are seen block/stride times over.
    per_epoch = total * (1 + long_share * (block / stride - 1))
    epochs_needed = budget / max(per_epoch, 1)
    epochs = int(min(max(math.ceil(epochs_needed), 1), MAX_RECOMMENDED_EPOCHS))
    repetitions = epochs * per_epoch / max(total, 1)     # times each token is trained on, on average
    vocab = next((v for limit, v in VOCAB_BY_TOKENS if total < limit), VOCAB_LARGE)
    return {"block_size": block, "block_size_reason": block_reason,
            "stride": stride, "stride_reason": stride_reason,
            "preset": preset, "preset_params": PRESET_PARAMS[preset],
            "epochs": epochs, "epochs_for_20_tokens_per_param": round(epochs_needed, 2),
            "repetitions": round(repetitions, 2),
            "tokens_seen_per_param": round(epochs * per_epoch / PRESET_PARAMS[preset], 2),
            "vocab_size": vocab}


def _analysis_report(scan: _Scan, path: Path, sep: str, n_separators: int, tokenizer_path) -> dict:
    lengths = np.asarray(scan.doc_tokens, dtype=np.int64)
    chars = np.asarray(scan.doc_chars, dtype=np.int64)
    n_docs = len(lengths)
    total = int(lengths.sum())
    n_chars = int(chars.sum())
    rec = recommend(lengths)
    warnings: list[str] = []

    min_small = TOKENS_PER_PARAM * PRESET_PARAMS["small"]
    if total * MAX_USEFUL_EPOCHS < min_small:
        warnings.append(
            f"too little data for the small preset (~{PRESET_PARAMS['small'] / 1e6:.0f}M parameters): "
            f"{total:,} tokens, while {TOKENS_PER_PARAM} tokens/parameter wants {min_small:,} "
            f"({min_small // MAX_USEFUL_EPOCHS:,} with {MAX_USEFUL_EPOCHS} epochs of repetition); expect "
            "overfitting: keep early stopping on (--patience), add dropout, or train a smaller custom model")
    if rec["repetitions"] > MAX_USEFUL_EPOCHS:
        capped = f" (capped at {MAX_RECOMMENDED_EPOCHS})" if rec["epochs_for_20_tokens_per_param"] > MAX_RECOMMENDED_EPOCHS else ""
        warnings.append(
            f"{rec['epochs']} epochs{capped} train on each token ~{rec['repetitions']:.0f} times (overlapping "
            f"windows included), beyond the ~{MAX_USEFUL_EPOCHS} repetitions after which repeated data stops "
            "paying off; more text helps more than more epochs")
    if scan.duplicates and scan.duplicates >= DUPLICATE_WARN_FRACTION * n_docs:
        warnings.append(f"{scan.duplicates:,} duplicate documents ({100 * scan.duplicates / n_docs:.1f}%): "
                        "they are memorised, not learned; prepare-corpus drops exact duplicates")
    if scan.garbage_docs and len(scan.garbage_docs) >= max(1, GARBAGE_WARN_FRACTION * n_docs):
        examples = ", ".join(f"#{i}" for i in scan.garbage_docs[:5])
        warnings.append(f"{len(scan.garbage_docs):,} documents look like binary or garbled text (few letters, "
                        f"replacement/control characters or mojibake), e.g. {examples} (0-based); "
                        "clean them with prepare-corpus or remove them")
    main_lang = scan.languages.most_common(1)[0][0] if scan.languages else None
    others = [(i, lang) for i, lang in scan.doc_language if lang != main_lang]
    if main_lang and others and len(others) >= OTHER_LANGUAGE_WARN_FRACTION * n_docs:
        by_lang = Counter(lang for _, lang in others)
        summary = ", ".join(f"{lang}: {n}" for lang, n in by_lang.most_common())
        examples = ", ".join(f"#{i}" for i, _ in others[:5])
        warnings.append(f"{len(others):,} documents look like another language than the majority "
                        f"({main_lang}): {summary}, e.g. {examples}; a small model learns a mixed corpus worse")
    if scan.long_lines:
        warnings.append(f"{scan.long_lines:,} lines longer than {LONG_LINE_CHARS:,} characters (longest "
                        f"{scan.max_line:,} in document #{scan.max_line_doc}): line breaks may have been lost; "
                        "line-based tools and editors will struggle")
    if scan.replacement_chars:
        warnings.append(f"{scan.replacement_chars:,} invalid UTF-8 bytes or U+FFFD characters: "
                        "run prepare-corpus to repair the encoding")
    if n_separators == 0 and n_chars > SINGLE_DOCUMENT_WARN_CHARS:
        warnings.append(f"the separator line {sep!r} never occurs: the whole file is one document "
                        "(wrong --separator? prepare-corpus --split-on-blank-lines N can cut it)")
    if scan.empty_docs:
        warnings.append(f"{scan.empty_docs:,} empty documents (whitespace only) were skipped")
    method = f"exact: {tokenizer_path}" if tokenizer_path is not None else TOKENS_METHOD_ESTIMATE
    if tokenizer_path is None and main_lang not in (None, "es"):
        method += (f" (the corpus looks mostly '{main_lang}': the calibration is for Spanish, "
                   "expect a larger error)")

    return {
        "corpus": str(path),
        "documents": n_docs,
        "characters": n_chars,
        "tokens": total,
        "tokens_exact": tokenizer_path is not None,
        "tokens_method": method,
        "doc_tokens": {"mean": round(float(lengths.mean()), 1), "min": int(lengths.min()),
                       "max": int(lengths.max()), "median": float(np.median(lengths)),
                       "p90": round(float(np.percentile(lengths, 90)), 1)},
        "doc_chars": {"mean": round(float(chars.mean()), 1), "min": int(chars.min()), "max": int(chars.max())},
        "duplicates": scan.duplicates,
        "empty_documents": scan.empty_docs,
        "garbage_documents": len(scan.garbage_docs),
        "languages": dict(scan.languages.most_common()),
        "lines": scan.lines,
        "max_line_chars": scan.max_line,
        "long_lines": scan.long_lines,
        "recommendations": rec,
        "warnings": warnings,
    }


def print_analysis(report: dict) -> None:
    """The human report (analyze-corpus without --json): tables on stdout."""
    from rich.console import Console
    from rich.table import Table
    console = Console()
    exact = report["tokens_exact"]
    t = Table(title=f"corpus {report['corpus']}", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    d = report["doc_tokens"]
    rows = [("documents", f"{report['documents']:,}"),
            ("characters", f"{report['characters']:,}"),
            ("tokens" + ("" if exact else " (estimated)"), f"{report['tokens']:,}"),
            ("tokens per document: mean", f"{d['mean']:,.1f}"),
            ("  min / median / p90 / max", f"{d['min']:,} / {d['median']:,.0f} / {d['p90']:,.0f} / {d['max']:,}"),
            ("duplicate documents", f"{report['duplicates']:,}"),
            ("garbled-looking documents", f"{report['garbage_documents']:,}"),
            ("languages (guessed)", ", ".join(f"{k}: {v:,}" for k, v in report["languages"].items()) or "-"),
            ("longest line (characters)", f"{report['max_line_chars']:,}")]
    for name, value in rows:
        t.add_row(name, value)
    console.print(t)
    console.print(f"token counts: {report['tokens_method']}")
    r = report["recommendations"]
    t = Table(title="recommendations", show_header=True)
    t.add_column("setting", style="bold")
    t.add_column("value", justify="right")
    t.add_column("why")
    t.add_row("--block-size", str(r["block_size"]), r["block_size_reason"])
    t.add_row("--stride", str(r["stride"]), r["stride_reason"])
    t.add_row("--config", r["preset"],
              f"~{r['preset_params'] / 1e6:.0f}M parameters; largest preset whose {TOKENS_PER_PARAM} "
              f"tokens/parameter budget fits in <= {MAX_USEFUL_EPOCHS} epochs (else small)")
    t.add_row("--epochs", str(r["epochs"]),
              f"{r['epochs_for_20_tokens_per_param']} epochs reach {TOKENS_PER_PARAM} tokens/parameter "
              f"(capped to 1..{MAX_RECOMMENDED_EPOCHS})")
    t.add_row("init-tokenizer --vocab-size", str(r["vocab_size"]),
              "8000 below 1M tokens, 16000 below 10M, else 32000")
    console.print(t)
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if not report["warnings"]:
        console.print("no warnings")
