"""Domain adaptation at equal compute: continue a general model on a small domain corpus
(`train --init-from`, at several learning rates, and mixed with general text) against training
on the domain corpus alone, each scored on held-out domain text and on held-out general text.

    .venv/bin/python bench/domain.py [--general-ckpt CKPT] [--tokens 500000] [--lr-factors 0.25,0.5,1]
                                     [--warmup-fractions 0,0.2]
                                     [--domain FILE] [--json] [--quick]
    .venv/bin/python bench/domain.py --show result.json

- General data, tokenizer and held-out general text: bench/quality.py's (the first 30 MB of
  novelas_es.txt, a byte-level BPE of 8,192 tokens trained on it, and 20 held-out novels cut to
  64 KB). The general model: --general-ckpt (e.g. a ckpt_best.pt of `quality.py --budget A`), or
  one trained here with our defaults on --general-tokens.
- Domain data: --domain (parlamento_es.txt, parliamentary speeches: another collection), its last
  --domain-test-docs documents held out for testing, the rest the domain training corpus.
- Every run is `main.py train` with the presets' defaults at the general model's shape and the
  same number of training tokens (--tokens), then `main.py evaluate` of its ckpt_best.pt on both
  test files in one call. Runs: "domain only" (from scratch), "init-from x F" for each lr factor F
  (--lr = the preset's lr x F), "init-from ..., warmup W" at the default lr for each warmup
  fraction W of --warmup-fractions (the others use the default, 5%), and "init-from + 20% general" (a mixture at the default lr).
- Result: bits per byte on each test file per run; --json prints one object.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import BenchError  # noqa: E402

DOC_END = "<|doc|>\n"
DEFAULT_DOMAIN = ROOT.parent / "shared" / "corpora" / "parlamento_es.txt"
QUALITY_DATA = ROOT / "bench" / ".work" / "quality"
WORKDIR = ROOT / "bench" / ".work" / "domain"


def main_py(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"main.py {args[0]} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return proc


def split_domain(path: Path, test_docs: int, out: Path) -> dict:
    """domain_train.txt and domain_test.txt in `out` (the last `test_docs` documents are the test)."""
    docs = [d for d in path.read_text(encoding="utf-8").split(DOC_END) if d.strip()]
    if len(docs) < test_docs + 10:
        raise BenchError(f"{path} has {len(docs)} documents: too few to hold out {test_docs}")
    files = {"train": out / "domain_train.txt", "test": out / "domain_test.txt"}
    for key, part in (("train", docs[:-test_docs]), ("test", docs[-test_docs:])):
        files[key].write_text("".join(d.rstrip("\n") + "\n" + DOC_END for d in part), encoding="utf-8")
    return {k: str(v) for k, v in files.items()} | {"train_docs": len(docs) - test_docs, "test_docs": test_docs}


def quality_files() -> dict:
    folders = sorted(QUALITY_DATA.glob("data-*-v8192"))
    if not folders:
        raise BenchError("no bench/quality.py data: run `python bench/quality.py --budget A --only ours` first")
    f = folders[0]
    return {"general_train": f / "train.txt", "general_test": f / "heldout.txt", "tokenizer": f / "tokenizer.json"}


def run_steps(tokens: int, shape: dict) -> int:
    import config
    return max(2, math.ceil(tokens / (config.PRESETS[config.CUSTOM_BASE]["batch_size"] * shape["block_size"])))


def run_one(name: str, a, files: dict, shape: dict, extra: list[str], log) -> dict:
    import config
    outdir = a.workdir / "runs" / name.replace(" ", "_").replace("%", "pct").replace("+", "plus")
    if (outdir / "result.json").is_file():
        return json.loads((outdir / "result.json").read_text())
    batch = config.PRESETS[config.CUSTOM_BASE]["batch_size"]
    steps = run_steps(a.tokens, shape)
    args = ["train", "--tokenizer", files["tokenizer"], "--outdir", outdir, "--config", "custom",
            "--max-steps", steps, "--json", "--force", *extra]
    if "--init-from" not in extra:
        args += ["--n-layer", shape["n_layer"], "--n-head", shape["n_head"], "--n-embd", shape["n_embd"],
                 "--block-size", shape["block_size"], "--family", shape["family"]]
    log(f"{name}: {steps} steps of {batch} x {shape['block_size']}")
    summary = json.loads(main_py(*args).stdout)
    ev = json.loads(main_py("evaluate", "--tokenizer", files["tokenizer"], "--ckpt", outdir / "ckpt_best.pt",
                            "--test-file", files["domain_test"], files["general_test"],
                            "--stride", shape["block_size"], "--json").stdout)
    train_cfg = json.loads((outdir / "config.json").read_text())["train"]
    result = {"run": name, "lr": train_cfg["lr"], "warmup_steps": train_cfg["warmup_steps"],
              "train_tokens": summary["tokens_seen"], "seconds": summary["elapsed_seconds"],
              "best_step": summary["best_step"],
              "domain_bpb": ev["files"][0]["bits_per_byte"], "general_bpb": ev["files"][1]["bits_per_byte"]}
    (outdir / "result.json").write_text(json.dumps(result))
    return result


def evaluate_general(a, files: dict, shape: dict) -> dict:
    ev = json.loads(main_py("evaluate", "--tokenizer", files["tokenizer"], "--ckpt", files["general_ckpt"],
                            "--test-file", files["domain_test"], files["general_test"],
                            "--stride", shape["block_size"], "--json").stdout)
    return {"run": "general model (no domain training)", "lr": None, "warmup_steps": None, "train_tokens": 0,
            "seconds": 0.0, "best_step": None,
            "domain_bpb": ev["files"][0]["bits_per_byte"], "general_bpb": ev["files"][1]["bits_per_byte"]}


def print_table(result: dict) -> None:
    print(f"domain adaptation: {result['tokens']:,} training tokens per run; domain {result['domain']['train']} "
          f"({result['domain']['train_docs']} documents), tested on {result['domain']['test_docs']} held-out ones")
    print(f"{'run':<40} {'lr':>8} {'domain bpb':>11} {'general bpb':>12} {'seconds':>8}")
    for r in result["runs"]:
        lr = f"{r['lr']:.2g}" if r["lr"] else "-"
        print(f"{r['run']:<40} {lr:>8} {r['domain_bpb']:>11.4f} {r['general_bpb']:>12.4f} {r['seconds']:>8.0f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--general-ckpt", type=Path, default=None, help="the general model (else trained here)")
    p.add_argument("--general-tokens", type=int, default=2_500_000)
    p.add_argument("--domain", type=Path, default=DEFAULT_DOMAIN)
    p.add_argument("--domain-test-docs", type=int, default=50)
    p.add_argument("--tokens", type=int, default=500_000, help="training tokens of every domain run")
    p.add_argument("--lr-factors", default="0.25,0.5,1", help="init-from lr = preset lr x each")
    p.add_argument("--warmup-fractions", default="0,0.2",
                   help="extra init-from runs at the default lr with these warmups (fractions of the steps; "
                        "the lr runs use the default, 5%%)")
    p.add_argument("--general-weight", type=float, default=0.2, help="share of general text in the mixture run")
    p.add_argument("--workdir", type=Path, default=WORKDIR)
    p.add_argument("--json", action="store_true")
    p.add_argument("--show", type=Path, default=None)
    a = p.parse_args()
    if a.show:
        print_table(json.loads(a.show.read_text()))
        return 0

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    import config
    try:
        a.workdir.mkdir(parents=True, exist_ok=True)
        files = {k: str(v) for k, v in quality_files().items()}
        domain = split_domain(a.domain, a.domain_test_docs, a.workdir)
        files.update(domain_train=domain["train"], domain_test=domain["test"])
        shape = dict(n_layer=6, n_head=8, n_embd=256, block_size=256, family=config.PRESETS["small"]["family"])
        if a.general_ckpt is None:
            g = run_one("general", argparse.Namespace(**{**vars(a), "tokens": a.general_tokens}), files, shape,
                        ["--corpus", files["general_train"]], log)
            a.general_ckpt = a.workdir / "runs" / "general" / "ckpt_best.pt"
            log(f"general model: {g}")
        files["general_ckpt"] = str(a.general_ckpt)
        base_lr = config.PRESETS["small"]["lr"]
        runs = [evaluate_general(a, files, shape),
                run_one("domain only (from scratch)", a, files, shape, ["--corpus", files["domain_train"]], log)]
        for factor in (float(f) for f in a.lr_factors.split(",")):
            runs.append(run_one(f"init-from, lr x {factor:g}", a, files, shape,
                                ["--corpus", files["domain_train"], "--init-from", files["general_ckpt"],
                                 "--lr", f"{base_lr * factor:g}"], log))
        steps = run_steps(a.tokens, shape)
        for frac in (float(f) for f in a.warmup_fractions.split(",") if f):
            runs.append(run_one(f"init-from, lr x {config.INIT_FROM_LR_FACTOR:g}, warmup {frac:.0%}", a, files, shape,
                                ["--corpus", files["domain_train"], "--init-from", files["general_ckpt"],
                                 "--warmup-steps", round(frac * steps)], log))
        w = a.general_weight
        runs.append(run_one(f"init-from + {w:.0%} general", a, files, shape,
                            ["--corpus", f"{files['domain_train']}:{1 - w:g}", f"{files['general_train']}:{w:g}",
                             "--init-from", files["general_ckpt"], "--select-on", "domain_train"], log))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"date": time.strftime("%Y-%m-%d"), "tokens": a.tokens, "domain": domain,
              "general_ckpt": files["general_ckpt"], "runs": runs}
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
