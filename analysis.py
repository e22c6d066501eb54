"""Corpus analysis (`python main.py analyze-corpus`): streams a corpus file once and reports
document and token statistics (tokens exact with a tokenizer, else estimated from characters),
duplicates, garbled text, languages and long lines, with recommended training settings
(block size, stride, preset, epochs, vocabulary size) and warnings. Several corpora (a mixture, as
train --corpus takes them) get each its report and advice on the mixture (mixture_report)."""
from __future__ import annotations

import codecs
import hashlib
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from common import Progress, UserError, require_file
from config import PRESETS, preset_parameters
from corpus import DOC_SEPARATOR, _separator_line, _text_pieces
from dataset import ENCODE_BATCH_CHARS, text_encoder, tokenizer_parallelism
from tokenizer import load_tokenizer, specials_as_text

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

PRESET_PARAMS = {name: preset_parameters(name) for name in PRESETS}   # at a 32k vocabulary
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
    encode: object = None                              # exact mode: dataset.text_encoder
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
        encodings = self.encode([p for _, p in self.pending])
        for (index, _), ids in zip(self.pending, encodings):
            if index >= len(self.doc_tokens):
                self.doc_tokens.extend([0] * (index + 1 - len(self.doc_tokens)))
            self.doc_tokens[index] += len(ids)
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
    with specials_as_text(tok), tokenizer_parallelism(enabled=tok is not None):
        if tok is not None:
            _, scan.encode = text_encoder(tok, path.stat().st_size)
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


def choose_preset(total_tokens: int) -> str:
    """The largest preset whose compute-optimal budget (TOKENS_PER_PARAM tokens/parameter) the
    data reaches within MAX_USEFUL_EPOCHS passes; the small one when none does."""
    preset = "small"
    for name, params in PRESET_PARAMS.items():
        if total_tokens * MAX_USEFUL_EPOCHS >= TOKENS_PER_PARAM * params:
            preset = name
    return preset


def epochs_for_budget(budget: float, tokens_per_epoch: float) -> tuple[float, int]:
    """(epochs needed to train on `budget` tokens, that rounded up and capped to 1..MAX_RECOMMENDED_EPOCHS)."""
    needed = budget / max(tokens_per_epoch, 1)
    return needed, int(min(max(math.ceil(needed), 1), MAX_RECOMMENDED_EPOCHS))


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

    preset = choose_preset(total)
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
    epochs_needed, epochs = epochs_for_budget(budget, per_epoch)
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


# ============================================================================ mixtures (analyze-corpus with several corpora)
# An epoch of a mixture (as the trainer draws it, dataset.mixture_counts) holds as many tokens as
# all its corpora together, T = sum of their tokens; corpus i gives weight_i x T of them, so it is
# read weight_i x T / tokens_i times per epoch: above 1 it is repeated within the epoch, below 1
# part of it waits for later epochs (each corpus is read in full before any of it repeats).

MOSTLY_UNSEEN_FRACTION = 0.5    # a corpus whose recommended training reads less than this of it


def analyze_corpora(specs: list, separator: str = DOC_SEPARATOR,
                    tokenizer_path: str | os.PathLike | None = None, quiet: bool = False) -> dict:
    """Several corpora of a mixture (corpus.CorpusSpec list): {"corpora": [report, ...], "mixture": {...}}.

    Each report is analyze_corpus's, with the corpus's "name", "weight" and file size ("bytes")
    added; "mixture" is mixture_report's. Every file is checked before the first (long) scan."""
    for spec in specs:
        require_file(spec.path, "corpus file")
    reports = []
    for spec in specs:
        report = analyze_corpus(spec.path, separator=separator, tokenizer_path=tokenizer_path, quiet=quiet)
        extra = {"name": spec.name, "weight": spec.weight, "bytes": spec.path.stat().st_size}
        reports.append({**extra, **report})
    return {"corpora": reports, "mixture": mixture_report(reports)}


def mixture_report(reports: list[dict]) -> dict:
    """Advice on a mixture from its corpora's reports (each with "name", "weight", "tokens",
    "corpus" and optionally "bytes"; the weights sum to 1). Pure: data in, dict out.

    Per corpus: its share of the tokens by size and by weight, how often an epoch reads it and how
    often the recommended training does. Overall: tokens per epoch, tokens per parameter of every
    preset with the whole mixture and without its largest corpus, the preset and epochs that
    recommend's rule gives for the mixture, advice lines and warnings."""
    total = sum(r["tokens"] for r in reports)
    largest = max(reports, key=lambda r: r["tokens"])
    rest = total - largest["tokens"]
    preset = choose_preset(total)
    needed, epochs = epochs_for_budget(TOKENS_PER_PARAM * PRESET_PARAMS[preset], total)
    corpora = [_mixture_entry(r, total, epochs) for r in reports]
    presets = {name: {"params": params,
                      "tokens_per_param": _round(total / params),
                      "tokens_per_param_without_largest": _round(rest / params),
                      "epochs_for_20_tokens_per_param": _round(TOKENS_PER_PARAM * params / total)}
               for name, params in PRESET_PARAMS.items()}
    mixture = {"tokens_per_epoch": total,
               "tokens_exact": all(r["tokens_exact"] for r in reports),
               "largest": largest["name"],
               "tokens_without_largest": rest,
               "preset": preset,
               "preset_params": PRESET_PARAMS[preset],
               "epochs": epochs,
               "epochs_for_20_tokens_per_param": _round(needed),
               "corpora": corpora,
               "presets": presets}
    mixture["advice"] = _mixture_advice(mixture)
    mixture["warnings"] = _mixture_warnings(mixture)
    return mixture


def _round(x: float) -> float:
    """Four significant digits (tokens per parameter run from 1e-4 to 1e3)."""
    return float(f"{x:.4g}")


def _mixture_entry(report: dict, total: int, epochs: int) -> dict:
    """One corpus of the mixture: sizes, shares and repetitions (see the section comment)."""
    tokens, weight = report["tokens"], report["weight"]
    per_epoch = weight * total / tokens
    training = per_epoch * epochs
    return {"name": report["name"], "path": report["corpus"], "weight": _round(weight),
            "tokens": tokens, "bytes": report.get("bytes"),
            "natural_share": _round(tokens / total),    # its share if weights followed the sizes
            "share": _round(weight),                    # its share of every epoch's tokens
            "repetitions_per_epoch": _round(per_epoch),
            "repetitions": _round(training),            # over the recommended epochs
            "seen_fraction": _round(min(1.0, training)),
            # the weight that reads it MAX_USEFUL_EPOCHS times over the recommended epochs
            "max_useful_weight": _round(min(1.0, MAX_USEFUL_EPOCHS * tokens / (epochs * total)))}


def _epochs_text(epochs: int) -> str:
    return f"{epochs} recommended epoch" + ("" if epochs == 1 else "s")


def _size_text(entry: dict) -> str:
    """'3.1 MB, 650,000 tokens' (the file size when known)."""
    tokens = f"{entry['tokens']:,} tokens"
    if entry["bytes"] is None:
        return tokens
    size = entry["bytes"]
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            break
        size /= 1000
    return f"{size:,.1f} {unit}, {tokens}" if unit != "B" else f"{size} B, {tokens}"


def _mixture_advice(m: dict) -> list[str]:
    """Plain-words lines: what an epoch reads of each corpus, and what the mixture is worth."""
    epochs = m["epochs"]
    lines = []
    for c in m["corpora"]:
        head = (f"{c['name']} is {_size_text(c)} ({100 * c['natural_share']:.1f}% of the mixture's tokens); "
                f"at weight {c['weight']:.3g} ")
        if c["repetitions_per_epoch"] >= 1:
            lines.append(head + f"it is seen {c['repetitions_per_epoch']:.2f} times per epoch, "
                                f"{c['repetitions']:.1f} times over the {_epochs_text(epochs)}")
        else:
            lines.append(head + f"each epoch reads {100 * c['repetitions_per_epoch']:.0f}% of it; "
                                f"the {_epochs_text(epochs)} read it {c['repetitions']:.2f} times")
    p = m["presets"][m["preset"]]
    lines.append(f"an epoch holds {m['tokens_per_epoch']:,} tokens (all corpora together): "
                 f"{p['tokens_per_param']:.3g} tokens/parameter for the {m['preset']} preset "
                 f"(~{m['preset_params'] / 1e6:.0f}M parameters); {TOKENS_PER_PARAM} tokens/parameter take "
                 f"{m['epochs_for_20_tokens_per_param']:.3g} epochs: --config {m['preset']} --epochs {epochs}"
                 + (f" (capped at {MAX_RECOMMENDED_EPOCHS})"
                    if m["epochs_for_20_tokens_per_param"] > MAX_RECOMMENDED_EPOCHS else ""))
    lines.append(f"without {m['largest']} the rest holds {m['tokens_without_largest']:,} tokens: "
                 f"{p['tokens_per_param_without_largest']:.3g} tokens/parameter for the {m['preset']} preset, "
                 f"against {p['tokens_per_param']:.3g} with it")
    return lines


def _mixture_warnings(m: dict) -> list[str]:
    """A mixture too small for any weights, corpora repeated past MAX_USEFUL_EPOCHS by their
    weight, corpora mostly unseen over the recommended epochs."""
    epochs = m["epochs"]
    warnings = []
    if epochs > MAX_USEFUL_EPOCHS:
        warnings.append(f"the whole mixture ({m['tokens_per_epoch']:,} tokens) is read {epochs} times over the "
                        f"{_epochs_text(epochs)} whatever the weights, beyond the ~{MAX_USEFUL_EPOCHS} repetitions "
                        "after which repeated data stops paying off; more text helps more than reweighting")
    for c in m["corpora"]:
        # repeated within an epoch too: its weight is above its share by size (always so past the
        # limit when the mixture itself is not; when it is, only the over-weighted corpora are named)
        if c["repetitions"] > MAX_USEFUL_EPOCHS and c["repetitions_per_epoch"] > 1:
            warnings.append(f"{c['name']} ({_size_text(c)}) at weight {c['weight']:.3g} is seen "
                            f"{c['repetitions']:.1f} times over the {_epochs_text(epochs)} "
                            f"({c['repetitions_per_epoch']:.2f} per epoch), beyond the ~{MAX_USEFUL_EPOCHS} "
                            f"useful repetitions: its weight is too high for its size; a weight of "
                            f"{c['max_useful_weight']:.3g} keeps it at {MAX_USEFUL_EPOCHS}")
        elif c["seen_fraction"] < MOSTLY_UNSEEN_FRACTION:
            read_once = c["tokens"] / (m["tokens_per_epoch"] * epochs)
            warnings.append(f"{c['name']} ({_size_text(c)}) at weight {c['weight']:.3g} is only "
                            f"{100 * c['seen_fraction']:.0f}% read over the {_epochs_text(epochs)}: most "
                            f"of it is never trained on; a weight of {read_once:.3g} reads it once, or cut "
                            "the file to what is used")
    return warnings


def print_corpora(result: dict) -> None:
    """The human report for several corpora: each corpus's report under its name, then the mixture."""
    from rich.console import Console
    console = Console()
    for report in result["corpora"]:
        console.rule(f"{report['name']} (weight {report['weight']:.3g})")
        print_analysis(report)
    console.rule("mixture")
    print_mixture(result["mixture"], console)


def print_mixture(m: dict, console) -> None:
    """The mixture's tables, advice lines and warnings."""
    from rich.table import Table
    estimated = "" if m["tokens_exact"] else " (estimated)"
    t = Table(title=f"mixture: {m['tokens_per_epoch']:,} tokens per epoch{estimated}")
    for column in ("corpus", "weight", "tokens", "share by size", "per epoch", f"over {m['epochs']} epochs"):
        t.add_column(column, justify="left" if column == "corpus" else "right")
    for c in m["corpora"]:
        t.add_row(c["name"], f"{c['weight']:.3g}", f"{c['tokens']:,}", f"{100 * c['natural_share']:.1f}%",
                  f"x{c['repetitions_per_epoch']:.2f}", f"x{c['repetitions']:.2f}")
    console.print(t)
    t = Table(title="tokens per parameter")
    for column in ("preset", "parameters", "mixture", f"without {m['largest']}",
                   f"epochs for {TOKENS_PER_PARAM}/parameter"):
        t.add_column(column, justify="left" if column == "preset" else "right")
    for name, p in m["presets"].items():
        t.add_row(name + (" (recommended)" if name == m["preset"] else ""), f"~{p['params'] / 1e6:.1f}M",
                  f"{p['tokens_per_param']:.3g}", f"{p['tokens_per_param_without_largest']:.3g}",
                  f"{p['epochs_for_20_tokens_per_param']:.3g}")
    console.print(t)
    for line in m["advice"]:
        console.print(line, highlight=False)
    for w in m["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if not m["warnings"]:
        console.print("no mixture warnings")
