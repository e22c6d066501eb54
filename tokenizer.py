"""The byte-level BPE tokenizer: its special tokens, training one (init-tokenizer) with a fitness
report, and loading, checking and hashing a tokenizer.json.

Special-token ids are fixed: the document separator (`<|doc|>` unless init-tokenizer was given
another --separator) is id 0, `<|endoftext|>` 1, `<|pad|>` 2. Checkpoints and token stores record
the sha256 of the tokenizer file (tokenizer_hash). Corpus reading is corpus.py's.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from common import Progress, UserError, atomic_path, file_sha256, log, require_file
from config import MODEL_LIMITS
from corpus import DOC_SEPARATOR, _document_bytes, _text_pieces, read_documents

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
BYTE_ALPHABET = 256                      # byte-level BPE starts from every byte value
N_SPECIAL = 3                            # separator, end-of-text, padding (ids 0, 1, 2)
MIN_VOCAB_SIZE = BYTE_ALPHABET + N_SPECIAL
MAX_VOCAB_SIZE = MODEL_LIMITS["vocab_size"]
FITNESS_SAMPLE_CHARS = 2_000_000         # characters of training text used for the fitness report
FITNESS_MIN_WORD_CHARS = 8
LOWERCASE_MIN_MERGES = 200               # trained_on_lowercase decides from at least this many merges


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
    if vocab_size > MAX_VOCAB_SIZE:
        raise UserError(f"--vocab-size {vocab_size:,} is too large: at most {MAX_VOCAB_SIZE:,} (the largest model "
                        f"vocabulary mini-llm builds); try 8000-32000")
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


@contextlib.contextmanager
def specials_as_text(tok):
    """Inside the block, special-token strings in the text `tok` encodes are plain text, so a
    literal "<|doc|>" cannot fake a document boundary. `tok` None: nothing to do."""
    if tok is None:
        yield
        return
    was = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        yield
    finally:
        tok.encode_special_tokens = was


def encode_plain(tok, texts: list[str]) -> list[list[int]]:
    """tok's ids of each text, no special tokens added (encode_batch_fast, without offsets, where
    the library has it)."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=False)]


# ----------------------------------------------------------------------------------- fast encoding
#
# tiktoken encodes byte-level BPE 2-4x faster than the tokenizers library on 2 cores (8-14 against
# 2.7-4.3 MB/s on Spanish text, in one run), with another rule: in each word it merges the
# adjacent pair whose concatenation has the lowest id among all pairs whose concatenation is a
# token; tokenizers merges the adjacent pair that comes first in its merge list, among the pairs
# of that list. Both take the leftmost pair on a tie. They give the same ids when (a) the merges
# make distinct tokens whose ids increase along the list (and the vocabulary is the 256 bytes,
# the merges' tokens and the special tokens) and (b) every token encodes alone to itself.
# Proof: by (a), both pick the same pair as long as tiktoken's pick is a pair of the list. Say
# its first other pick is u, v -> t. Up to then both held the same pieces, and no pair of the list
# ranked below t was left. u v covers t's bytes with piece boundaries on both sides that no merge
# ever crossed, so tokenizers on t's bytes alone makes the same merges there and also stops at
# u, v (not a pair of the list, and nothing else to merge): t alone does not encode to t,
# against (b). So there is no such pick. The word split is GPT-2's pattern in two regex engines:
# checked on every character of the Basic Multilingual Plane in several contexts each time a
# tokenizer is checked, and in the tests on the other planes where Unicode assigns characters.

BYTE_LEVEL_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SPLIT_PROBE_CONTEXTS = "a{c}b {c}{c}1  {c}\t"   # a character between letters, after a space, in a
                                                 # run, before a digit, after spaces, before a tab


def split_probe(codepoints: Iterator[int]) -> list[str]:
    """Lines of text that put each character in SPLIT_PROBE_CONTEXTS, 64 characters a line."""
    chars = [chr(c) for c in codepoints if not 0xD800 <= c < 0xE000]  # surrogates are not text
    return ["".join(SPLIT_PROBE_CONTEXTS.format(c=c) for c in chars[i:i + 64]) + "\n"
            for i in range(0, len(chars), 64)]


def fast_plain_encoder(tok):
    """A function texts -> their ids by `tok` with special-token strings as plain text (as the
    token store encodes), computed by tiktoken, or None where that is not certain to give tok's
    ids (see above: tiktoken missing, another kind of tokenizer, conditions (a)-(b) not met, or the
    word split differing on the probe). Checking takes ~1 s; the answer is kept per tokenizer."""
    key = tok.to_str()
    if key not in _FAST_ENCODERS:
        _FAST_ENCODERS.clear()                      # one tokenizer per process in practice
        _FAST_ENCODERS[key] = _build_fast_encoder(tok, key)
    return _FAST_ENCODERS[key]


_FAST_ENCODERS: dict = {}


def _build_fast_encoder(tok, spec_json: str):
    try:
        import tiktoken
    except ImportError:
        return None
    ranks = _byte_level_ranks(tok, json.loads(spec_json))
    if ranks is None:
        return None
    encoding = tiktoken.Encoding("mini-llm", pat_str=BYTE_LEVEL_SPLIT, mergeable_ranks=ranks, special_tokens={})

    def encode(texts: list[str], threads: int = 1) -> list[list[int]]:
        return encoding.encode_ordinary_batch(texts, num_threads=max(1, threads))

    probe = split_probe(range(0x10000))
    with specials_as_text(tok):
        expected = encode_plain(tok, probe)
    if encode(probe, 2) != expected:
        log.info("tiktoken splits some text otherwise than this tokenizer: encoding with tokenizers")
        return None
    return encode


def _byte_level_ranks(tok, spec: dict) -> Optional[dict]:
    """{token bytes: id} of a byte-level BPE that meets conditions (a) and (b) above, special
    tokens left out; None for any other tokenizer."""
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if (spec.get("normalizer") is not None or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space")
            or not pre.get("use_regex", True) or model.get("type") != "BPE" or model.get("dropout")
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
            or model.get("byte_fallback") or not all(t.get("special") for t in spec.get("added_tokens", []))):
        return None
    vocab: dict = model.get("vocab") or {}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model.get("merges") or []]
    byte_of = _byte_level_alphabet()
    added = {t["content"] for t in spec.get("added_tokens", [])}
    made = [vocab.get(a + b) for a, b in merges]
    regular = {s: i for s, i in vocab.items() if s not in added}
    if (any(i is None for i in made) or any(x >= y for x, y in zip(made, made[1:]))   # (a)
            or len(regular) != len(byte_of) + len(merges) or not all(ch in regular for ch in byte_of)):
        return None
    if any([t.value for t in tok.model.tokenize(a + b)] != [a + b] for a, b in merges):   # (b)
        return None
    try:
        return {bytes(byte_of[ch] for ch in s): i for s, i in regular.items()}
    except KeyError:            # a character outside the byte-level alphabet
        return None


def _byte_level_alphabet() -> dict:
    """{character: byte} of byte-level BPE (GPT-2's): printable bytes stand for themselves, the
    others for the characters from U+0100 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(others)}}


def trained_on_lowercase(tok) -> bool:
    """Whether `tok` was trained on lowercased text (prepare-corpus without --preserve-case): it
    learned at least LOWERCASE_MIN_MERGES merges and none of them decodes to text holding a letter
    that lowercasing changes. Its model has then never seen a capital inside a word, and
    capitalised words reach it in pieces ("Señorías, el Gobierno de España": "S", "e", "ñor",
    "ías", ..., "G", "o", "bier", "no", ...: 17 tokens against 6 lowercased), so prompts and
    stop strings are lowercased for it.

    Upper-case words are among the first merges of any cased corpus ("ĠEl", "ĠLa", "ĠA" in
    Spanish); a cased corpus none of whose capitals made it into the merges is one the model saw
    almost no capitals in, where lowercasing its input costs next to nothing."""
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    merges = [i for piece, i in tok.get_vocab(with_added_tokens=False).items() if len(piece) > 1 and piece not in added]
    return len(merges) >= LOWERCASE_MIN_MERGES and \
        all(text == text.lower() for text in tok.decode_batch([[i] for i in merges]))


# ---------------------------------------------------------------------------------------- identity

@dataclass(frozen=True)
class TokenizerIdentity:
    """A tokenizer file loaded once and hashed once (see load_identity)."""
    path: Path
    tokenizer: Tokenizer
    sha256: str              # of the file bytes, as tokenizer_hash
    vocab_size: int          # special tokens included
    special: dict            # special_ids: {'sep': 0, 'eos': ..., 'pad': ...}

    @functools.cached_property
    def lowercase(self) -> bool:
        """trained_on_lowercase(tokenizer), worked out at first use (a pass over the vocabulary)."""
        return trained_on_lowercase(self.tokenizer)


def as_identity(tokenizer: "str | os.PathLike | TokenizerIdentity") -> TokenizerIdentity:
    """`tokenizer` itself when it is already a TokenizerIdentity, else load_identity(tokenizer):
    the CLI makes the identity once per command and every stage takes it (or a path)."""
    return tokenizer if isinstance(tokenizer, TokenizerIdentity) else load_identity(tokenizer)


def load_identity(path: str | os.PathLike) -> TokenizerIdentity:
    """Load the tokenizer.json at `path` and hash it; UserError (one line) as load_tokenizer."""
    tok = load_tokenizer(path)
    path = Path(path)
    return TokenizerIdentity(path=path, tokenizer=tok, sha256=file_sha256(path),
                             vocab_size=tok.get_vocab_size(with_added_tokens=True),
                             special=special_ids(tok, path))
