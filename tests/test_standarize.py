"""Unit tests for every cleaning rule in standarize.py (decoding, mojibake, Unicode, whitespace,
case, documents) and for the streaming reader (pieces, encodings, compression, inputs)."""
from __future__ import annotations

import bz2
import gzip
import lzma
import unicodedata

import pytest

import textfiles
from common import UserError
from conftest import corpus_slice
from standarize import (clean_piece, clean_text, fix_mojibake, normalize_unicode, normalize_whitespace, prepare_corpus,
                        remove_control_chars)
from textfiles import decode_bytes, expand_inputs


def prepare(tmp_path, *inputs, **kw):
    """Run prepare_corpus on the given inputs; return (output text, stats)."""
    out = tmp_path / "out.txt"
    stats = prepare_corpus([str(p) for p in inputs], out, quiet=True, **kw)
    return out.read_text(encoding="utf-8"), stats


def write(path, data: bytes):
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- mojibake

@pytest.mark.parametrize("broken, fixed", [
    ("educaciÃ³n", "educación"),
    ("Â¿QuÃ© tal?", "¿Qué tal?"),
    ("Â¡Hola!", "¡Hola!"),
    ("el niÃ±o y la niÃ±a", "el niño y la niña"),
    ("Ã‘andÃº", "Ñandú"),
    ("Â«comillasÂ»", "«comillas»"),
    ("â€œcitaâ€\x9d", "“cita”"),          # curly quotes are repaired and kept curly
    ("la canciÃ³n de MarÃ\xada", "la canción de María"),
])
def test_fix_mojibake_double_encoded(broken, fixed):
    assert fix_mojibake(broken) == fixed


@pytest.mark.parametrize("broken, fixed", [
    # UTF-8 "í" is C3 AD; read as Windows-1252 it is "Ã" + an invisible soft hyphen, which got lost
    ("historiografÃa", "historiografía"),
    ("la fÃsica moderna", "la física moderna"),
    ("polÃtica exterior", "política exterior"),
    ("MarÃa y su tÃa", "María y su tía"),
    ("tenÃa razón", "tenía razón"),
    ("aquÃ estamos", "aquí estamos"),        # word end, before a space (not ftfy's "à")
    ("está aquÃ.", "está aquí."),
    ("Ãndice general", "índice general"),     # word start
    ("la historiografÃa y la educaciÃ³n", "la historiografía y la educación"),  # with other mojibake
])
def test_fix_mojibake_dropped_soft_hyphen(broken, fixed):
    assert fix_mojibake(broken) == fixed


@pytest.mark.parametrize("text", [
    "SÃO PAULO", "NÃO", "São Paulo", "¿Qué? ¡Sí! «Niño» —dijo— Ñandú ü", "A Ã", "ascii only & plain",
    "acción» «otra", "el año 1984 costó 5 € o 4 £",
])
def test_fix_mojibake_leaves_correct_text(text):
    assert fix_mojibake(text) == text


def test_fix_mojibake_leaves_real_spanish_alone():
    text = corpus_slice("wiki_es.txt", n_chars=300_000)
    changed = [line for line in text.splitlines() if fix_mojibake(line) != line]
    assert changed == []


def test_html_entities_are_unescaped():
    assert fix_mojibake("Tom &amp; Jerry") == "Tom & Jerry"


# --------------------------------------------------------------------------- characters

def test_nfc():
    decomposed = "cafe\u0301 an\u0303o"
    assert normalize_unicode(decomposed) == "café año"
    assert unicodedata.is_normalized("NFC", clean_text(decomposed))
    assert clean_text(decomposed) == "café año"


def test_unicode_spaces_become_spaces():
    assert normalize_unicode("a\u00a0b\u2009c\u3000d") == "a b c d"
    assert clean_text("«\u00a0hola\u00a0»") == "« hola »"


def test_control_characters_removed_but_tab_and_newline_kept():
    assert remove_control_chars("a\x00b\x07c\x1bd\x7fe\x85f\tg\nh") == "abcdef\tg\nh"
    # invisible: soft hyphen, zero-width space, word joiner, stray BOM
    assert remove_control_chars("pa\u00adla\u200bbra\u2060\ufeff") == "palabra"
    assert clean_text("uno\tdos\x0ctres") == "uno\tdos\ntres"  # form feed is a line break


def test_line_endings():
    assert clean_text("a\r\nb\rc\u2028d\u2029e\x0bf\x0cg") == "a\nb\nc\nd\ne\nf\ng"
    # NEL is a Windows-1252 ellipsis read as Latin-1, not a line break
    assert clean_text("espera\u0085 ya\x0bvoy") == "espera… ya\nvoy"


def test_lowercase_by_default_and_preserve_case():
    text = "¿QUÉ PASÓ, SEÑOR ÑÚÑEZ? ¡ÁNIMO! «ÚLTIMA»"
    assert clean_text(text) == "¿qué pasó, señor ñúñez? ¡ánimo! «última»"
    assert clean_text(text, preserve_case=True) == text
    assert clean_piece("ÀÉÎÕÜ", preserve_case=False)[0] == "àéîõü"


# --------------------------------------------------------------------------- whitespace

def test_whitespace_collapse_and_trim():
    assert normalize_whitespace("  hola    que   tal  ") == "hola que tal"
    assert normalize_whitespace("uno \t \ndos") == "uno\ndos"          # trailing whitespace dropped
    assert normalize_whitespace("a\tb") == "a\tb"                    # tabs inside a line stay


def test_blank_lines_at_most_one_and_paragraphs_kept():
    text = "\n\n  \npárrafo uno\nsigue\n\n\n\n   \n\npárrafo dos\n\n\n"
    assert normalize_whitespace(text) == "párrafo uno\nsigue\n\npárrafo dos"


def test_whitespace_only_document_is_empty():
    assert normalize_whitespace(" \n\t\n   ") == ""
    assert clean_text("\x00\x01 \u200b\n") == ""


def test_clean_text_keeps_spanish_punctuation():
    text = "¿Dónde está el niño? ¡Allí! «Ya voy» —dijo—. Pingüino, año, acción…"
    assert clean_text(text, preserve_case=True) == text


# --------------------------------------------------------------------------- decoding

def test_decode_bytes():
    assert decode_bytes("canción".encode("utf-8")) == ("canción", False)
    assert decode_bytes("canción".encode("latin-1")) == ("canción", True)
    assert decode_bytes(b"\x93hola\x94 \x80 \x85") == ("“hola” € …", True)          # Windows-1252
    mixed = "café ".encode("utf-8") + "café".encode("latin-1")                 # mixed in one line
    assert decode_bytes(mixed) == ("café café", True)
    assert decode_bytes(b"undefined \x81 byte")[0] == "undefined \x81 byte"


def test_complete_utf8_len():
    data = "añ€😀".encode("utf-8")
    for cut in range(len(data) + 1):
        keep = textfiles._complete_utf8_len(data[:cut])
        data[:keep].decode("utf-8")                      # never splits a character
        assert cut - keep < 4


SPANISH = "El niño comió pingüino. ¿Qué año? ¡Sí! «Acción» y canción.\nSegunda línea aquí.\n"


@pytest.mark.parametrize("encoding, bom", [
    ("utf-8", b""),
    ("utf-8", b"\xef\xbb\xbf"),
    ("utf-16-le", b"\xff\xfe"),
    ("utf-16-be", b"\xfe\xff"),
    ("utf-32-le", b"\xff\xfe\x00\x00"),
    ("latin-1", b""),
    ("cp1252", b""),
])
def test_encodings(tmp_path, encoding, bom):
    text = SPANISH + ("Precio: 5 € “citas”\n" if encoding in ("cp1252", "utf-8", "utf-16-le") else "")
    path = write(tmp_path / "in.txt", bom + text.encode(encoding))
    out, stats = prepare(tmp_path, path, preserve_case=True)
    assert out == text.rstrip("\n") + "\n"
    assert "\ufeff" not in out
    legacy = encoding in ("latin-1", "cp1252")
    assert (stats.lines_reencoded > 0) == legacy
    assert stats.lines_repaired == (text.count("\n") if legacy else 0)


def test_latin1_lines_in_utf8_file_are_counted(tmp_path):
    data = "línea buena\n".encode() + "línea mala\n".encode("latin-1") + b"ascii\n"
    out, stats = prepare(tmp_path, write(tmp_path / "in.txt", data))
    assert out == "línea buena\nlínea mala\nascii\n"
    assert stats.lines_repaired == 1 and stats.lines_reencoded == 1
    assert stats.encodings == {"utf-8+windows-1252": 1}


def test_mojibake_lines_are_counted(tmp_path):
    data = "la historiografÃa\nbien\neducaciÃ³n\n".encode()
    out, stats = prepare(tmp_path, write(tmp_path / "in.txt", data))
    assert out == "la historiografía\nbien\neducación\n"
    assert stats.lines_mojibake_fixed == 2 and stats.lines_repaired == 2


@pytest.mark.parametrize("suffix, compress", [
    (".txt.gz", gzip.compress), (".txt.bz2", bz2.compress), (".txt.xz", lzma.compress),
])
def test_compressed_inputs(tmp_path, suffix, compress):
    path = write(tmp_path / f"in{suffix}", compress(SPANISH.encode("utf-8")))
    out, _ = prepare(tmp_path, path, preserve_case=True)
    assert out == SPANISH.rstrip("\n") + "\n"


def test_corrupt_compressed_file_is_a_user_error(tmp_path):
    data = gzip.compress(SPANISH.encode() * 200)
    path = write(tmp_path / "in.txt.gz", data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read"):
        prepare(tmp_path, path)


# --------------------------------------------------------------------------- inputs

def test_directory_inputs_sorted_txt_only(tmp_path):
    d = tmp_path / "raw"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("documento b")
    (d / "a.txt").write_text("documento a")
    (d / "sub" / "c.txt").write_text("documento c")
    (d / "notes.md").write_text("no")
    (d / "z.txt.gz").write_bytes(gzip.compress("documento z".encode()))
    (d / ".hidden.txt").write_text("no")
    names = [p.name for p, _ in expand_inputs([str(d)])]
    assert names == ["a.txt", "b.txt", "c.txt", "z.txt.gz"]
    out, stats = prepare(tmp_path, d)
    assert out == "documento a\n<|doc|>\ndocumento b\n<|doc|>\ndocumento c\n<|doc|>\ndocumento z\n"
    assert stats.files == 4 and stats.documents_kept == 4


def test_glob_inputs_and_repeats(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.txt"):
        (tmp_path / name).write_text(f"texto {name}")
    paths = expand_inputs([str(tmp_path / "x*.txt"), str(tmp_path / "x1.txt")])
    assert [p.name for p, _ in paths] == ["x1.txt", "x2.txt"]
    with pytest.raises(UserError, match="no file matches"):
        expand_inputs([str(tmp_path / "nada*.txt")])
    with pytest.raises(UserError, match="not found"):
        expand_inputs([str(tmp_path / "missing.txt")])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no .txt files"):
        expand_inputs([str(tmp_path / "empty_dir")])


def test_binary_and_empty_inputs_are_user_errors(tmp_path):
    png = write(tmp_path / "img.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    with pytest.raises(UserError, match="binary"):
        prepare(tmp_path, png)
    ctrl = write(tmp_path / "ctrl.txt", bytes(b % 31 + 1 for b in range(2000)))   # control bytes, no NUL
    with pytest.raises(UserError, match="binary"):
        prepare(tmp_path, ctrl)
    empty = write(tmp_path / "empty.txt", b"")
    with pytest.raises(UserError, match="empty"):
        prepare(tmp_path, empty)
    blank = write(tmp_path / "blank.txt", b"  \n\n\t\n")
    with pytest.raises(UserError, match="no text"):
        prepare(tmp_path, blank)


# --------------------------------------------------------------------------- documents

def test_separator_lines_and_files_split_documents(tmp_path):
    # a separator line may carry spaces; a trailing separator or two in a row add no document;
    # a document of blank lines is counted and dropped as empty
    a = write(tmp_path / "a.txt", "uno\n<|doc|>\n  <|doc|>  \ndos\n<|doc|>\n \n\n<|doc|>\n".encode())
    b = write(tmp_path / "b.txt", b"tres")
    out, stats = prepare(tmp_path, a, b)
    assert out == "uno\n<|doc|>\ndos\n<|doc|>\ntres\n"
    assert stats.documents_in == 4 and stats.dropped_empty == 1 and stats.documents_kept == 3


def test_custom_separator_is_written_as_given(tmp_path):
    a = write(tmp_path / "a.txt", "UNO\n=== DOC ===\nDOS\n".encode())
    out, _ = prepare(tmp_path, a, separator="=== DOC ===")
    assert out == "uno\n=== DOC ===\ndos\n"


def test_special_token_strings_inside_text_are_removed(tmp_path):
    a = write(tmp_path / "a.txt", "texto <|doc|> con <|endoftext|> marcas\n".encode())
    out, stats = prepare(tmp_path, a)
    assert out == "texto con marcas\n"
    assert stats.special_strings_removed == 2


def test_split_on_blank_lines(tmp_path):
    a = write(tmp_path / "a.txt", "uno\n\ndos\n\n\ntres\n\n\n\n\ncuatro\n".encode())
    out, _ = prepare(tmp_path, a)
    assert out == "uno\n\ndos\n\ntres\n\ncuatro\n"                     # default: one document
    out, stats = prepare(tmp_path, a, split_on_blank_lines=2)
    assert out == "uno\n\ndos\n<|doc|>\ntres\n<|doc|>\ncuatro\n"
    assert stats.documents_kept == 3


def test_min_chars_and_duplicates(tmp_path):
    text = "documento largo uno\n<|doc|>\ncorto\n<|doc|>\nDocumento largo uno\n<|doc|>\ndocumento largo dos\n"
    a = write(tmp_path / "a.txt", text.encode())
    out, stats = prepare(tmp_path, a, min_chars=10)
    assert out == "documento largo uno\n<|doc|>\ndocumento largo dos\n"
    assert (stats.documents_in, stats.documents_kept) == (4, 2)
    assert (stats.dropped_too_short, stats.dropped_duplicate, stats.dropped_empty) == (1, 1, 0)
    out, stats = prepare(tmp_path, a, min_chars=10, keep_duplicates=True)
    assert out.count("documento largo uno") == 2 and stats.dropped_duplicate == 0
    out, stats = prepare(tmp_path, a, min_chars=10, preserve_case=True)    # case differs: not duplicates
    assert stats.dropped_duplicate == 0


def test_dropped_first_document_leaves_no_separator(tmp_path):
    a = write(tmp_path / "a.txt", b"x\n<|doc|>\nbastante texto\n<|doc|>\ny\n")
    out, stats = prepare(tmp_path, a, min_chars=5)
    assert out == "bastante texto\n"
    assert stats.chars_out == len("bastante texto")


# --------------------------------------------------------------------------- streaming

def test_pieces_give_the_same_output_as_whole_lines(tmp_path, monkeypatch):
    """A tiny read size cuts every line into pieces (and characters between reads): the
    output must not change."""
    text = corpus_slice("wiki_es.txt", n_docs=40)
    text = text.replace("\n", "   \n  ", 50) + "\r\nfin  con\r\n\r\n\r\n  espacios\tde   más   \r\n"
    text += "la historiografÃa y la educaciÃ³n en   Latinoamérica\n"
    path = write(tmp_path / "in.txt", text.encode("utf-8"))
    whole, stats_whole = prepare(tmp_path, path)
    monkeypatch.setattr(textfiles, "MAX_PIECE_BYTES", 37)
    pieces, stats_pieces = prepare(tmp_path, path)
    assert pieces == whole
    assert stats_pieces.documents_kept == stats_whole.documents_kept == 40
    assert "historiografía y la educación en latinoamérica" in whole


def test_long_line_in_pieces_matches_clean_text(tmp_path, monkeypatch):
    line = ("Érase una vez   un  niño  que   vivía\taquí.  " * 500).strip()
    path = write(tmp_path / "in.txt", (line + "\r\nfinal\r\n").encode("utf-8"))
    monkeypatch.setattr(textfiles, "MAX_PIECE_BYTES", 1000)
    out, _ = prepare(tmp_path, path)
    assert out == clean_text(line + "\nfinal") + "\n"


def test_utf16_in_pieces(tmp_path, monkeypatch):
    text = ("línea con ñ y acentos áéíóú " * 40 + "\n") * 5
    path = write(tmp_path / "in.txt", b"\xff\xfe" + text.encode("utf-16-le"))
    monkeypatch.setattr(textfiles, "MAX_PIECE_BYTES", 100)
    out, _ = prepare(tmp_path, path)
    assert out == clean_text(text) + "\n"
