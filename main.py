"""mini-llm command line: python main.py <stage> [options]. See README.md.

One `cmd_<stage>(args)` per subcommand. Library code raises `UserError` for bad
input; `main()` turns it into one `error: ...` line on stderr and exit code 2
(3 when the run is locked by another process). Nothing runs at import time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from common import (DEVICES, EXIT_INTERRUPTED, EXIT_USAGE, UserError, log, parse_duration, refuse_same_file,
                    require_file, setup_logging, tune_allocator)
from config import INIT_FROM_LR_FACTOR, INIT_FROM_WARMUP_FRACTION, PRESETS, preset_parameters, train_flags
from tokenizer import DOC_SEPARATOR, load_identity  # the tokenizer is loaded and hashed once per command


def emit_json(obj: dict) -> None:
    """The one JSON object that --json prints on stdout: always valid JSON. A number that is not
    finite (NaN, inf) becomes null, and `undefined` says which and why ({"loss": "nan"})."""
    undefined = {}

    def clean(x, where: str):
        if isinstance(x, float) and not math.isfinite(x):
            undefined[where] = "nan" if math.isnan(x) else "inf" if x > 0 else "-inf"
            return None
        if isinstance(x, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return x

    out = clean(obj, "")
    if undefined:
        out["undefined"] = undefined
    text = json.dumps(out, ensure_ascii=False, allow_nan=False) + "\n"
    sys.stdout.write(text)
    sys.stdout.flush()


# =========================================================================== prepare-corpus

def cmd_prepare_corpus(args) -> int:
    import standarize
    stats = standarize.prepare_corpus(
        args.input, args.output, separator=args.separator, preserve_case=args.preserve_case,
        split_on_blank_lines=args.split_on_blank_lines, min_chars=args.min_chars,
        keep_duplicates=args.keep_duplicates, quiet=args.quiet or args.json)
    if args.json:
        emit_json(stats.to_dict())
    elif not args.quiet:
        standarize.print_summary(stats)
    return 0


# =========================================================================== analyze-corpus

def cmd_analyze_corpus(args) -> int:
    import analysis
    from corpus import parse_corpus_specs
    specs = parse_corpus_specs(args.corpus, option="--corpus")
    options = {"separator": args.separator, "tokenizer_path": args.tokenizer, "quiet": args.quiet or args.json}
    if len(specs) == 1:                       # one corpus: its report alone (a weight means nothing)
        report = analysis.analyze_corpus(specs[0].path, **options)
        show = analysis.print_analysis
    else:
        report = analysis.analyze_corpora(specs, **options)
        show = analysis.print_corpora
    if args.json:
        emit_json(report)
    else:
        show(report)
    return 0


# =========================================================================== init-tokenizer

def cmd_init_tokenizer(args) -> int:
    import tokenizer
    report = tokenizer.train_tokenizer(args.files, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                                       separator=args.separator, out_path=args.out,
                                       quiet=args.quiet or args.json)
    if args.json:
        emit_json(report)
    elif not args.quiet:
        print(tokenizer.format_fitness(report))
    return 0


# =========================================================================== train

def cmd_train(args) -> int:
    import config
    import runs
    import training
    overrides = {name: getattr(args, name, None) for name in config.CLI_OVERRIDES}
    for flag in config.train_flags():
        if flag.kind == "duration" and overrides[flag.name] is not None:
            try:
                overrides[flag.name] = parse_duration(overrides[flag.name])
            except ValueError as e:
                raise UserError(f"{flag.option}: {e}")
    overrides["precision"] = _precision_arg(args)
    import distributed
    finished = False
    try:
        summary = training.train(load_identity(args.tokenizer), args.corpus, args.outdir, args.config, overrides,
                                 separator=args.separator, resume=args.resume, force=args.force,
                                 quiet=args.quiet, init_from=args.init_from)
        finished = True
    except runs.Interrupted as e:
        sys.stderr.write(f"error: {e.reason}; files saved before the signal are intact "
                         f"(run the same command again to continue)\n")
        return e.code
    finally:
        distributed.shutdown(finished)
    if not distributed.from_env().is_main:        # torchrun: rank 0 prints the summary
        return runs.exit_code(summary["stopped_reason"])
    if args.json:
        emit_json(summary)
    return runs.exit_code(summary["stopped_reason"])


# =========================================================================== generate

def cmd_generate(args) -> int:
    import generation  # torch is only imported by the stages that need it
    try:
        cfg = generation.SamplingConfig(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
            repetition_penalty=args.repetition_penalty, no_repeat_ngram=args.no_repeat_ngram)
    except ValueError as e:
        raise UserError(f"{e}; see 'main.py generate --help'")
    if args.prompt_separator is not None and args.prompt_file is None:
        raise UserError("--prompt-separator only applies to --prompt-file")
    if args.output is not None:
        refuse_same_file([args.prompt_file] if args.prompt_file else [], args.output)
    if args.prompt_file is not None:
        prompts = generation.read_prompts(args.prompt_file, args.prompt_separator)
    else:
        prompts = [args.prompt]
    generation.run_generate(
        tokenizer=load_identity(args.tokenizer), ckpt_path=args.ckpt, prompts=prompts,
        max_new_tokens=args.max_tokens, cfg=cfg, stop_strings=args.stop or (), seed=args.seed,
        num_samples=args.num_samples, stream=args.stream,
        batch_size=args.batch_size if args.batch_generate else 1,
        output=args.output, device=args.device, precision=_precision_arg(args), compile=args.compile,
        quantize=args.quantize)
    return 0


# =========================================================================== evaluate

def cmd_evaluate(args) -> int:
    checks = [(f, "test file") for f in args.test_file]
    for path, what in checks + [(args.ckpt, "checkpoint"), (args.tokenizer, "tokenizer file")]:
        require_file(path, what)  # fail fast, before torch is imported
    import evaluation  # torch is only imported by the stages that need it
    options = dict(separator=args.separator, stride=args.stride, batch_size=args.batch_size, device=args.device,
                   precision=_precision_arg(args), per_document=args.per_document, quiet=args.quiet,
                   quantize=args.quantize)
    identity = load_identity(args.tokenizer)
    if len(args.test_file) == 1:  # the single-file result, as before several files were accepted
        result = evaluation.evaluate(args.ckpt, identity, args.test_file[0], **options)
        show = evaluation.print_report
    else:
        result = evaluation.evaluate_files(args.ckpt, identity, args.test_file, **options)
        show = evaluation.print_files_report
    if args.json:
        emit_json(result)
    else:
        show(result)
    return 0


# =========================================================================== export

def cmd_export(args) -> int:
    import export
    out = export.export_hf(args.ckpt, load_identity(args.tokenizer), args.out)
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
    return quickstart.run(build_parser(), args.corpus, args.outdir, args.time_budget, args.max_time,
                          quiet=args.quiet)


# =========================================================================== parser

def _precision_arg(args) -> str:
    """--precision with its aliases --amp / --no-amp folded in."""
    from precision import to_precision_arg
    return to_precision_arg(getattr(args, "precision", None), getattr(args, "amp", None))


def _precision_flags(p: argparse.ArgumentParser, stage: str) -> None:
    """--precision and its aliases --amp / --no-amp (the same on train, evaluate and generate)."""
    from precision import ATEN_BF16_ROWS
    few = f", and for decoding up to {ATEN_BF16_ROWS} prompts at a time on any CPU" if stage == "generation" else ""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help=f"numeric precision of the {stage} (default: auto: on CUDA bf16 where supported, else "
                        f"fp16 with loss scaling; on CPU bf16 only where a short benchmark of this model's "
                        f"matmuls, cached in ~/.cache/mini-llm, measures it faster, else fp32: it runs where the "
                        f"CPU has native bf16 (AVX512_BF16/AMX){few}; fp32 on Apple MPS)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="alias: --amp = the device's half precision (bf16; fp16 on GPUs without bf16), "
                        "--no-amp = --precision fp32")


def _quantize_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="CPU: store the matmul weights in int8 with one scale per output row and multiply "
                        "in bf16 (faster batch-1 generation than bf16 where the CPU has native bf16, see the "
                        "README's Performance; check the cost with 'evaluate --quantize int8')")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one `error:` line with exit code 2."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show `(default: X)` only where there is a real default (not for required or off flags)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or action.required:
            return action.help
        return super()._get_help_string(action)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")


def _positive_int(text: str) -> int:
    v = _int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {v}")
    return v


def _nonneg_int(text: str) -> int:
    v = _int(text)
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


def _escape(help_text: str) -> str:
    return help_text.replace("%", "%%")   # argparse formats help with %


# config.Flag.kind -> argparse type (durations are parsed by cmd_train, bools are --x / --no-x)
FLAG_TYPES = {"int>=1": _positive_int, "int>=0": _nonneg_int, "int": _int, "float": _float, "fraction": _fraction,
              "duration": str, "choice": str, "text": str}


def _common(p: argparse.ArgumentParser, json_flag: bool = False) -> None:
    p.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    if json_flag:
        p.add_argument("--json", action="store_true",
                       help="print one JSON object on stdout and nothing else there (logs go to stderr)")


def build_parser() -> argparse.ArgumentParser:
    fmt = _HelpFormatter
    prog = "mini-llm" if os.path.basename(sys.argv[0]) == "mini-llm" else "main.py"
    parser = _Parser(prog=prog, description="mini-llm: train a small language model on your own corpus.")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", parser_class=_Parser)
    sub.required = True

    # ---- prepare-corpus
    p = sub.add_parser("prepare-corpus", formatter_class=fmt, help="clean and normalise raw text",
                       description="Clean raw text (mojibake, Unicode NFC, whitespace, case) into one corpus file "
                                   "with one separator line between documents.")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files, directories (every .txt inside, recursively, sorted) or globs; .gz/.bz2/.xz "
                        "read transparently; UTF-8/UTF-16 (with BOM)/Latin-1/Windows-1252 detected")
    p.add_argument("--output", required=True, help="cleaned corpus file (UTF-8)")
    p.add_argument("--preserve-case", action="store_true", help="keep upper case (without it, text is lowercased)")
    p.add_argument("--separator", default=DOC_SEPARATOR, help="document separator line, in input and output")
    p.add_argument("--split-on-blank-lines", type=_positive_int, default=None, metavar="N",
                   help="also start a new document at N or more consecutive blank lines; without it "
                        "only separator lines and file boundaries split (a file without separators is one "
                        "document)")
    p.add_argument("--min-chars", type=_nonneg_int, default=1,
                   help="drop documents shorter than this after cleaning (characters)")
    p.add_argument("--keep-duplicates", action="store_true", help="keep exact-duplicate documents")
    _common(p, json_flag=True)
    p.set_defaults(func=cmd_prepare_corpus)

    # ---- analyze-corpus
    p = sub.add_parser("analyze-corpus", formatter_class=fmt, help="corpus statistics and recommended hyperparameters",
                       description="Documents, tokens (exact with --tokenizer, else estimated from characters), "
                                   "document length distribution, recommended block size / stride / preset / "
                                   "epochs / vocabulary size, and warnings. With several corpora (a mixture, "
                                   "as train --corpus takes it): each one's report, then how often an epoch "
                                   "reads each corpus at its weight and tokens per parameter with and without "
                                   "the largest corpus. The report goes to stdout.")
    p.add_argument("--corpus", nargs="+", required=True, metavar="PATH[:WEIGHT]",
                   help="cleaned corpus file(s); several form a mixture, each optionally with a weight "
                        "(historia.txt:0.7 general.txt:0.3; a plain path weighs 1; weights are normalised)")
    p.add_argument("--separator", default=DOC_SEPARATOR, help="document separator line")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json for exact token counts; without it they are estimated from characters")
    _common(p, json_flag=True)
    p.set_defaults(func=cmd_analyze_corpus)

    # ---- init-tokenizer
    p = sub.add_parser("init-tokenizer", formatter_class=fmt, help="train a byte-level BPE tokenizer")
    p.add_argument("--files", "--corpus", dest="files", nargs="+", required=True,
                   help="training text files (cleaned corpus)")
    p.add_argument("--vocab-size", type=_positive_int, default=32000,
                   help="vocabulary size in tokens, special tokens included (at least 259 = 256 bytes + 3 specials)")
    p.add_argument("--out", "--output", dest="out", required=True, help="output tokenizer.json")
    p.add_argument("--min-frequency", type=_positive_int, default=2, help="minimum pair frequency for a merge")
    p.add_argument("--separator", default=DOC_SEPARATOR,
                   help="document separator line in the files; becomes special token id 0 of the tokenizer")
    _common(p, json_flag=True)
    p.set_defaults(func=cmd_init_tokenizer)

    # ---- train
    # Flags without a fixed default take it from the preset (or TrainConfig): they are absent from
    # `args` unless given (SUPPRESS), and the help says what the default is.
    p = sub.add_parser("train", formatter_class=fmt, help="train a model (presets small/medium/large or custom)",
                       description="Train a model; re-running the same command on the same --outdir continues "
                                   "the run (exact resume). Exit codes: 0 done (epochs, --max-steps, --time-budget, "
                                   "--max-time, early stopping), 1 diverged, 2 bad input, 3 --outdir locked by "
                                   "another run, "
                                   "130 SIGINT / 143 SIGTERM (after saving ckpt_last.pt).")
    unset = argparse.SUPPRESS
    p.add_argument("--tokenizer", required=True, default=unset, help="tokenizer.json from init-tokenizer")
    p.add_argument("--corpus", required=True, nargs="+", default=unset, metavar="PATH[:WEIGHT]",
                   help="cleaned corpus file, or several with weights (historia.txt:0.7 general.txt:0.3; a plain "
                        "path weighs 1): each epoch draws windows from them in those proportions by tokens")
    p.add_argument("--outdir", required=True, default=unset, help="run folder (checkpoints, history, logs)")
    p.add_argument("--init-from", default=None, metavar="PATH",
                   help="start a new run from the weights (and model shape) of a ckpt_best.pt / ckpt_last.pt or "
                        "of a folder written by export; optimizer, schedule, data position and history start "
                        "fresh, and the default lr is the preset's x " + f"{INIT_FROM_LR_FACTOR:g}, the default warmup "
                             f"{INIT_FROM_WARMUP_FRACTION * 100:.0f}%% of the run")
    p.add_argument("--config", choices=[*PRESETS, "custom"], default="small",
                   help="preset (" + ", ".join(f"{name} ~{preset_parameters(name) / 1e6:.0f}M" for name in PRESETS)
                        + " parameters at a 32k vocabulary); any model/training flag below overrides that "
                          "field only. custom: small's training defaults with --n-layer, --n-head and --n-embd "
                          "required")
    p.add_argument("--separator", default=DOC_SEPARATOR, help="document separator line in the corpus")
    for flag in train_flags():   # one per config field (config.py): the preset or the field gives the default
        if flag.kind == "precision":
            _precision_flags(p, "training")
        elif flag.kind == "bool":
            p.add_argument(flag.option, action=argparse.BooleanOptionalAction, default=unset,
                           help=_escape(flag.help))
        else:
            p.add_argument(flag.option, type=FLAG_TYPES[flag.kind], choices=flag.choices or None, default=unset,
                           metavar="DURATION" if flag.kind == "duration" else None, help=_escape(flag.help))
    p.add_argument("--resume", action="store_true",
                   help="require ckpt_last.pt in --outdir and continue from it (re-running the same "
                        "command on that folder continues anyway)")
    p.add_argument("--force", action="store_true",
                   help="resume even if the corpus or tokenizer changed; start a new run over the files of an "
                        "earlier one (or a config.json no run wrote) in --outdir")
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
    p.add_argument("--device", choices=DEVICES, default="auto", help="device")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decoding step (CUDA graphs on CUDA): faster per token after a "
                        "one-off compilation of tens of seconds; pays off for long or many samples")
    _precision_flags(p, "generation")
    _quantize_flag(p)
    _common(p)
    p.set_defaults(func=cmd_generate)

    # ---- evaluate
    p = sub.add_parser("evaluate", formatter_class=fmt,
                       help="perplexity and bits per byte on one or more test files")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json the model was trained with")
    p.add_argument("--ckpt", required=True, help="checkpoint to evaluate")
    p.add_argument("--test-file", required=True, nargs="+", metavar="FILE",
                   help="test text (cleaned corpus format or raw text); several files give one row each "
                        "and the total")
    p.add_argument("--separator", default=DOC_SEPARATOR, help="document separator line")
    p.add_argument("--stride", type=_positive_int, default=None, help="sliding-window stride (default: half the block)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="windows per batch")
    p.add_argument("--per-document", action="store_true", help="add each document's perplexity and the worst 5")
    p.add_argument("--device", choices=DEVICES, default="auto", help="device")
    _precision_flags(p, "evaluation")
    _quantize_flag(p)
    _common(p, json_flag=True)
    p.set_defaults(func=cmd_evaluate)

    # ---- export
    p = sub.add_parser("export", formatter_class=fmt, help="export a checkpoint as a Hugging Face model folder")
    p.add_argument("--ckpt", required=True, help="checkpoint to export")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json the model was trained with")
    p.add_argument("--out", "--output", dest="out", required=True, help="output folder")
    _common(p)
    p.set_defaults(func=cmd_export)

    # ---- report
    p = sub.add_parser("report", formatter_class=fmt, help="one self-contained HTML page comparing runs")
    p.add_argument("runs", nargs="+", help="run folders (with history.json and config.json)")
    p.add_argument("--out", "--output", dest="out", required=True, help="output .html file")
    _common(p)
    p.set_defaults(func=cmd_report)

    # ---- quickstart
    p = sub.add_parser("quickstart", formatter_class=fmt, help="run the whole pipeline on a demo corpus")
    p.add_argument("--corpus", default=None, help="your own raw text instead of the demo corpus")
    p.add_argument("--outdir", default="runs/quickstart", help="where every stage writes")
    p.add_argument("--time-budget", default="6m", metavar="DURATION",
                   help="training time (wall clock), e.g. 5m, 30m, 2h: the number of steps is fitted to it")
    p.add_argument("--max-time", default=None, metavar="DURATION",
                   help="cap on this invocation's training time (stop early; re-run to continue)")
    _common(p)
    p.set_defaults(func=cmd_quickstart)

    return parser


def _error_line(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")    # main() made stderr print any character (escaped)


# Arguments that are text for the model (not paths): they must be valid UTF-8.
TEXT_ARGS = ("prompt", "separator", "prompt_separator", "sample_prompt", "stop")


def _check_text_args(args) -> None:
    for name in TEXT_ARGS:
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise UserError(f"--{name.replace('_', '-')} holds bytes that are not UTF-8 text; pass it "
                                    f"in UTF-8 (or put it in a UTF-8 file)")


def main(argv=None) -> int:
    for stream in (sys.stdout, sys.stderr):       # a path with non-UTF-8 bytes still prints (escaped)
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    setup_logging(quiet=getattr(args, "quiet", False))
    tune_allocator()                               # freed tensors' memory kept for the next ones
    try:
        _check_text_args(args)
        return args.func(args) or 0
    except UserError as e:
        if not getattr(e, "shared", False):       # torchrun: an error all ranks agreed on is printed by rank 0
            _error_line(str(e))
        return e.code
    except OSError as e:   # the file system refused something no check foresaw: still one line
        where = f" {e.filename}" if e.filename else ""
        _error_line(f"cannot access{where}: {e.strerror or e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
