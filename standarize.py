"""Text cleaning for prepare-corpus: mojibake repair, Unicode, whitespace, case (reading the input
files, their encodings and binary detection: textfiles.py).

The pipeline streams: files are read in bounded pieces (a line, or a slice of a
very long line cut at whitespace), each piece is cleaned on its own, and a
`_DocumentWriter` applies the whole-document rules (blank lines, trimming,
length, duplicate hash) while writing, so memory stays flat whatever the size
of the input or of a single document.

Input files that look like binary data (NUL bytes at the start, many control characters or
bytes that are not text in any supported encoding, at the start or further in: see SAMPLE_BYTES)
are skipped with a warning naming them; when no usable input is left that is a UserError.

Rules, in order, for every line (their result is a fixed point: cleaning it again changes
nothing, see `clean_piece`):
1. decode: UTF-8 (BOM or not), UTF-16/32 with BOM; bytes that are not valid
   UTF-8 are read as Windows-1252 (Latin-1 for its 5 undefined bytes), per
   byte run, so a Latin-1 file, a UTF-8 file with a stray byte and a mixed
   file all decode without loss (those lines are counted as repaired);
2. line separators (CR, CRLF, U+2028/2029, VT, FF) become "\\n";
3. mojibake: ftfy (`fix_mojibake`), plus the "dropped soft hyphen" case;
4. control and invisible format characters are removed (tab and newline stay);
5. Unicode space characters (no-break space, thin space...) become " ";
6. lowercase (unless preserve_case), then Unicode NFC.
Then per document: runs of spaces collapse to one, lines lose leading spaces
and trailing whitespace, at most one blank line in a row (paragraph breaks
kept), no leading or trailing blank lines.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

from common import Progress, UserError, atomic_path, log, refuse_same_file
from textfiles import _READ_ERRORS, _line_pieces, _open_stream, _raw_chunks, _read_error, _sniff, expand_inputs
from tokenizer import DOC_SEPARATOR, EOS_TOKEN, PAD_TOKEN

DEFAULT_SEPARATOR = DOC_SEPARATOR
# Special-token strings of the project tokenizer (INTERFACES.md): inside document text
# they would be encoded as special tokens, so they are removed from the text.
SPECIAL_TOKEN_STRINGS = (DOC_SEPARATOR, EOS_TOKEN, PAD_TOKEN)


# --------------------------------------------------------------------------- character classes

# What Windows-1252 turns the UTF-8 continuation bytes 0x80-0xBF into (Latin-1 for the
# five bytes 1252 leaves undefined): the second character of every mojibake pair.
_CONT = ("\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
         "\u2018\u2019\u201a\u201c\u201d\u201e\u2020\u2021\u2022\u2026\u2030\u2039\u203a\u20ac\u2122")
_LOWER = "a-z\u00df-\u00f6\u00f8-\u00ff"
_UPPER = "A-Z\u00c0-\u00d6\u00d8-\u00de"
# Lines worth handing to ftfy (it runs at ~1 MB/s, these filters at ~50 MB/s): a UTF-8
# lead byte read as 1252 followed by a continuation, a lone Ã/Â, C1 controls, terminal
# escapes, ligatures, full-width forms, surrogates, HTML entities. _SUSPECT_GATE is a
# single character class (fast) that every such line matches.
_SUSPECT_GATE = re.compile(f"[{_CONT}\u00c2\u00c3\x1b\ufb00-\ufb06\uff01-\uff5e\uff61-\uffdc\ud800-\udfff]")
_SUSPECT_PAIR = re.compile(f"[\u00c2-\u00f4][{_CONT}]")
_SUSPECT_SINGLE = re.compile("[\u00c2\u00c3\u0080-\u009f\x1b\ufb00-\ufb06\uff01-\uff5e\uff61-\uffdc\ud800-\udfff]")
_HTML_ENTITY = re.compile("&#?[A-Za-z0-9]+;")
# Every suspect sequence with its neighbours: two texts with the same list look the same to the repair.
_SUSPECT_CONTEXT = re.compile(f".?(?:{_SUSPECT_PAIR.pattern}|{_SUSPECT_SINGLE.pattern}|{_HTML_ENTITY.pattern}).?")
# "í" is C3 AD in UTF-8; read as 1252 it becomes "Ã" + soft hyphen, and the invisible
# soft hyphen is often dropped later ("historiografÃa"). An "Ã" touching a lowercase
# letter and not followed by a continuation character is such a case: restore the
# soft hyphen so ftfy decodes the pair. (Correct text never has a capital Ã inside a
# lowercase word; upper-case Í/Á lose an undefined 1252 byte instead and stay ambiguous
# with Portuguese "SÃO", so they are left alone.)
_DROPPED_SOFT_HYPHEN = re.compile(
    f"(?<=[{_LOWER}])\u00c3(?![{_CONT}{_UPPER}])|(?<![{_UPPER}])\u00c3(?=[{_LOWER}])")
# Line breaks besides CR/LF. NEL (U+0085) is not one of them: in real text it is a Windows-1252
# "…" (byte 0x85) read as Latin-1, and ftfy's C1 repair turns it back into "…".
_LINE_BREAKS = re.compile("[\u2028\u2029\x0b\x0c]")
# C0/C1 controls except tab and newline; soft hyphen, zero-width space, word joiner,
# stray BOMs and non-characters (all invisible).
_CONTROL_KEEP_NEWLINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff\ufffe\uffff]")
_UNICODE_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_SPACE_RUN = re.compile(" {2,}")

_FTFY_CONFIG = None


def _ftfy_config():
    """ftfy settings: everything on except quote uncurling (“ ” « » are kept as typed) and
    line-break fixing (done here, across pieces). Built lazily: nothing runs at import."""
    global _FTFY_CONFIG
    if _FTFY_CONFIG is None:
        from ftfy import TextFixerConfig
        _FTFY_CONFIG = TextFixerConfig(uncurl_quotes=False, fix_line_breaks=False, normalization="NFC")
    return _FTFY_CONFIG


# --------------------------------------------------------------------------- cleaning rules

def fix_mojibake(text: str) -> str:
    """Repair text that was decoded with the wrong codec (ftfy), including the
    double-encoded "í" whose invisible soft hyphen was dropped ("historiografÃa")."""
    if not _needs_ftfy(text):
        return text
    import ftfy
    if "\u00c3" in text:
        text = _DROPPED_SOFT_HYPHEN.sub("\u00c3\u00ad", text)
    fixed = ftfy.fix_text(text, _ftfy_config())
    # A restored pair ftfy left alone (a line with nothing else to fix): decode it here.
    return fixed.replace("\u00c3\u00ad", "\u00ed")


def _needs_ftfy(text: str) -> bool:
    if "&" in text and _HTML_ENTITY.search(text):
        return True
    if text.isascii():
        return "\x1b" in text
    return bool(_SUSPECT_GATE.search(text)
                and (_SUSPECT_SINGLE.search(text) or _SUSPECT_PAIR.search(text)))


def remove_control_chars(text: str) -> str:
    """Drop control and invisible format characters; keep "\\n" and "\\t"."""
    return _CONTROL_KEEP_NEWLINE.sub("", text)


def normalize_line_breaks(text: str) -> str:
    """CRLF, CR, U+2028, U+2029, VT and FF all become "\\n"."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _LINE_BREAKS.sub("\n", text)


def normalize_unicode(text: str) -> str:
    """Unicode space characters become " ", then NFC."""
    return unicodedata.normalize("NFC", _UNICODE_SPACES.sub(" ", text))


def clean_piece(text: str, preserve_case: bool = False) -> tuple[str, bool]:
    """Character-level rules 2-6 for one line or line piece; returns (text, mojibake_fixed).

    The result may contain "\\n" (a line separator character inside the piece).

    Cleaning the output again changes nothing (clean_text is idempotent). Rules 4-6 and the
    document rules can make new mojibake out of text that had none, or show the repair a context
    it did not see (removing a control character joins its neighbours, lowercasing turns "Ê" into
    the UTF-8 lead byte "ê", NFC composes "A" + U+0303 into "Ã", stripping a line's leading space
    puts "Ã " at its start), so after the first round the repair runs again on the text as it will
    be written (without its leading and trailing spaces and tabs) while that still looks suspect,
    until nothing changes. Nearly every line needs one round: ftfy only runs on suspect ones."""
    if not text.isascii() or "\x0b" in text or "\x0c" in text:
        text = _LINE_BREAKS.sub("\n", text)
    if "\n" in text:  # each line on its own, as when the output is cleaned again
        lines = [clean_piece(line, preserve_case) for line in text.split("\n")]
        return "\n".join(line for line, _ in lines), any(fixed for _, fixed in lines)
    if not _needs_ftfy(text):  # most lines: nothing to repair (and nothing left for the loop below)
        cleaned = _character_rules(text, preserve_case)
        if not _needs_ftfy(cleaned):
            return cleaned, False
        fixed = text
    else:
        fixed = fix_mojibake(text)
    changed = fixed != text
    lead, core, trail = _split_ends(_character_rules(fixed, preserve_case))
    for _ in range(_MAX_CLEAN_ROUNDS):
        if not _needs_ftfy(core) or (not changed and _looks_the_same(core, text)):
            break
        fixed = fix_mojibake(core)
        if fixed == core:
            break
        changed = True
        more_lead, core, more_trail = _split_ends(_character_rules(fixed, preserve_case))
        lead, trail = lead + more_lead, more_trail + trail
    text = lead + core + trail
    return (_SPACE_RUN.sub(" ", text) if "  " in text else text), changed


def _looks_the_same(text: str, seen: str) -> bool:
    """`text` holds the suspect sequences of `seen`, a text the repair left as it was, with the same
    neighbours (lowercase ASCII letters or a collapsed space elsewhere do not count): it needs no
    second look."""
    return text == seen or _SUSPECT_CONTEXT.findall(text) == _SUSPECT_CONTEXT.findall(seen)


def _split_ends(text: str) -> tuple[str, str, str]:
    """(leading spaces and tabs, the rest, trailing spaces and tabs): what a line's ends lose when
    it is written."""
    core = text.strip(" \t")
    if len(core) == len(text):
        return "", text, ""
    start = len(text) - len(text.lstrip(" \t"))
    return text[:start], core, text[start + len(core):]


# Rounds of clean_piece after the first before it stops looking for a fixed point (real text needs
# none or one; each round that changes the text shortens or settles it: the bound is never reached).
_MAX_CLEAN_ROUNDS = 8


def _character_rules(text: str, preserve_case: bool) -> str:
    """Rules 4-6 (each idempotent): control characters, Unicode spaces (and runs of spaces, which
    the document rules collapse anyway: the repair must see the text as it is written), case, NFC."""
    if not text.isascii():
        text = _UNICODE_SPACES.sub(" ", text)
    text = _CONTROL_KEEP_NEWLINE.sub("", text)
    if "  " in text:
        text = _SPACE_RUN.sub(" ", text)
    if not preserve_case:
        text = text.lower()
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return text


def normalize_whitespace(text: str) -> str:
    """Document-level whitespace rules on an in-memory text (see the module docstring)."""
    return _write_document(normalize_line_breaks(text).split("\n"))


def clean_text(text: str, preserve_case: bool = False) -> str:
    """All cleaning rules applied to one in-memory document (what prepare-corpus writes)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # clean_piece may turn a line separator character inside a line into "\n"
    return _write_document([part for line in lines for part in clean_piece(line, preserve_case)[0].split("\n")])


def _write_document(lines: list[str]) -> str:
    """`lines` (no newline inside) through a _DocumentWriter: the document-level whitespace rules."""
    out = io.BytesIO()
    writer = _DocumentWriter(out, DEFAULT_SEPARATOR)
    writer.start()
    for i, line in enumerate(lines):
        if i:
            writer.end_line()
        writer.add(line)
    writer.finish()
    return out.getvalue().decode("utf-8")


# --------------------------------------------------------------------------- document writer

class _DocumentWriter:
    """Writes one cleaned document at a time into a binary file, applying the whitespace
    rules across pieces without holding the document: trailing whitespace and newlines are
    held back until more text follows (so documents are trimmed), and the character count
    and content hash are kept on the fly. `finish()` can drop the document (truncate)."""

    def __init__(self, out: BinaryIO, separator: str):
        self.out = out
        self.sep_line = ("\n" + separator + "\n").encode("utf-8")
        self.docs_written = 0

    def start(self) -> None:
        self.start_pos = self.out.tell()
        self.chars = 0
        self.hash = hashlib.blake2b(digest_size=16)
        self.has_text = False
        self.line_has_text = False
        self.pending_ws = ""
        self.pending_newlines = 0
        self.blank_run = 0

    def add(self, text: str) -> None:
        """Append a piece of the current line (no newline inside)."""
        if self.pending_ws:
            text, self.pending_ws = self.pending_ws + text, ""
        if "  " in text:
            text = _SPACE_RUN.sub(" ", text)
        body = text.rstrip(" \t")
        if len(body) < len(text):
            self.pending_ws = text[len(body):]
        if not self.line_has_text:
            body = body.lstrip(" \t" if not self.has_text else " ")
        if not body:
            return
        if not self.has_text:
            if self.docs_written:
                self.out.write(self.sep_line)
            self.has_text = True
        elif self.pending_newlines:
            body = "\n" * self.pending_newlines + body
        self.pending_newlines = 0
        self.line_has_text = True
        self.chars += len(body)
        data = body.encode("utf-8")
        self.hash.update(data)
        self.out.write(data)

    def end_line(self) -> None:
        self.pending_ws = ""
        if self.line_has_text:
            self.pending_newlines = 1
            self.blank_run = 0
        else:
            self.blank_run += 1
            if self.has_text:
                self.pending_newlines = min(self.pending_newlines + 1, 2)
        self.line_has_text = False

    def finish(self) -> tuple[int, bytes]:
        """(characters, content digest) of the document just written; call keep() or drop()."""
        return self.chars, self.hash.digest()

    def keep(self) -> None:
        self.docs_written += 1

    def drop(self) -> None:
        self.out.seek(self.start_pos)
        self.out.truncate()


# --------------------------------------------------------------------------- prepare-corpus

@dataclass
class PrepareStats:
    output: str = ""
    files: int = 0
    files_skipped_binary: int = 0     # input files that looked like binary data (each named in a warning)
    documents_in: int = 0
    documents_kept: int = 0
    dropped_empty: int = 0
    dropped_too_short: int = 0
    dropped_duplicate: int = 0
    chars_in: int = 0
    chars_out: int = 0
    lines_in: int = 0
    lines_repaired: int = 0          # lines that needed any repair (either kind below)
    lines_reencoded: int = 0         # held bytes that are not valid UTF-8 (read as Windows-1252)
    lines_mojibake_fixed: int = 0    # changed by the mojibake repair
    special_strings_removed: int = 0  # separator / special-token strings found inside text
    files_without_separator: int = 0
    encodings: dict = field(default_factory=dict)  # encoding label -> number of files
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_corpus(inputs: Sequence[str], output: str | os.PathLike, *, separator: str = DEFAULT_SEPARATOR,
                   preserve_case: bool = False, split_on_blank_lines: int | None = None,
                   min_chars: int = 1, keep_duplicates: bool = False, quiet: bool = False) -> PrepareStats:
    """Clean `inputs` into one corpus file at `output` (written atomically); return the stats.

    Memory stays flat: documents are streamed to the output and dropped ones truncated
    away; duplicate detection keeps one 16-byte hash per kept document."""
    t0 = time.monotonic()
    separator = separator.strip()
    if not separator or "\n" in separator:
        raise UserError("--separator must be a non-empty single line")
    if Path(output).is_dir():
        raise UserError(f"--output {output} is a folder; give a file name such as {Path(output) / 'corpus.txt'}")
    files = expand_inputs(inputs)
    refuse_same_file([p for p, _ in files], output)
    sniffed, binary = [], []
    for path, explicit in files:
        if path.stat().st_size == 0:
            if explicit:
                raise UserError(f"input file is empty: {path}")
            log.warning(f"skipping empty file {path}")
            continue
        compression, encoding, reason = _sniff(path)
        if reason is not None:
            log.warning(f"warning: skipping {path}: it looks like binary data, not text ({reason})")
            binary.append((path, reason))
            continue
        sniffed.append((path, compression, encoding))
    if not sniffed:
        if binary:
            what = (f"{binary[0][0]} looks like binary data, not text ({binary[0][1]})" if len(binary) == 1 else
                    f"all {len(binary)} non-empty input files look like binary data, not text (e.g. "
                    f"{binary[0][0]}: {binary[0][1]})")
            raise UserError(f"{what}; nothing left to prepare: pass text files (UTF-8, UTF-16 with a "
                            "byte-order mark, Latin-1 or Windows-1252)")
        raise UserError("every input file is empty; nothing to prepare")

    stats = PrepareStats(output=str(output), files=len(sniffed), files_skipped_binary=len(binary))
    try:
        _write_corpus(sniffed, output, stats, separator=separator, preserve_case=preserve_case,
                      split_on_blank_lines=split_on_blank_lines, min_chars=min_chars,
                      keep_duplicates=keep_duplicates, quiet=quiet)
    except OSError as e:      # reading errors became UserErrors inside; this is the output side
        raise UserError(f"cannot write {output}: {e.strerror or e}; check the folder and free space") from None
    if stats.files_without_separator and split_on_blank_lines is None:
        log.info(f"{stats.files_without_separator} input file(s) had no '{separator}' line and became one "
                 "document each (use --split-on-blank-lines N to cut them at N blank lines)")
    stats.seconds = round(time.monotonic() - t0, 3)
    return stats


def _write_corpus(sniffed, output, stats: PrepareStats, **options) -> None:
    total_bytes = sum(p.stat().st_size for p, _, _ in sniffed)
    with atomic_path(output) as tmp, open(tmp, "wb") as out, \
            Progress("prepare-corpus", total=total_bytes, unit="B", quiet=options.pop("quiet")) as progress:
        preparer = _Preparer(out, stats, **options)
        for path, compression, encoding in sniffed:
            try:
                preparer.add_file(path, compression, encoding, progress)
            except _READ_ERRORS as e:
                raise _read_error(path, e) from None
        if stats.documents_kept == 0:
            raise UserError("no text left after cleaning (every document was empty, too short or a duplicate); "
                            "check the input files and --min-chars")
        out.write(b"\n")


class _Preparer:
    """Feeds the pieces of every input file through the cleaner into one _DocumentWriter,
    deciding document boundaries and which documents to keep."""

    def __init__(self, out: BinaryIO, stats: PrepareStats, *, separator: str, preserve_case: bool,
                 split_on_blank_lines: int | None, min_chars: int, keep_duplicates: bool):
        self.stats = stats
        self.writer = _DocumentWriter(out, separator)
        self.separator = separator
        self.specials = tuple(dict.fromkeys((separator, *SPECIAL_TOKEN_STRINGS)))
        self.special_re = re.compile("|".join(map(re.escape, self.specials)))
        self.preserve_case = preserve_case
        self.split_on_blank_lines = split_on_blank_lines
        self.min_chars = min_chars
        self.keep_duplicates = keep_duplicates
        self.seen_hashes: set[bytes] = set()

    def close_document(self) -> None:
        chars, digest = self.writer.finish()
        stats = self.stats
        stats.documents_in += 1
        if chars == 0:
            stats.dropped_empty += 1
        elif chars < self.min_chars:
            stats.dropped_too_short += 1
        elif not self.keep_duplicates and digest in self.seen_hashes:
            stats.dropped_duplicate += 1
        else:
            if not self.keep_duplicates:
                self.seen_hashes.add(digest)
            stats.documents_kept += 1
            stats.chars_out += chars
            self.writer.keep()
            self.writer.start()
            return
        self.writer.drop()
        self.writer.start()

    def add_file(self, path: Path, compression: str | None, encoding: str, progress: Progress) -> None:
        stats, writer = self.stats, self.writer
        legacy_lines = 0          # lines that were not valid in the file's encoding
        has_utf8 = False          # some non-ASCII line decoded as valid UTF-8
        saw_separator = False
        doc_open = False          # the current document has seen at least one raw line
        line_start, line_repaired, line_fixed = True, False, False
        writer.start()
        with _open_stream(path, compression) as (raw, stream):
            last_pos = 0
            for n, (piece, ends, repaired) in enumerate(_line_pieces(_raw_chunks(stream, encoding))):
                if n % 4096 == 0:
                    pos = raw.tell()
                    progress.update(pos - last_pos)
                    last_pos = pos
                if line_start and ends and piece.strip() == self.separator:
                    saw_separator = True
                    if doc_open:
                        self.close_document()
                        doc_open = False
                    continue
                doc_open = True
                stats.chars_in += len(piece) + ends      # line breaks count, as in chars_out
                line_repaired |= repaired
                has_utf8 = has_utf8 or (not repaired and not piece.isascii())
                self._add_piece(piece)
                line_fixed |= self._last_fixed
                line_start = ends
                if not ends:
                    continue
                writer.end_line()
                stats.lines_in += 1
                stats.lines_reencoded += line_repaired
                stats.lines_mojibake_fixed += line_fixed
                stats.lines_repaired += line_repaired or line_fixed
                legacy_lines += line_repaired
                line_repaired = line_fixed = False
                if writer.blank_run == self.split_on_blank_lines and writer.has_text:
                    self.close_document()
                    doc_open = False
            progress.update(raw.tell() - last_pos)
        if doc_open:
            self.close_document()
        stats.files_without_separator += not saw_separator
        label = encoding
        if legacy_lines:
            log.info(f"{path}: {legacy_lines} line(s) were not valid {encoding} and were repaired")
            if not encoding.startswith("utf-8"):
                label = f"{encoding} (undecodable bytes replaced)"
            else:
                label = f"{encoding}+windows-1252" if has_utf8 or encoding != "utf-8" else "windows-1252"
        stats.encodings[label] = stats.encodings.get(label, 0) + 1

    def _remove_specials(self, text: str) -> str:
        """`text` without the separator and special-token strings (a removal that joins the pieces
        of another one, "<|do<|doc|>c|>", removes that one too)."""
        while self.special_re.search(text):
            text, n = self.special_re.subn("", text)
            self.stats.special_strings_removed += n
        return text

    def _add_piece(self, piece: str) -> None:
        cleaned, self._last_fixed = clean_piece(self._remove_specials(piece), self.preserve_case)
        # Cleaning can make a special string ("<|DOC|>" lowercased, full-width "＜｜ｐａｄ｜＞"
        # narrowed by the repair): remove it too, and clean what the removal joined (every round
        # shortens the text).
        while self.special_re.search(cleaned):
            cleaned, fixed = clean_piece(self._remove_specials(cleaned), self.preserve_case)
            self._last_fixed |= fixed
        if "\n" in cleaned:          # a line separator character inside the piece
            *lines, cleaned = cleaned.split("\n")
            for line in lines:
                self.writer.add(line)
                self.writer.end_line()
        self.writer.add(cleaned)


def print_summary(stats: PrepareStats) -> None:
    """The human summary: one table on stderr."""
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"prepare-corpus -> {stats.output}", show_header=True)
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("input files", stats.files),
        ("documents in", stats.documents_in),
        ("documents kept", stats.documents_kept),
        ("dropped: empty", stats.dropped_empty),
        ("dropped: too short", stats.dropped_too_short),
        ("dropped: duplicate", stats.dropped_duplicate),
        ("characters in", stats.chars_in),
        ("characters out", stats.chars_out),
        ("lines in", stats.lines_in),
        ("lines repaired", stats.lines_repaired),
        ("  not UTF-8 (read as Windows-1252)", stats.lines_reencoded),
        ("  mojibake fixed", stats.lines_mojibake_fixed),
    ]
    if stats.files_skipped_binary:
        rows.insert(1, ("input files skipped: binary", stats.files_skipped_binary))
    if stats.special_strings_removed:
        rows.append(("separator/special strings removed", stats.special_strings_removed))
    for name, value in rows:
        table.add_row(name, f"{value:,}")
    table.add_row("encodings", ", ".join(f"{k}: {v}" for k, v in sorted(stats.encodings.items())))
    table.add_row("time", f"{stats.seconds:.1f} s")
    Console(stderr=True).print(table)
