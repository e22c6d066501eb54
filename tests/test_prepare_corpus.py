"""CLI tests: `python main.py prepare-corpus` on real text slices and on bad input."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, assert_user_error, corpus_slice

SENTINEL = "previous good output\n"


def sentinel(path):
    path.write_text(SENTINEL, encoding="utf-8")
    return path


def test_real_text_slice(cli, tmp_path):
    raw = corpus_slice("wiki_es.txt", n_docs=60)
    src = tmp_path / "raw.txt"
    src.write_text(raw, encoding="utf-8")
    out = tmp_path / "clean.txt"
    proc = cli("prepare-corpus", "--input", src, "--output", out, "--json")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)                       # stdout holds exactly one JSON object
    assert stats["documents_in"] == 60
    assert stats["documents_kept"] + stats["dropped_duplicate"] + stats["dropped_too_short"] == 60
    assert stats["chars_in"] > stats["chars_out"] > 0.9 * stats["chars_in"]
    text = out.read_text(encoding="utf-8")
    docs = text.rstrip("\n").split("\n<|doc|>\n")
    assert len(docs) == stats["documents_kept"]
    assert text == text.lower()
    assert docs[0] == raw.split("<|doc|>\n")[0].strip().lower()
    for ch in "áéíóúñ¿¡«»":
        assert (ch in raw.lower()) <= (ch in text), ch       # Spanish characters survive
    assert not list(tmp_path.glob(".clean.txt.*"))             # no temporary file left behind


def test_preserve_case_and_table_summary(cli, tmp_path):
    src = tmp_path / "raw.txt"
    src.write_text("¿Quién Ganó?  ¡ESPAÑA!\r\n\r\n\r\n«Sí»\r\n", encoding="utf-8")
    out = tmp_path / "clean.txt"
    proc = cli("prepare-corpus", "--input", src, "--output", out, "--preserve-case")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8") == "¿Quién Ganó? ¡ESPAÑA!\n\n«Sí»\n"
    assert proc.stdout == ""
    assert "documents kept" in proc.stderr and "lines repaired" in proc.stderr


def test_invalid_utf8_is_repaired_not_rejected(cli, tmp_path):
    src = tmp_path / "raw.txt"
    src.write_bytes("acción válida\n".encode() + b"caf\xe9 y \x93comillas\x94 \xff\n" + b"fin\n")
    out = tmp_path / "clean.txt"
    proc = cli("prepare-corpus", "--input", src, "--output", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8") == "acción válida\ncafé y “comillas” ÿ\nfin\n"
    stats = json.loads(proc.stdout)
    assert stats["lines_repaired"] == 1


def test_separator_never_present_is_one_document(cli, tmp_path):
    src = tmp_path / "raw.txt"
    src.write_text("párrafo uno\n\npárrafo dos\n\n\n\npárrafo tres\n", encoding="utf-8")
    out = tmp_path / "clean.txt"
    proc = cli("prepare-corpus", "--input", src, "--output", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["documents_kept"] == 1
    assert "--split-on-blank-lines" in proc.stderr          # the hint
    proc = cli("prepare-corpus", "--input", src, "--output", out, "--json", "--split-on-blank-lines", "2")
    assert json.loads(proc.stdout)["documents_kept"] == 2


def test_ten_megabyte_single_line(cli, tmp_path):
    words = corpus_slice("wiki_es.txt", n_chars=200_000).replace("<|doc|>", " ").split()
    rng = random.Random(0)
    line = " ".join(rng.choice(words) for _ in range(1_600_000))[:10_000_000]
    src = tmp_path / "raw.txt"
    src.write_text(line, encoding="utf-8")                   # no newline at all
    out = tmp_path / "clean.txt"
    proc = cli("prepare-corpus", "--input", src, "--output", out, "--json", "--preserve-case")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8") == line + "\n"


def test_memory_stays_flat_on_one_huge_document(tmp_path):
    """A 24 MB file that is a single document is never held whole."""
    para = corpus_slice("novelas_es.txt", n_chars=300_000).replace("<|doc|>", "")
    src = tmp_path / "big.txt"
    with open(src, "w", encoding="utf-8") as f:
        for _ in range(80):
            f.write(para)

    def peak_rss_kb(path) -> int:
        code = textwrap.dedent(f"""
            import resource, subprocess, sys
            subprocess.run([sys.executable, {str(ROOT / 'main.py')!r}, 'prepare-corpus', '--input',
                            {str(path)!r}, '--output', {str(tmp_path / 'out.txt')!r}, '--quiet'], check=True)
            print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
            """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout.split()[-1])

    small = tmp_path / "small.txt"
    small.write_text(para[:1000], encoding="utf-8")
    baseline = peak_rss_kb(small)
    big = peak_rss_kb(src)
    assert os.path.getsize(src) > 20_000_000
    assert big - baseline < 15_000, (baseline, big)           # < 15 MB above the baseline


# --------------------------------------------------------------------------- bad input

def bad_inputs(tmp_path):
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(3000))
    rnd = tmp_path / "random.bin"
    rnd.write_bytes(random.Random(1).randbytes(50_000))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n<|doc|>\n\n", encoding="utf-8")
    (tmp_path / "emptydir").mkdir()
    return {
        "missing file": [tmp_path / "nope.txt"],
        "empty file": [empty],
        "no text at all": [blank],
        "png": [png],
        "random bytes": [rnd],
        "directory without .txt": [tmp_path / "emptydir"],
        "glob without match": [tmp_path / "zz*.txt"],
    }


@pytest.mark.parametrize("case", ["missing file", "empty file", "no text at all", "png", "random bytes",
                                  "directory without .txt", "glob without match"])
def test_bad_input(cli, tmp_path, case):
    inputs = bad_inputs(tmp_path)[case]
    out = sentinel(tmp_path / "clean.txt")
    proc = cli("prepare-corpus", "--input", *inputs, "--output", out)
    assert_user_error(proc)
    assert out.read_text(encoding="utf-8") == SENTINEL
    assert not list(tmp_path.glob(".clean.txt.*"))


def test_output_equal_to_input_is_refused(cli, tmp_path):
    src = sentinel(tmp_path / "raw.txt")
    proc = cli("prepare-corpus", "--input", src, "--output", src)
    assert_user_error(proc)
    assert "input" in proc.stderr
    assert src.read_text(encoding="utf-8") == SENTINEL
    # the same file through a directory input
    proc = cli("prepare-corpus", "--input", tmp_path, "--output", src)
    assert_user_error(proc)
    assert src.read_text(encoding="utf-8") == SENTINEL


def test_bad_flag_values(cli, tmp_path):
    src = tmp_path / "raw.txt"
    src.write_text("texto", encoding="utf-8")
    out = sentinel(tmp_path / "clean.txt")
    for flags in (["--min-chars", "-3"], ["--split-on-blank-lines", "0"], ["--separator", "  "]):
        proc = cli("prepare-corpus", "--input", src, "--output", out, *flags)
        assert_user_error(proc)
        assert out.read_text(encoding="utf-8") == SENTINEL
