"""Bad and hostile input across every stage, table-driven: each case gives its documented exit
code, exactly one `error:` line naming the problem, no traceback, and leaves every file that
existed before byte-identical (train.log aside: it records the failed attempt). A checkpoint
crafted to run code when unpickled is refused by every stage that reads checkpoints."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
import tokenizer
import training as T
from common import file_sha256
from conftest import ROOT, corpus_slice

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, eval_batches=2, max_steps=2, eval_every=2)
NOT_UTF8 = b"texto \xff\xfe roto".decode("utf-8", "surrogateescape")   # what argv holds for such bytes


class Evil:
    """Unpickling this creates the marker file: the payload of a hostile checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """A workspace: a corpus, a tokenizer, a trained run, and damaged or hostile variants."""
    d = tmp_path_factory.mktemp("bad_input")
    text = corpus_slice("wiki_es.txt", n_chars=40_000)
    corpus = d / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    tok = d / "tok.json"
    tokenizer.train_tokenizer([corpus], vocab_size=400, out_path=tok, quiet=True)
    other_tok = d / "other_tok.json"
    tokenizer.train_tokenizer([corpus], vocab_size=300, out_path=other_tok, quiet=True)
    run = d / "run"
    T.train(tok, corpus, run, "custom", TINY, quiet=True)
    ckpt = run / "ckpt_best.pt"
    good = torch.load(ckpt, map_location="cpu", weights_only=True)

    def variant(name, change):
        c = {**good, "model": dict(good["model"]), "model_config": dict(good["model_config"])}
        change(c)
        torch.save(c, d / name)

    variant("nan.pt", lambda c: c["model"].__setitem__("tok_emb.weight", c["model"]["tok_emb.weight"] * math.nan))
    variant("keys.pt", lambda c: c.__setitem__("model", {i: v for i, v in enumerate(c["model"].values())}))
    variant("absurd.pt", lambda c: c["model_config"].update(n_layer=500, n_embd=32768, n_head=256))
    variant("ints.pt", lambda c: c["model"].__setitem__("tok_emb.weight", c["model"]["tok_emb.weight"].long()))
    (d / "truncated.pt").write_bytes(ckpt.read_bytes()[:5000])
    (d / "empty.pt").write_bytes(b"")
    (d / "text.pt").write_text("esto no es un checkpoint", encoding="utf-8")
    marker = d / "PWNED"
    torch.save({"model": Evil(marker)}, d / "evil.pt")
    for name, state in (("garbled", {**good["state"], "step": "doce", "window": None}),):
        folder = d / f"resume_{name}"
        shutil.copytree(run, folder)
        torch.save({**good, "state": state}, folder / "ckpt_last.pt")
    shutil.copytree(run, d / "resume_evil")
    shutil.copy(d / "evil.pt", d / "resume_evil" / "ckpt_last.pt")
    (d / "not_json.json").write_text("{ no es json", encoding="utf-8")
    (d / "latin1.txt").write_bytes("año, canción, niño\n".encode("latin-1") + b"\xff\xfe\n")
    (d / "empty.txt").write_text("", encoding="utf-8")
    (d / "a_file").write_text("x", encoding="utf-8")
    (d / "a_dir").mkdir()
    (d / "foreign").mkdir()
    (d / "foreign" / "config.json").write_text('{"mine": true}', encoding="utf-8")
    (d / "other").mkdir()
    (d / "other" / "notas.txt").write_text("notas", encoding="utf-8")
    return d


def C(w: Path, *parts) -> list[str]:
    """argv with {w} replaced by the workspace path."""
    return [str(p).replace("{w}", str(w)) for p in parts]


T_ARGS = ["--config", "custom", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
          "--max-steps", "2"]
TRAIN = ["train", "--tokenizer", "{w}/tok.json", "--corpus", "{w}/corpus.txt"]
GEN = ["generate", "--tokenizer", "{w}/tok.json", "--prompt", "La historia"]
EVAL = ["evaluate", "--tokenizer", "{w}/tok.json", "--test-file", "{w}/corpus.txt"]
EXP = ["export", "--tokenizer", "{w}/tok.json"]
CK = "{w}/run/ckpt_best.pt"

# (case id, argv, exit code, a fragment of the error line)
CASES = [
    # ---- prepare-corpus
    ("prep-missing-input", ["prepare-corpus", "--input", "{w}/nope.txt", "--output", "{w}/o.txt"], 2, "nope.txt"),
    ("prep-empty-dir", ["prepare-corpus", "--input", "{w}/a_dir", "--output", "{w}/o.txt"], 2, "a_dir"),
    ("prep-output-is-input", ["prepare-corpus", "--input", "{w}/corpus.txt", "--output", "{w}/corpus.txt"], 2,
     "also an input"),
    ("prep-output-parent-is-file", ["prepare-corpus", "--input", "{w}/corpus.txt", "--output", "{w}/a_file/o.txt"],
     2, "is a file, not a folder"),
    ("prep-output-is-dir", ["prepare-corpus", "--input", "{w}/corpus.txt", "--output", "{w}/a_dir"], 2, "a_dir"),
    ("prep-min-chars-negative", ["prepare-corpus", "--input", "{w}/corpus.txt", "--output", "{w}/o.txt",
                                 "--min-chars", "-1"], 2, "--min-chars"),
    ("prep-split-zero", ["prepare-corpus", "--input", "{w}/corpus.txt", "--output", "{w}/o.txt",
                         "--split-on-blank-lines", "0"], 2, "--split-on-blank-lines"),
    ("prep-empty-input", ["prepare-corpus", "--input", "{w}/empty.txt", "--output", "{w}/o.txt"], 2, "empty"),
    ("prep-empty-separator", ["prepare-corpus", "--input", "{w}/corpus.txt", "--output", "{w}/o.txt",
                              "--separator", " "], 2, "separator"),
    ("prep-missing-output-flag", ["prepare-corpus", "--input", "{w}/corpus.txt"], 2, "--output"),
    # ---- analyze-corpus
    ("analyze-missing", ["analyze-corpus", "--corpus", "{w}/nope.txt"], 2, "nope.txt"),
    ("analyze-dir", ["analyze-corpus", "--corpus", "{w}/a_dir"], 2, "a_dir"),
    ("analyze-empty", ["analyze-corpus", "--corpus", "{w}/empty.txt"], 2, "empty"),
    ("analyze-bad-tokenizer", ["analyze-corpus", "--corpus", "{w}/corpus.txt", "--tokenizer", "{w}/not_json.json"],
     2, "not_json.json"),
    ("analyze-tokenizer-is-corpus", ["analyze-corpus", "--corpus", "{w}/corpus.txt", "--tokenizer",
                                     "{w}/corpus.txt"], 2, "tokenizer"),
    # ---- init-tokenizer
    ("tok-missing-file", ["init-tokenizer", "--files", "{w}/nope.txt", "--out", "{w}/t.json"], 2, "nope.txt"),
    ("tok-vocab-too-small", ["init-tokenizer", "--files", "{w}/corpus.txt", "--vocab-size", "10", "--out",
                             "{w}/t.json"], 2, "259"),
    ("tok-vocab-huge", ["init-tokenizer", "--files", "{w}/corpus.txt", "--vocab-size", str(10 ** 12), "--out",
                        "{w}/t.json"], 2, "too large"),
    ("tok-vocab-zero", ["init-tokenizer", "--files", "{w}/corpus.txt", "--vocab-size", "0", "--out", "{w}/t.json"],
     2, "--vocab-size"),
    ("tok-min-frequency-zero", ["init-tokenizer", "--files", "{w}/corpus.txt", "--min-frequency", "0", "--out",
                                "{w}/t.json"], 2, "--min-frequency"),
    ("tok-out-parent-is-file", ["init-tokenizer", "--files", "{w}/corpus.txt", "--vocab-size", "300", "--out",
                                "{w}/a_file/t.json"], 2, "is a file, not a folder"),
    ("tok-out-is-dir", ["init-tokenizer", "--files", "{w}/corpus.txt", "--vocab-size", "300", "--out", "{w}/a_dir"],
     2, "a_dir"),
    ("tok-not-utf8", ["init-tokenizer", "--files", "{w}/latin1.txt", "--vocab-size", "300", "--out", "{w}/t.json"],
     2, "UTF-8 text (line 1, byte 1"),
    # ---- train
    ("train-missing-tokenizer", ["train", "--tokenizer", "{w}/nope.json", "--corpus", "{w}/corpus.txt",
                                 "--outdir", "{w}/o", *T_ARGS], 2, "nope.json"),
    ("train-tokenizer-not-json", ["train", "--tokenizer", "{w}/not_json.json", "--corpus", "{w}/corpus.txt",
                                  "--outdir", "{w}/o", *T_ARGS], 2, "not_json.json"),
    ("train-missing-corpus", ["train", "--tokenizer", "{w}/tok.json", "--corpus", "{w}/nope.txt", "--outdir",
                              "{w}/o", *T_ARGS], 2, "corpus file not found"),
    ("train-empty-corpus", [*TRAIN[:4], "{w}/empty.txt", "--outdir", "{w}/o", *T_ARGS], 2, "empty"),
    ("train-not-utf8-corpus", [*TRAIN[:4], "{w}/latin1.txt", "--outdir", "{w}/o", *T_ARGS], 2,
     "UTF-8 text (line 1, byte 1"),
    ("train-heads", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--n-head", "3"], 2, "not divisible"),
    ("train-lr-negative", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--lr", "-1"], 2, "lr=-1.0"),
    ("train-lr-nan", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--lr", "nan"], 2, "lr=nan"),
    ("train-dropout", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--dropout", "1.5"], 2, "dropout"),
    ("train-val-fraction", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--val-fraction", "1"], 2, "--val-fraction"),
    ("train-batch-zero", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--batch-size", "0"], 2, "--batch-size"),
    ("train-epochs-zero", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--epochs", "0"], 2, "--epochs"),
    ("train-block-zero", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--block-size", "0"], 2, "--block-size"),
    ("train-max-time", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--max-time", "soon"], 2, "--max-time"),
    ("train-time-budget", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--time-budget", "-5m"], 2, "--time-budget"),
    ("train-huge-seed", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--seed", str(10 ** 30)], 2, "seed"),
    ("train-unknown-preset", [*TRAIN, "--outdir", "{w}/o", "--config", "huge"], 2, "--config"),
    ("train-custom-without-shape", [*TRAIN, "--outdir", "{w}/o", "--config", "custom"], 2, "--n-layer"),
    ("train-stride", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--stride", "64"], 2, "stride=64"),
    ("train-width-limit", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--n-embd", str(2 ** 31)], 2, "beyond"),
    ("train-too-big-for-memory", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--n-embd", "32768", "--n-layer", "500"], 2,
     "out of memory"),
    ("train-workers", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--num-workers", "100000"], 2, "num_workers"),
    ("train-outdir-is-file", [*TRAIN, "--outdir", "{w}/a_file", *T_ARGS], 2, "not a folder"),
    ("train-foreign-config", [*TRAIN, "--outdir", "{w}/foreign", *T_ARGS], 2, "--force"),
    ("train-garbled-resume", [*TRAIN, "--outdir", "{w}/resume_garbled", "--config", "custom", "--n-layer", "2",
                              "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--max-steps", "4"], 2,
     "damaged"),
    ("train-resume-other-shape", [*TRAIN, "--outdir", "{w}/run", "--config", "custom", "--n-layer", "3",
                                  "--n-head", "2", "--n-embd", "32", "--block-size", "32"], 2, "model shape"),
    ("train-resume-other-tokenizer", ["train", "--tokenizer", "{w}/other_tok.json", "--corpus", "{w}/corpus.txt",
                                      "--outdir", "{w}/run", *T_ARGS], 2, "tokenizer"),
    ("train-sample-prompt-not-utf8", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--sample-prompt", NOT_UTF8], 2,
     "UTF-8"),
    ("train-resume-without-run", [*TRAIN, "--outdir", "{w}/o", *T_ARGS, "--resume"], 2, "nothing to resume"),
    # ---- generate
    ("gen-missing-ckpt", [*GEN, "--ckpt", "{w}/nope.pt"], 2, "nope.pt"),
    ("gen-truncated-ckpt", [*GEN, "--ckpt", "{w}/truncated.pt"], 2, "truncated"),
    ("gen-empty-ckpt", [*GEN, "--ckpt", "{w}/empty.pt"], 2, "empty"),
    ("gen-text-ckpt", [*GEN, "--ckpt", "{w}/text.pt"], 2, "text.pt"),
    ("gen-nan-ckpt", [*GEN, "--ckpt", "{w}/nan.pt"], 2, "NaN"),
    ("gen-keys-ckpt", [*GEN, "--ckpt", "{w}/keys.pt"], 2, "damaged"),
    ("gen-absurd-ckpt", [*GEN, "--ckpt", "{w}/absurd.pt"], 2, "damaged"),
    ("gen-int-weights-ckpt", [*GEN, "--ckpt", "{w}/ints.pt"], 2, "not a float"),
    ("gen-other-tokenizer", ["generate", "--tokenizer", "{w}/other_tok.json", "--prompt", "La", "--ckpt", CK], 2,
     "not the one"),
    ("gen-temperature", [*GEN, "--ckpt", CK, "--temperature", "-1"], 2, "temperature"),
    ("gen-top-p", [*GEN, "--ckpt", CK, "--top-p", "2"], 2, "top_p"),
    ("gen-top-k", [*GEN, "--ckpt", CK, "--top-k", "-1"], 2, "--top-k"),
    ("gen-max-tokens", [*GEN, "--ckpt", CK, "--max-tokens", "0"], 2, "--max-tokens"),
    ("gen-seed", [*GEN, "--ckpt", CK, "--seed", "-1"], 2, "--seed"),
    ("gen-prompt-not-utf8", ["generate", "--tokenizer", "{w}/tok.json", "--ckpt", CK, "--prompt", NOT_UTF8], 2,
     "UTF-8"),
    ("gen-prompt-separator-alone", [*GEN, "--ckpt", CK, "--prompt-separator", "###"], 2, "--prompt-file"),
    ("gen-stream-batch", [*GEN, "--ckpt", CK, "--stream", "--batch-generate"], 2, "--stream"),
    ("gen-empty-stop", [*GEN, "--ckpt", CK, "--stop", ""], 2, "--stop"),
    ("gen-output-is-dir", [*GEN, "--ckpt", CK, "--output", "{w}/a_dir"], 2, "folder"),
    ("gen-output-parent-is-file", [*GEN, "--ckpt", CK, "--output", "{w}/a_file/out.txt"], 2, "is a file"),
    ("gen-prompt-file-missing", ["generate", "--tokenizer", "{w}/tok.json", "--ckpt", CK, "--prompt-file",
                                 "{w}/nope.txt"], 2, "nope.txt"),
    # ---- evaluate
    ("eval-missing-test-file", ["evaluate", "--tokenizer", "{w}/tok.json", "--test-file", "{w}/nope.txt",
                                "--ckpt", CK], 2, "nope.txt"),
    ("eval-empty-test-file", ["evaluate", "--tokenizer", "{w}/tok.json", "--test-file", "{w}/empty.txt",
                              "--ckpt", CK], 2, "empty"),
    ("eval-not-utf8", ["evaluate", "--tokenizer", "{w}/tok.json", "--test-file", "{w}/latin1.txt", "--ckpt", CK],
     2, "UTF-8 text (line 1, byte 1"),
    ("eval-nan-ckpt", [*EVAL, "--ckpt", "{w}/nan.pt"], 2, "NaN"),
    ("eval-absurd-ckpt", [*EVAL, "--ckpt", "{w}/absurd.pt"], 2, "damaged"),
    ("eval-stride-zero", [*EVAL, "--ckpt", CK, "--stride", "0"], 2, "--stride"),
    ("eval-stride-too-big", [*EVAL, "--ckpt", CK, "--stride", "64"], 2, "stride"),
    ("eval-batch-zero", [*EVAL, "--ckpt", CK, "--batch-size", "0"], 2, "--batch-size"),
    ("eval-other-tokenizer", ["evaluate", "--tokenizer", "{w}/other_tok.json", "--test-file", "{w}/corpus.txt",
                              "--ckpt", CK], 2, "not the one"),
    # ---- export
    ("export-out-is-file", [*EXP, "--ckpt", CK, "--out", "{w}/a_file"], 2, "not a folder"),
    ("export-out-has-other-files", [*EXP, "--ckpt", CK, "--out", "{w}/other"], 2, "other files"),
    ("export-keys-ckpt", [*EXP, "--ckpt", "{w}/keys.pt", "--out", "{w}/hf"], 2, "damaged"),
    ("export-truncated-ckpt", [*EXP, "--ckpt", "{w}/truncated.pt", "--out", "{w}/hf"], 2, "truncated"),
    ("export-other-tokenizer", ["export", "--tokenizer", "{w}/other_tok.json", "--ckpt", CK, "--out", "{w}/hf"], 2,
     "not the one"),
    # ---- report
    ("report-missing-run", ["report", "{w}/nope", "--out", "{w}/r.html"], 2, "not found"),
    ("report-not-a-run", ["report", "{w}/a_dir", "--out", "{w}/r.html"], 2, "config.json"),
    ("report-same-run-twice", ["report", "{w}/run", "{w}/run", "--out", "{w}/r.html"], 2, "twice"),
    ("report-out-is-dir", ["report", "{w}/run", "--out", "{w}/a_dir"], 2, "a_dir"),
    ("report-foreign-config", ["report", "{w}/foreign", "--out", "{w}/r.html"], 2, "not a run config"),
    # ---- quickstart and the command line itself
    ("quickstart-bad-budget", ["quickstart", "--time-budget", "soon", "--outdir", "{w}/qs"], 2, "soon"),
    ("quickstart-missing-corpus", ["quickstart", "--corpus", "{w}/nope.txt", "--outdir", "{w}/qs"], 2, "nope.txt"),
    ("unknown-stage", ["entrenar"], 2, "invalid choice"),
    ("unknown-flag", [*GEN, "--ckpt", CK, "--temperatura", "1"], 2, "unrecognized"),
]
# Every stage that reads a checkpoint, given one crafted to run code when unpickled.
HOSTILE = [
    ("generate", [*GEN, "--ckpt", "{w}/evil.pt"]),
    ("evaluate", [*EVAL, "--ckpt", "{w}/evil.pt"]),
    ("export", [*EXP, "--ckpt", "{w}/evil.pt", "--out", "{w}/hf_evil"]),
    ("train-resume", [*TRAIN, "--outdir", "{w}/resume_evil", *T_ARGS]),
]


def snapshot(folder: Path) -> dict:
    return {str(p): file_sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "train.log" and "cache" not in p.parts}


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main.main(argv)
    except SystemExit as e:       # argparse usage errors
        code = e.code
    return code, capsys.readouterr().err


def test_there_are_at_least_sixty_cases_over_every_stage():
    stages = {argv[0] for _, argv, _, _ in CASES}
    assert len(CASES) >= 60 and {"prepare-corpus", "analyze-corpus", "init-tokenizer", "train", "generate",
                                 "evaluate", "export", "report", "quickstart"} <= stages


@pytest.mark.parametrize("case,argv,code,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(w, capsys, case, argv, code, fragment):
    before = snapshot(w)
    got, err = run_main(C(w, *argv), capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert got == code, (got, err)
    assert len(errors) == 1 and "Traceback" not in err, err
    assert fragment in errors[0], errors[0]
    after = snapshot(w)
    assert {k: v for k, v in after.items() if k in before} == before    # nothing that existed changed
    assert not [p for p in w.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("stage,argv", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_checkpoint_that_runs_code_when_unpickled_is_refused(w, capsys, stage, argv):
    marker = w / "PWNED"
    got, err = run_main(C(w, *argv), capsys)
    assert got == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no code in it ran" in errors[0], err
    assert not marker.exists()


def test_the_hostile_checkpoint_really_is_hostile(w, tmp_path):
    """The payload is live: a plain (unsafe) torch.load in another process runs it."""
    marker = tmp_path / "RAN"
    torch.save({"model": Evil(marker)}, tmp_path / "evil.pt")
    code = (f"import sys, torch; sys.path.insert(0, {str(ROOT / 'tests')!r}); import test_bad_input; "
            f"torch.load({str(tmp_path / 'evil.pt')!r}, weights_only=False)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)
    assert marker.read_text() == "pwned"


def test_json_output_is_valid_json_with_null_and_a_reason_for_undefined_numbers(capsys):
    main.emit_json({"loss": float("nan"), "per_document": [{"ppl": float("inf")}], "ok": 1.5})
    out = capsys.readouterr().out
    obj = json.loads(out)                   # strict JSON: a NaN literal would not parse in most readers
    assert "NaN" not in out and "Infinity" not in out
    assert obj["loss"] is None and obj["per_document"][0]["ppl"] is None and obj["ok"] == 1.5
    assert obj["undefined"] == {"loss": "nan", "per_document[0].ppl": "inf"}


def test_a_path_with_non_utf8_bytes_is_one_clear_line(w, tmp_path):
    """Through a real process: argv bytes that are not UTF-8, in a path and in a prompt."""
    bad = os.fsencode(str(tmp_path)) + b"/corpus-\xff.txt"
    with open(bad, "wb") as f:
        f.write((w / "corpus.txt").read_bytes())
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "analyze-corpus", "--corpus", bad,
                           "--tokenizer", os.fsencode(str(w / "nope.json"))], capture_output=True, env=env, timeout=120)
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == 2 and "Traceback" not in err and err.count("error:") == 1, err
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "prepare-corpus", "--input", bad, "--output",
                           os.fsencode(str(tmp_path)) + b"/salida-\xfe.txt", "--quiet"], capture_output=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    cleaned = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/salida-\xfe.txt")).read_text(encoding="utf-8")
    assert cleaned.strip() and "<|doc|>" in cleaned
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "generate", "--tokenizer", str(w / "tok.json"),
                           "--ckpt", str(w / "run" / "ckpt_best.pt"), "--prompt", b"hola \xff"], capture_output=True,
                          env=env, timeout=120)
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == 2 and "Traceback" not in err and "--prompt" in err and "UTF-8" in err, err
