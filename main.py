"""mini-llm command line: python main.py <stage> [options]. See README.md.

One `cmd_<stage>(args)` per subcommand. Library code raises `UserError` for bad
input; `main()` turns it into one `error: ...` line on stderr and exit code 2
(3 when the run is locked by another process). Nothing runs at import time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from common import EXIT_INTERRUPTED, UserError, log, setup_logging

DOC_SEPARATOR = "<|doc|>"


def emit_json(obj) -> None:
    """The one JSON object that --json prints on stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# =========================================================================== prepare-corpus

def cmd_prepare_corpus(args) -> int:
    raise UserError("prepare-corpus is not implemented yet")


# =========================================================================== analyze-corpus

def cmd_analyze_corpus(args) -> int:
    raise UserError("analyze-corpus is not implemented yet")


# =========================================================================== init-tokenizer

def cmd_init_tokenizer(args) -> int:
    raise UserError("init-tokenizer is not implemented yet")


# =========================================================================== train

def cmd_train(args) -> int:
    import training
    from common import parse_duration
    overrides = {name: getattr(args, name) for name in training.CLI_OVERRIDES}
    if args.max_time is not None:
        try:
            overrides["max_time"] = parse_duration(args.max_time)
        except ValueError as e:
            raise UserError(f"--max-time: {e}")
    try:
        summary = training.train(args.tokenizer, args.corpus, args.outdir, args.config, overrides,
                                 separator=args.separator, resume=args.resume, force=args.force,
                                 quiet=args.quiet)
    except training.Interrupted as e:
        sys.stderr.write(f"error: {e.reason} before training started; nothing was saved\n")
        return e.code
    if args.json:
        emit_json(summary)
    return training.exit_code(summary["stopped_reason"])


# =========================================================================== generate

def cmd_generate(args) -> int:
    raise UserError("generate is not implemented yet")


# =========================================================================== evaluate

def cmd_evaluate(args) -> int:
    from common import require_file
    for path, what in ((args.test_file, "test file"), (args.ckpt, "checkpoint"), (args.tokenizer, "tokenizer file")):
        require_file(path, what)  # fail fast, before torch is imported
    import evaluation  # torch is only imported by the stages that need it
    result = evaluation.evaluate(args.ckpt, args.tokenizer, args.test_file, separator=args.separator,
                                 stride=args.stride, batch_size=args.batch_size, device=args.device,
                                 amp=args.amp, per_document=args.per_document, quiet=args.quiet)
    if args.json:
        emit_json(result)
    else:
        evaluation.print_report(result)
    return 0


# =========================================================================== export

def cmd_export(args) -> int:
    import export
    out = export.export_hf(args.ckpt, args.tokenizer, args.out)
    log.info(f"load it with transformers: AutoModelForCausalLM.from_pretrained({str(out)!r}) "
             f"and AutoTokenizer.from_pretrained({str(out)!r})")
    return 0


# =========================================================================== report

def cmd_report(args) -> int:
    import report  # matplotlib is only needed here
    report.write_report(args.runs, args.out)
    return 0


# =========================================================================== quickstart

def cmd_quickstart(args) -> int:
    import quickstart
    return quickstart.run(args.corpus, args.outdir, args.max_time, quiet=args.quiet)


# =========================================================================== parser

class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one `error:` line with exit code 2."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {v}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {v}")
    return v


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")


def _fraction(text: str) -> float:
    v = _float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {v}")
    return v


def _common(p: argparse.ArgumentParser, json_flag: bool = False) -> None:
    p.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    if json_flag:
        p.add_argument("--json", action="store_true",
                       help="print one JSON object on stdout and nothing else there (logs go to stderr)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    prog = "mini-llm" if os.path.basename(sys.argv[0]) == "mini-llm" else "main.py"
    parser = _Parser(prog=prog, description="mini-llm: train a small language model on your own corpus.")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", parser_class=_Parser)
    sub.required = True

    # ---- prepare-corpus
    p = sub.add_parser("prepare-corpus", formatter_class=fmt, help="clean and normalise raw text",
                       description="Clean raw text (mojibake, Unicode NFC, whitespace, case) into one corpus file "
                                   "with one separator line between documents.")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files, directories (all .txt inside, sorted) or globs; .gz/.bz2/.xz read transparently")
    p.add_argument("--output", required=True, help="cleaned corpus file (UTF-8)")
    p.add_argument("--preserve-case", action="store_true", help="keep case (default: lowercase)")
    p.add_argument("--separator", default=DOC_SEPARATOR, help="document separator line, in input and output")
    p.add_argument("--split-on-blank-lines", type=_positive_int, default=None, metavar="N",
                   help="inside files without separators, start a new document at N or more blank lines "
                        "(default: the whole file is one document)")
    p.add_argument("--min-chars", type=_nonneg_int, default=1, help="drop documents shorter than this (characters)")
    p.add_argument("--keep-duplicates", action="store_true", help="keep exact-duplicate documents")
    _common(p, json_flag=True)
    p.set_defaults(func=cmd_prepare_corpus)

    # ---- analyze-corpus
    p = sub.add_parser("analyze-corpus", formatter_class=fmt, help="corpus statistics and recommended hyperparameters")
    p.add_argument("--corpus", required=True, help="cleaned corpus file")
    p.add_argument("--separator", default=DOC_SEPARATOR, help="document separator line")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json for exact token counts (default: estimate)")
    _common(p, json_flag=True)
    p.set_defaults(func=cmd_analyze_corpus)

    # ---- init-tokenizer
    p = sub.add_parser("init-tokenizer", formatter_class=fmt, help="train a byte-level BPE tokenizer")
    p.add_argument("--files", nargs="+", required=True, help="training text files (cleaned corpus)")
    p.add_argument("--vocab-size", type=_positive_int, default=32000, help="vocabulary size (tokens)")
    p.add_argument("--out", required=True, help="output tokenizer.json")
    p.add_argument("--min-frequency", type=_positive_int, default=2, help="minimum pair frequency for a merge")
    p.add_argument("--separator", default=DOC_SEPARATOR, help="document separator line (becomes one special token)")
    _common(p, json_flag=True)
    p.set_defaults(func=cmd_init_tokenizer)

    # ---- train
    p = sub.add_parser("train", formatter_class=fmt, help="train a model (presets small/medium/large or custom)")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json from init-tokenizer")
    p.add_argument("--corpus", required=True, help="cleaned corpus file")
    p.add_argument("--outdir", required=True, help="run folder (checkpoints, history, logs)")
    p.add_argument("--config", choices=["small", "medium", "large", "custom"], default="small",
                   help="preset; any model/training flag below overrides that field only")
    p.add_argument("--separator", default=DOC_SEPARATOR, help="document separator line in the corpus")
    p.add_argument("--block-size", type=_positive_int, default=None, help="context length (tokens)")
    p.add_argument("--n-embd", type=_positive_int, default=None, help="model width")
    p.add_argument("--n-layer", type=_positive_int, default=None, help="number of transformer blocks")
    p.add_argument("--n-head", type=_positive_int, default=None, help="attention heads")
    p.add_argument("--dropout", type=_float, default=None, help="dropout probability (default 0.0)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="windows per micro-batch")
    p.add_argument("--accumulation-steps", type=_positive_int, default=None, help="micro-batches per optimizer step")
    p.add_argument("--epochs", type=_positive_int, default=None, help="passes over the training windows")
    p.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--max-time", default=None, help="wall-clock budget, e.g. 2h, 90m, 1h30m: save and exit 0")
    p.add_argument("--lr", type=_float, default=None, help="peak learning rate")
    p.add_argument("--min-lr", type=_float, default=None, help="final learning rate of the cosine decay")
    p.add_argument("--warmup-steps", type=_nonneg_int, default=None, help="linear warmup (optimizer steps)")
    p.add_argument("--weight-decay", type=_float, default=None, help="AdamW weight decay (matrices only)")
    p.add_argument("--grad-clip", type=_float, default=None, help="clip gradient norm (0 = off; default 1.0)")
    p.add_argument("--patience", type=_nonneg_int, default=None,
                   help="stop after this many evaluations without improvement (0 = never)")
    p.add_argument("--eval-every", type=_positive_int, default=None, help="evaluate every N optimizer steps")
    p.add_argument("--eval-batches", type=_positive_int, default=None, help="validation batches per evaluation")
    p.add_argument("--stride", type=_positive_int, default=None, help="window stride inside long documents (tokens)")
    p.add_argument("--val-fraction", type=_fraction, default=None, help="fraction of documents held out")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="device")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA, off on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute activations per block to save memory")
    p.add_argument("--flash-attention", action="store_true",
                   help="use the flash-attn package when installed on a supported GPU (else SDPA)")
    p.add_argument("--num-workers", type=_nonneg_int, default=0, help="data loader worker processes")
    p.add_argument("--seed", type=int, default=1337, help="random seed")
    p.add_argument("--resume", action="store_true", help="continue from ckpt_last.pt in --outdir")
    p.add_argument("--force", action="store_true", help="resume even if corpus or tokenizer changed")
    p.add_argument("--log-every", type=_positive_int, default=None,
                   help="log one line every N steps when stderr is not a terminal")
    _common(p, json_flag=True)
    p.set_defaults(func=cmd_train)

    # ---- generate
    p = sub.add_parser("generate", formatter_class=fmt, help="generate text from a trained checkpoint")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json the model was trained with")
    p.add_argument("--ckpt", required=True, help="checkpoint (ckpt_best.pt or ckpt_last.pt)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", help="file with one prompt per line (blank lines skipped)")
    p.add_argument("--prompt-separator", default=None,
                   help="with --prompt-file: split prompts on this line instead of one per line")
    p.add_argument("--max-tokens", type=_positive_int, default=200, help="new tokens per sample")
    p.add_argument("--temperature", type=_float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=_nonneg_int, default=50, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=_float, default=0.9, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--min-p", type=_float, default=0.0, help="drop tokens below min-p x p(top token) (0 = off)")
    p.add_argument("--repetition-penalty", type=_float, default=1.0, help=">1 penalises tokens already seen")
    p.add_argument("--no-repeat-ngram", type=_nonneg_int, default=0, help="forbid repeating n-grams of this size")
    p.add_argument("--stop", nargs="+", default=None, help="stop strings (output ends before them)")
    p.add_argument("--seed", type=int, default=None, help="seed: same seed and flags give the same text")
    p.add_argument("--num-samples", type=_positive_int, default=1, help="samples per prompt")
    p.add_argument("--stream", action="store_true", help="print tokens as they are produced")
    p.add_argument("--batch-generate", action="store_true", help="run prompts in padded batches")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="prompts per batch with --batch-generate")
    p.add_argument("--output", default=None, help="write results here (.jsonl for JSON Lines) instead of stdout")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="device")
    _common(p)
    p.set_defaults(func=cmd_generate)

    # ---- evaluate
    p = sub.add_parser("evaluate", formatter_class=fmt, help="perplexity and bits per byte on a test file")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json the model was trained with")
    p.add_argument("--ckpt", required=True, help="checkpoint to evaluate")
    p.add_argument("--test-file", required=True, help="test text (cleaned corpus format or raw text)")
    p.add_argument("--separator", default=DOC_SEPARATOR, help="document separator line")
    p.add_argument("--stride", type=_positive_int, default=None, help="sliding-window stride (default: half the block)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="windows per batch")
    p.add_argument("--per-document", action="store_true", help="add each document's perplexity and the worst 5")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="device")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA, off elsewhere)")
    _common(p, json_flag=True)
    p.set_defaults(func=cmd_evaluate)

    # ---- export
    p = sub.add_parser("export", formatter_class=fmt, help="export a checkpoint as a Hugging Face model folder")
    p.add_argument("--ckpt", required=True, help="checkpoint to export")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json the model was trained with")
    p.add_argument("--out", required=True, help="output folder")
    _common(p)
    p.set_defaults(func=cmd_export)

    # ---- report
    p = sub.add_parser("report", formatter_class=fmt, help="one self-contained HTML page comparing runs")
    p.add_argument("runs", nargs="+", help="run folders (with history.json and config.json)")
    p.add_argument("--out", required=True, help="output .html file")
    _common(p)
    p.set_defaults(func=cmd_report)

    # ---- quickstart
    p = sub.add_parser("quickstart", formatter_class=fmt, help="run the whole pipeline on a demo corpus")
    p.add_argument("--corpus", default=None, help="your own raw text instead of the demo corpus")
    p.add_argument("--outdir", default="runs/quickstart", help="where every stage writes")
    p.add_argument("--max-time", default="5m", help="training budget (wall clock), e.g. 5m, 30m, 2h")
    _common(p)
    p.set_defaults(func=cmd_quickstart)

    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=getattr(args, "quiet", False))
    try:
        return args.func(args) or 0
    except UserError as e:
        sys.stderr.write(f"error: {e}\n")
        return e.code
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
