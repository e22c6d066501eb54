"""Reading a corpus file: its documents, and cutting long texts into pieces for batch encoding.

A corpus is UTF-8 text whose documents are separated by lines holding only DOC_SEPARATOR (or the
--separator given to the stages); prepare-corpus writes that format. The separator string is
defined here and becomes special token id 0 of the tokenizer (tokenizer.py). Used by the
tokenizer, the token store (dataset.py), the analysis and the quickstart; imports none of them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Optional

from common import UserError

DOC_SEPARATOR = "<|doc|>"

# Long documents are cut into pieces of about this many characters (at safe line breaks) so that
# batch encoding spreads one big document over all cores; see _text_pieces for why the tokens are
# unchanged by the cut.
PIECE_CHARS = 16_000


def read_documents(path: str | os.PathLike, separator: str = DOC_SEPARATOR) -> Iterator[str]:
    """Stream the documents of a corpus file: text between lines holding only `separator`.

    UTF-8 (a BOM is dropped). The newline before a separator line is not part of the document;
    documents that are empty or whitespace only are skipped. A file without separator lines is
    one document. Raises UserError for text that is not UTF-8 or looks binary (NUL bytes).
    """
    path = Path(path)
    sep = _separator_line(separator, "separator")
    lines: list[str] = []
    try:
        with open(path, encoding="utf-8-sig", newline=None) as f:
            for line in f:
                # cheap test first: a separator line is short
                if len(line) <= len(sep) + 4 and line.strip() == sep:
                    doc = _finish_document(lines, path)
                    lines = []
                    if doc is not None:
                        yield doc
                else:
                    lines.append(line)
    except UnicodeDecodeError as e:
        bad = first_invalid_utf8(path)
        where = f"line {bad[0]}, byte {bad[1]:,}: {bad[2]}" if bad else e.reason
        raise UserError(f"{path} is not valid UTF-8 text ({where}); "
                        f"clean it with 'python main.py prepare-corpus' first")
    doc = _finish_document(lines, path)
    if doc is not None:
        yield doc


def first_invalid_utf8(path: str | os.PathLike, block: int = 1 << 24) -> Optional[tuple[int, int, str]]:
    """(line number from 1, byte offset from 0, what is wrong) of the first byte of `path` that
    is not valid UTF-8, or None if there is none. Read in blocks: a character cut by a block's
    end is carried into the next block, so only real errors count."""
    carry, offset, newlines = b"", 0, 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            data = carry + chunk
            if not data:
                return None
            try:
                data.decode("utf-8")
                good, carry = data, b""
            except UnicodeDecodeError as e:
                if chunk and e.end == len(data) and "end of data" in e.reason:   # cut by the block's end
                    good, carry = data[:e.start], data[e.start:]
                else:
                    return newlines + data.count(b"\n", 0, e.start) + 1, offset + e.start, e.reason
            if not chunk:
                return None
            newlines += good.count(b"\n")
            offset += len(good)


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


# ---------------------------------------------------------------------------------------- mixtures

class CorpusSpec:
    """One corpus of a mixture: `path`, `weight` (normalised: the weights of a mixture sum to 1)
    and `name` (the file's stem, made unique: how --select-on, the history and reports call it)."""

    __slots__ = ("path", "weight", "name")

    def __init__(self, path: Path, weight: float, name: str):
        self.path, self.weight, self.name = path, weight, name

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "weight": self.weight}

    def __repr__(self) -> str:
        return f"CorpusSpec({self.name!r}, {str(self.path)!r}, weight={self.weight:g})"


def parse_corpus_specs(values: list[str], option: str = "--corpus") -> list[CorpusSpec]:
    """`PATH[:WEIGHT] ...` -> CorpusSpecs with weights summing to 1 (a plain path weighs 1).

    A suffix `:W` is a weight when W is a positive number and the whole text is not itself an
    existing file. The same file twice is refused, as is a weight that is not a positive
    finite number. Names are the file stems; a repeated stem gets `-2`, `-3`, ...
    """
    if not values:
        raise UserError(f"{option} needs at least one corpus file")
    raw: list[tuple[Path, float]] = []
    for text in values:
        path, weight = text, 1.0
        head, colon, tail = text.rpartition(":")
        if colon and head and not os.path.exists(text):
            try:
                weight = float(tail)
            except ValueError:
                weight = None
            if weight is None or not weight > 0 or weight == float("inf"):
                raise UserError(f"{option} {text!r}: the weight after ':' must be a positive number "
                                f"(e.g. historia.txt:0.7)")
            path = head
        raw.append((Path(path), weight))
    seen: dict[str, Path] = {}
    for path, _ in raw:
        key = os.path.realpath(path)
        if key in seen:
            raise UserError(f"{option}: {path} is given twice; give each corpus once, with its weight")
        seen[key] = path
    total = sum(w for _, w in raw)
    names: dict[str, int] = {}
    specs = []
    for path, weight in raw:
        stem = path.stem or "corpus"
        names[stem] = names.get(stem, 0) + 1
        name = stem if names[stem] == 1 else f"{stem}-{names[stem]}"
        specs.append(CorpusSpec(path, weight / total, name))
    return specs
