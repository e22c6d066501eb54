"""Every command in the README runs, so the README cannot rot.

The fenced ```bash blocks are read in order; each `python main.py ...` (or
`mini-llm ...`) command is run in a scratch folder holding the files the README's
examples name (a slice of real Spanish text as `datos_raw.txt`, prompts, a test
file), with tiny settings appended so the whole walk-through takes a minute.
Later flags override earlier ones in argparse, so appending is enough.
"""
from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT, corpus_slice, run_cli

# Tiny settings appended per stage: same commands, seconds instead of hours.
TINY = {
    "init-tokenizer": ["--vocab-size", "400"],
    "train": ["--config", "custom", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32",
              "--batch-size", "4", "--max-steps", "6", "--eval-every", "3", "--eval-batches", "2",
              "--warmup-steps", "1", "--epochs", "1"],
    "generate": ["--max-tokens", "8"],
    "evaluate": ["--batch-size", "8"],
    "quickstart": ["--corpus", "datos_raw.txt", "--time-budget", "10s"],
}


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            m = re.search(r"(?:^|\s)(?:\S*python3? main\.py|mini-llm)\s+(.*)", line)
            if not m:
                continue
            rest = re.split(r"\s(?:>>?|2>&1|\||&&|;)\s?", m.group(1))[0]
            commands.append(shlex.split(rest, comments=True))
    return commands


def test_readme_has_the_two_setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "main.py quickstart" in text
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci in text, "the README's test command must be exactly what .ci/run runs"


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    raw = corpus_slice("wiki_es.txt", n_docs=120)
    (tmp_path / "datos_raw.txt").write_text(raw, encoding="utf-8")
    (tmp_path / "prompts.txt").write_text("La historia de\n\nEl río más largo\n", encoding="utf-8")
    docs = corpus_slice("wiki_es.txt", n_docs=200).split("<|doc|>\n")   # the domain adaptation examples
    for name, part in (("historia.txt", docs[120:170]), ("historia_test.txt", docs[170:185]),
                       ("general.txt", docs[:60]), ("general_test.txt", docs[185:199])):
        (tmp_path / name).write_text("".join(d + "<|doc|>\n" for d in part), encoding="utf-8")
    commands = readme_commands()
    stages = [c[0] for c in commands]
    for needed in ("quickstart", "prepare-corpus", "analyze-corpus", "init-tokenizer", "train",
                   "generate", "evaluate", "export", "report"):
        assert needed in stages, f"README shows no '{needed}' command"
    ran = 0
    for argv in commands:
        stage = argv[0]
        if "--help" in argv:
            continue
        if stage == "evaluate" and not (tmp_path / "test_corpus.txt").exists():
            (tmp_path / "test_corpus.txt").write_text(corpus_slice("wiki_es.txt", n_docs=140).split(
                "<|doc|>\n", 120)[-1], encoding="utf-8")
        proc = run_cli(*argv, *TINY.get(stage, []), cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, (argv, proc.stderr[-2000:])
        ran += 1
    assert ran >= 9
