"""Throughput of building the token store (corpus -> memory-mapped token file), in MB/s.

    .venv/bin/python bench/bench_tokenize.py [--corpus FILE ...] [--tokenizer tokenizer.json]

Default corpora: ../shared/corpora/wiki_es.txt and a 20 MB slice of novelas_es.txt (cut at a
document boundary). Without --tokenizer, a 32k byte-level BPE is trained first on the corpora
(not timed). Each corpus is tokenized into a fresh cache folder, so nothing is reused; the time
includes reading, hashing, encoding and writing. Target: >= 6 MB/s on 2 CPU cores.

In the same run it also times the build's encoder alone (tiktoken for corpora of 16 MB or more
where it gives the tokenizer's exact ids, else the tokenizers library; all cores, the same pieces
already in memory, nothing written): the encoder's ceiling on this machine, so the build's share
of it is a ratio that holds across machines; and the tokenizers library alone, for comparison.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dataset  # noqa: E402
import tokenizer  # noqa: E402
from common import file_sha256, setup_logging  # noqa: E402
from corpus import DOC_SEPARATOR  # noqa: E402

CORPORA = ROOT.parent / "shared" / "corpora"
SLICE_BYTES = 20_000_000


def cpu_seconds() -> float:
    """CPU time of this process, every thread included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def novel_slice(tmp: Path) -> Path:
    """The first ~20 MB of novelas_es.txt, ending after a separator line."""
    src = CORPORA / "novelas_es.txt"
    with open(src, "rb") as f:
        data = f.read(SLICE_BYTES)
        rest = f.read(4_000_000)
    end = rest.find(b"\n<|doc|>\n")
    data = data + (rest[: end + 1] if end >= 0 else rest)
    out = tmp / "novelas_es_20MB.txt"
    out.write_bytes(data)
    return out


def encoder_seconds(tok, batches: list[list[str]], size: int) -> tuple[str, float]:
    """(name, seconds) of dataset.text_encoder for a corpus of `size` bytes (tiktoken or
    tokenizers, as the build picks; size 0: tokenizers) encoding `batches` (the build's pieces,
    already in memory) alone on all cores."""
    with tokenizer.specials_as_text(tok), dataset.tokenizer_parallelism():
        name, encode = dataset.text_encoder(tok, size)
        t0 = time.perf_counter()
        for pieces in batches:
            encode(pieces)
        return name, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", nargs="+", default=None, help="corpus files (default: wiki + 20 MB of novels)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: train a 32k one first)")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--repeat", type=int, default=2,
                   help="rounds per corpus, build and encoder alone alternating (best of each is reported)")
    args = p.parse_args()
    setup_logging(quiet=True)

    with tempfile.TemporaryDirectory(prefix="bench_tok_") as tmpdir:
        tmp = Path(tmpdir)
        corpora = [Path(c) for c in args.corpus] if args.corpus else [CORPORA / "wiki_es.txt", novel_slice(tmp)]
        tok_path = args.tokenizer
        if tok_path is None:
            tok_path = tmp / "tokenizer.json"
            t0 = time.perf_counter()
            tokenizer.train_tokenizer(corpora, args.vocab_size, 2, out_path=tok_path, quiet=True)
            print(f"trained a {args.vocab_size} tokenizer on {', '.join(c.name for c in corpora)} in "
                  f"{time.perf_counter() - t0:.1f}s (not timed below)")
        print(f"cores: {os.cpu_count()}, TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}")
        for corpus in corpora:
            size = corpus.stat().st_size
            t0 = time.perf_counter()
            file_sha256(corpus)
            hash_s = time.perf_counter() - t0
            best = best_cpu = ceiling = library = float("inf")
            tok = tokenizer.load_tokenizer(tok_path)
            batches = [pieces for pieces, _, _ in dataset._encode_batches(corpus, DOC_SEPARATOR)]
            for r in range(args.repeat):
                cache = tmp / f"cache-{corpus.stem}-{r}"
                c0, t0 = cpu_seconds(), time.perf_counter()
                store = dataset.load_or_build_token_store(corpus, tok_path, cache, quiet=True)
                if time.perf_counter() - t0 < best:
                    best, best_cpu = time.perf_counter() - t0, cpu_seconds() - c0
                which, seconds = encoder_seconds(tok, batches, size)  # alternating
                ceiling = min(ceiling, seconds)
                library = min(library, encoder_seconds(tok, batches, 0)[1])
            t0 = time.perf_counter()
            dataset.load_or_build_token_store(corpus, tok_path, cache, quiet=True)
            reuse_s = time.perf_counter() - t0
            print(f"{corpus.name}: {size / 1e6:.1f} MB, {len(store):,} tokens, {store.n_docs:,} docs: "
                  f"build {best:.2f}s = {size / 1e6 / best:.2f} MB/s "
                  f"({len(store) / best / 1e6:.2f} M tokens/s), {best_cpu:.2f} CPU-s = {best_cpu / best:.2f} cores busy; "
                  f"sha256 {hash_s:.2f}s; cached reload {reuse_s:.2f}s")
            print(f"  its encoder alone ({which}, all cores, text in memory): {ceiling:.2f}s = "
                  f"{size / 1e6 / ceiling:.2f} MB/s; the build runs at {ceiling / best:.0%} of it")
            if which != "tokenizers":
                print(f"  the tokenizers library alone: {library:.2f}s = {size / 1e6 / library:.2f} MB/s "
                      f"(tiktoken {library / ceiling:.2f}x, the same ids)")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak memory of this process: {peak_mb:.0f} MB; "
              f"load average now: {os.getloadavg()[0]:.2f} (other processes slow the wall-clock numbers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
