"""Reading the raw input files of prepare-corpus: finding them (files, folders, globs), gzip /
bz2 / xz streams, the encoding (UTF-8 with or without BOM, UTF-16/32 with BOM, Windows-1252 /
Latin-1 byte runs inside UTF-8), telling text from binary data, and streaming bounded pieces of
lines. The cleaning rules are standarize.py's.
"""
from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import io
import lzma
import os
import re
from collections import Counter
import unicodedata
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from common import UserError

TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.bz2", ".txt.xz")
# Longest piece handed to the cleaner at once (bytes read per readline call). Longer
# lines are cut at their last whitespace and cleaned piece by piece.
MAX_PIECE_BYTES = 1 << 20
SNIFF_BYTES = 8192
# Binary detection (per input file, on samples: the first SAMPLE_BYTES of its text stream and, for
# an uncompressed file, SAMPLE_WINDOWS evenly spaced windows of WINDOW_BYTES up to its end). A file
# is binary, not text, when
#   - its first SNIFF_BYTES hold a NUL byte (text has none; UTF-16 without a byte-order mark has
#     many, and is refused with that hint);
#   - more than BINARY_CONTROL_RATIO of the sampled characters are C0 control characters other
#     than whitespace and ESC (text has ~0; random bytes ~10%);
#   - read as UTF-8, more than BINARY_INVALID_RATIO of them are bytes that are not valid UTF-8
#     (Latin-1 / Windows-1252 text: ~3%, at most 13% in the first 64 bytes of any document of
#     the Spanish test corpora; random bytes: 45-80%, or other 8-bit encodings: Cyrillic ~50%);
#   - read as UTF-16/32 (no legacy fallback there), more than BINARY_INVALID_RATIO_UTF16 of them
#     are undecodable, unassigned or private-use code points (text: ~0; random bytes: 15-100%).
# The ratios apply from MIN_SAMPLE_CHARS sampled characters on.
SAMPLE_BYTES = 1 << 16
WINDOW_BYTES = 1 << 14
SAMPLE_WINDOWS = 4
MIN_SAMPLE_CHARS = 64
BINARY_CONTROL_RATIO = 0.05
BINARY_INVALID_RATIO = 0.30
BINARY_INVALID_RATIO_UTF16 = 0.05
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13, 27))
_CONTROL_CHARS = re.compile("[" + "".join(map(chr, _CONTROL_BYTES)) + "]")

# Compressed streams, by their first bytes. bz2's "BZh" is plain text, so its block size digit and
# the magic of its first block (or of the end of an empty stream) must follow.
_COMPRESSED = ((re.compile(b"\x1f\x8b"), "gzip"), (re.compile(b"BZh[1-9](?:1AY&SY|\x17rE8P\x90)"), "bz2"),
               (re.compile(b"\xfd7zXZ\x00"), "xz"))
_READ_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError)


# --------------------------------------------------------------------------- decoding

_CP1252_TABLE: list[str] = []
_HANDLER = "mini_llm.cp1252_fallback"


def _cp1252_fallback(err: UnicodeDecodeError):
    """Codec error handler: bytes that are not valid UTF-8 are read as Windows-1252."""
    bad = err.object[err.start:err.end]
    return "".join(_CP1252_TABLE[b] for b in bad), err.end


def _register_fallback() -> None:
    if not _CP1252_TABLE:
        for b in range(256):
            try:
                _CP1252_TABLE.append(bytes([b]).decode("cp1252"))
            except UnicodeDecodeError:  # 0x81 0x8D 0x8F 0x90 0x9D: undefined, keep Latin-1
                _CP1252_TABLE.append(chr(b))
        codecs.register_error(_HANDLER, _cp1252_fallback)


def decode_bytes(raw: bytes) -> tuple[str, bool]:
    """UTF-8 where valid, Windows-1252 for the byte runs that are not; (text, repaired)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        _register_fallback()
        return raw.decode("utf-8", errors=_HANDLER), True


def _complete_utf8_len(raw: bytes) -> int:
    """Length of `raw` without a trailing, unfinished UTF-8 sequence (kept for the next read)."""
    n = len(raw)
    for back in range(1, min(4, n) + 1):
        b = raw[n - back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for its lead byte
            continue
        if b >= 0xC0:
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return n - back if need > back else n
        return n
    return n


def _sniff(path: Path) -> tuple[str | None, str, str | None]:
    """(compression or None, text encoding, why the file looks binary or None if it is text)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(10)
        compression = next((name for m, name in _COMPRESSED if m.match(magic)), None)
        with _open_stream(path, compression) as (raw, stream):
            samples = [(0, stream.read(SAMPLE_BYTES))]
            if compression is None:
                size = os.fstat(raw.fileno()).st_size
                starts = {(size - WINDOW_BYTES) * i // SAMPLE_WINDOWS & ~3 for i in range(1, SAMPLE_WINDOWS + 1)}
                for start in sorted(o for o in starts if o >= len(samples[0][1])):
                    raw.seek(start)
                    samples.append((start, raw.read(WINDOW_BYTES)))
    except _READ_ERRORS as e:
        raise _read_error(path, e) from None
    head = samples[0][1]
    encoding = "utf-8"
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        encoding = "utf-32"
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif head.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    return compression, encoding, _binary_reason(samples, encoding)


def _binary_reason(samples: list[tuple[int, bytes]], encoding: str) -> str | None:
    """Why a file is not text, judged on samples (offset, bytes) of it, the first at offset 0 (see
    SAMPLE_BYTES), or None. Each sample is judged on its own: text with binary data appended is
    binary."""
    head = samples[0][1]
    wide = encoding in ("utf-16", "utf-32")
    if wide:
        width = 2 if encoding == "utf-16" else 4
        little = head.startswith(codecs.BOM_UTF16_LE if width == 2 else codecs.BOM_UTF32_LE)
        codecs_ = [encoding] + [f"{encoding}-{'le' if little else 'be'}"] * (len(samples) - 1)  # windows: no BOM
        texts = [b[:len(b) - len(b) % width].decode(c, errors="replace") for (_, b), c in zip(samples, codecs_)]
        if "\x00" in texts[0][:SNIFF_BYTES // width]:
            return f"NUL characters in its first {SNIFF_BYTES // 1024} KB"
    elif b"\x00" in head[:SNIFF_BYTES]:
        return f"NUL bytes in its first {SNIFF_BYTES // 1024} KB; UTF-16 text needs a byte-order mark"
    else:
        samples = [(o, b if o == 0 else _whole_utf8(b)) for o, b in samples]
        texts = [b.decode("utf-8", errors="replace") for _, b in samples]
    for (offset, data), text in zip(samples, texts):
        n = len(text)
        if n < MIN_SAMPLE_CHARS:
            continue
        where = "at its start" if offset == 0 else f"from byte {offset:,} on"
        if wide:
            invalid = _implausible_chars(text)
            if invalid > BINARY_INVALID_RATIO_UTF16 * n:
                return f"{invalid / n:.0%} of its characters {where} are undecodable or unassigned as {encoding.upper()}"
        else:
            invalid = text.count("\ufffd") - data.count("\ufffd".encode())
            if invalid > BINARY_INVALID_RATIO * n:
                return (f"{invalid / n:.0%} of its bytes {where} are not valid UTF-8; Latin-1 or Windows-1252 "
                        "text has a few %, other encodings must be converted to UTF-8")
        controls = len(_CONTROL_CHARS.findall(text)) if wide else len(data) - len(data.translate(None, _CONTROL_BYTES))
        if controls > BINARY_CONTROL_RATIO * n:
            return f"{controls / n:.0%} of its characters {where} are control characters"
    return None


def _whole_utf8(window: bytes) -> bytes:
    """A window cut from the middle of a file without the partial characters at its two ends."""
    start = 0
    while start < min(3, len(window)) and window[start] & 0xC0 == 0x80:
        start += 1
    window = window[start:]
    return window[:_complete_utf8_len(window)]


def _implausible_chars(text: str) -> int:
    """Replacement characters (undecodable units) and unassigned, private-use or surrogate code points."""
    if text.isascii():
        return 0
    return sum(k for ch, k in Counter(text).items()
               if ch == "\ufffd" or (ch > "\x7f" and unicodedata.category(ch) in ("Cn", "Co", "Cs")))


def _read_error(path: Path, e: BaseException) -> UserError:
    return UserError(f"cannot read {path}: {e}; check that the file is intact")


class _open_stream:
    """Context manager: (raw file, decompressed binary stream) for a path."""

    def __init__(self, path: Path, compression: str | None):
        self.path, self.compression = path, compression

    def __enter__(self):
        self.raw = open(self.path, "rb")
        if self.compression == "gzip":
            self.stream = gzip.GzipFile(fileobj=self.raw, mode="rb")
        elif self.compression == "bz2":
            self.stream = bz2.BZ2File(self.raw, mode="rb")
        elif self.compression == "xz":
            self.stream = lzma.LZMAFile(self.raw, mode="rb")
        else:
            self.stream = self.raw
        return self.raw, self.stream

    def __exit__(self, *exc):
        if self.stream is not self.raw:
            self.stream.close()
        self.raw.close()


def _raw_chunks(stream: BinaryIO, encoding: str) -> Iterator[tuple[str, bool, bool]]:
    """(text, ends_line, repaired) from a binary stream; a line longer than MAX_PIECE_BYTES
    comes in several chunks (never splitting a character). The line terminator is removed."""
    if encoding in ("utf-16", "utf-32"):
        text_stream = io.TextIOWrapper(stream, encoding=encoding, errors="replace", newline="")
        chunk = text_stream.readline(MAX_PIECE_BYTES // 2)
        while chunk:
            after = text_stream.readline(MAX_PIECE_BYTES // 2)  # read ahead, as below
            ends = chunk.endswith(("\n", "\r"))
            if ends:
                chunk = chunk[:-2] if chunk.endswith("\r\n") else chunk[:-1]
            yield chunk, ends or not after, "\ufffd" in chunk
            chunk = after
        text_stream.detach()
        return
    if encoding == "utf-8-sig":
        stream.read(3)
    pending = b""
    line = stream.readline(MAX_PIECE_BYTES)
    while line:
        raw, pending = pending + line, b""
        line = stream.readline(MAX_PIECE_BYTES)  # read ahead: the last chunk is cut nowhere
        ends = raw.endswith(b"\n")
        if ends:
            raw = raw[:-1]
        elif line:  # a long line goes on: hold back an unfinished character for the next chunk
            cut = _complete_utf8_len(raw)
            raw, pending = raw[:cut], raw[cut:]
        else:  # the file's last line, without a newline (a trailing unfinished byte sequence is
            ends = True  # not a character split between reads: it stays with its line)
        text, repaired = decode_bytes(raw)
        yield text, ends, repaired


def _line_pieces(chunks: Iterator[tuple[str, bool, bool]]) -> Iterator[tuple[str, bool, bool]]:
    """(piece, ends_line, repaired) with CR/CRLF turned into line ends; chunks that do not end
    a line are cut after their last whitespace (the rest is carried to the next chunk) so
    that no word or mojibake sequence is split between two pieces."""
    carry = ""
    for text, ends, repaired in chunks:
        if carry:
            text, carry = carry + text, ""
        if ends:
            if text.endswith("\r"):
                text = text[:-1]
        else:
            if text.endswith("\r"):
                text, carry = text[:-1], "\r"
            cut = max(text.rfind(" "), text.rfind("\t"), text.rfind("\r"), text.rfind("\n")) + 1
            if 0 < cut < len(text):
                text, carry = text[:cut], text[cut:] + carry
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" in text:
            parts = text.split("\n")
            for part in parts[:-1]:
                yield part, True, repaired
            text = parts[-1]
        yield text, ends, repaired
    if carry:
        yield carry.rstrip("\r"), True, False


# --------------------------------------------------------------------------- inputs

def expand_inputs(specs: Sequence[str]) -> list[tuple[Path, bool]]:
    """Files, directories (every *.txt[.gz|.bz2|.xz] inside, recursively, sorted) and globs
    -> [(path, named_explicitly)], without repeats. UserError when something matches nothing."""
    found: list[tuple[Path, bool]] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            members = sorted(q for q in p.rglob("*")
                             if q.is_file() and not q.name.startswith(".")
                             and q.name.lower().endswith(TEXT_SUFFIXES))
            if not members:
                raise UserError(f"directory {p} holds no .txt files (.txt.gz/.txt.bz2/.txt.xz also count); "
                                "pass the files themselves or a glob")
            found += [(q, False) for q in members]
        elif p.exists():
            if not p.is_file():
                raise UserError(f"input is not a regular file: {p}")
            found.append((p, True))
        elif glob.has_magic(spec):
            members = sorted(Path(q) for q in glob.glob(spec, recursive=True) if Path(q).is_file())
            if not members:
                raise UserError(f"no file matches {spec!r}; check the pattern (quote it so the shell does not expand it)")
            found += [(q, False) for q in members]
        else:
            raise UserError(f"input not found: {spec}")
    seen, unique = set(), []
    for path, explicit in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((path, explicit))
    return unique
