#!/usr/bin/env python3
"""Build tests/data/corpus_es.txt, the Spanish test corpus the suite reads (tests/conftest.py).

    python3 tests/data/make_corpus_es.py [--corpora ../shared/corpora] [--out tests/data/corpus_es.txt]

The output is deterministic (no clock, no unseeded randomness: the same inputs give the same
bytes) and is committed, so the tests never need the source files. Only public-domain and CC0
sources are used:

  * parlamento_es.txt: ParlSpeech V2 sample, speeches in the Congreso de los Diputados, CC0 1.0;
  * novelas_es.txt:   the conha19 corpus of 19th-century Spanish-American novels, public domain
                      (CC PDM 1.0).

The file is in the project's corpus format: documents separated by a line holding only `<|doc|>`
(every document ends with "\\n<|doc|>\\n"); the first line of each document is its title. It has
two parts, in this order:

  1. SHORT documents, wiki-summary sized (a target length per document drawn from a seeded
     log-normal around 450 characters, within SHORT_MIN..SHORT_MAX), alternating
       - a parliamentary speech: the first clean speeches of the file, in order, each under a
         numbered title, cut at the first sentence end past its target length;
       - a passage of a novel: consecutive paragraphs from the start of the novel, the last one
         cut at the first sentence end past the target (the rest of that paragraph is left out,
         the next passage starts at the next paragraph); paragraphs stay separated by an empty
         line. The passages of PASSAGE_NOVELS are taken in turn, one from each novel.
  2. a few LONG documents (tens of KB, LONG_NOVELS): the opening paragraphs of other novels,
     whole, so that windows across a long document and text cut into pieces are exercised.

Tests take the first documents or characters of the file, so they meet the short documents first.
Lines lose their leading and trailing spaces (the novels' whitespace-only separator lines become
empty lines); nothing else in the text is changed. A paragraph of a novel (a whole speech, for
speeches) holding a character outside SPANISH_CHARS (scanning noise, typographic quotes, foreign
scripts) is left out.
"""
from __future__ import annotations

import argparse
import math
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CORPORA = HERE.parent.parent.parent / "shared" / "corpora"
DEFAULT_OUT = HERE / "corpus_es.txt"

SEP = "<|doc|>"
SEED = 1909
MEDIAN_CHARS, SHORT_MIN, SHORT_MAX = 380, 300, 2_000
N_SPEECHES = 280
# (novel: its title line in novelas_es.txt, passages taken from its start)
PASSAGE_NOVELS = [
    ("Moreira (PayroR, 1910)", 65),
    ("Zarco (AltamiranoIM, 1901)", 55),
    ("TioEmpleado (MezaR, 1887)", 55),
    ("Quimera (CantiloJL, 1899)", 50),
    ("Yocci (GorritiJM, 1876)", 45),
]
# (novel, characters of its opening kept as one long document, ending at a paragraph end)
LONG_NOVELS = [
    ("Inca (PayroR, 1905)", 20_000),
    ("Navidad (AltamiranoIM, 1871)", 35_000),
    ("Amalia (MarmolJ, 1855)", 50_000),
]
SPANISH_CHARS = set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "áéíóúüñÁÉÍÓÚÜÑ¿¡«»—"
    "àèìòùâêîôûçïëÀÈÇªº°€"                 # Catalan and French names, ordinals, degrees
    " .,;:!?'\"()[]-/*%&+=_$#@"
)
SENTENCE_END = re.compile(r"(?<=[.!?»])\s+(?=[—¿¡«A-ZÁÉÍÓÚÑ])")   # the space after a sentence


def read_docs(path: Path) -> list[str]:
    return [d for d in path.read_text(encoding="utf-8").split(SEP + "\n") if d.strip()]


def paragraphs(body: str) -> list[str]:
    """The non-empty lines, stripped (the novels put a whitespace-only line between paragraphs)."""
    return [line.strip() for line in body.splitlines() if line.strip()]


def is_clean(text: str) -> bool:
    return set(text) <= SPANISH_CHARS


def target_length(rng: random.Random) -> int:
    return min(SHORT_MAX, max(SHORT_MIN, int(rng.lognormvariate(math.log(MEDIAN_CHARS), 0.5))))


def cut_at_sentence(text: str, want: int, limit: int) -> str | None:
    """text up to its first sentence end at or past `want` characters (text whole if it has none),
    or up to the last one within `limit` when that is too long; None when no cut fits `limit`."""
    ends = [m.start() for m in SENTENCE_END.finditer(text)] + [len(text)]
    cut = next(e for e in ends if e >= want or e == len(text))
    if cut > limit:
        cut = max((e for e in ends if e <= limit), default=0)
    return text[:cut] if cut else None


def speeches(parl_docs: list[str], rng: random.Random) -> list[str]:
    docs = []
    for speech in parl_docs:
        body = " ".join(paragraphs(speech))
        if not is_clean(body):
            continue
        kept = cut_at_sentence(body, target_length(rng), SHORT_MAX) or body
        docs.append(f"Intervención en el Congreso de los Diputados, n.º {len(docs) + 1}\n{kept}")
        if len(docs) == N_SPEECHES:
            return docs
    raise SystemExit(f"only {len(docs)} clean speeches, {N_SPEECHES} wanted")


def passages(title: str, body: str, count: int, rng: random.Random) -> list[str]:
    docs, cur, target = [], [], target_length(rng)
    for par in filter(is_clean, paragraphs(body)):
        size = sum(len(p) + 2 for p in cur)              # with the empty line after each paragraph
        if size + len(par) < target:
            cur.append(par)
            continue
        last = cut_at_sentence(par, target - size, SHORT_MAX - size)
        if last is not None:
            cur.append(last)
        if sum(len(p) + 2 for p in cur) - 2 >= SHORT_MIN:
            docs.append(f"{title}, fragmento {len(docs) + 1}\n" + "\n\n".join(cur))
            if len(docs) == count:
                return docs
        cur, target = [], target_length(rng)
    raise SystemExit(f"{title}: only {len(docs)} passages, {count} wanted")


def opening(title: str, body: str, n_chars: int) -> str:
    kept, size = [], 0
    for par in filter(is_clean, paragraphs(body)):
        if size >= n_chars:
            break
        kept.append(par)
        size += len(par) + 2
    return f"{title}, comienzo de la novela\n" + "\n\n".join(kept)


def build(corpora: Path) -> str:
    novels = dict(d.split("\n", 1) for d in read_docs(corpora / "novelas_es.txt"))
    rng = random.Random(SEED)
    short_speeches = speeches(read_docs(corpora / "parlamento_es.txt"), rng)
    per_novel = [passages(title, novels[title], n, rng) for title, n in PASSAGE_NOVELS]
    novel_docs = [p[i] for i in range(max(map(len, per_novel))) for p in per_novel if i < len(p)]
    short_docs = [x[i] for i in range(max(len(short_speeches), len(novel_docs)))
                  for x in (short_speeches, novel_docs) if i < len(x)]
    docs = short_docs + [opening(title, novels[title], n) for title, n in LONG_NOVELS]
    assert len(set(docs)) == len(docs), "duplicate documents"
    return "".join(f"{d}\n{SEP}\n" for d in docs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA,
                    help="folder holding parlamento_es.txt and novelas_es.txt (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output file (default: %(default)s)")
    args = ap.parse_args()
    text = build(args.corpora)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    lengths = sorted(len(d) for d in text.split(f"{SEP}\n")[:-1])
    print(f"{args.out}: {len(lengths)} documents, {len(text):,} characters, {len(text.encode()):,} bytes; "
          f"document length: median {lengths[len(lengths) // 2]:,}, longest {lengths[-1]:,}")


if __name__ == "__main__":
    main()
