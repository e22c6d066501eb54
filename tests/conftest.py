"""Shared fixtures: the project root, slices of the shipped Spanish corpus, a CLI runner, GPU
skipping, and (under MINI_LLM_NO_SKIPS=1, as .ci/run sets) a failed run when a test that is not
marked `gpu` skips."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench_module(name: str):
    """bench/NAME.py imported as module bench_NAME (bench/ goes on sys.path: the scripts import
    each other), for the tests of the benchmark scripts' pure parts."""
    import importlib.util
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                        # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
# The text the tests read: public-domain and CC0 Spanish, ~440 KB (tests/data/README.md says
# where it comes from; tests/data/make_corpus_es.py made it).
SHIPPED_CORPUS = ROOT / "tests" / "data" / "corpus_es.txt"
# Names of the ../shared/corpora files the tests once read; they all read SHIPPED_CORPUS now.
SPANISH_CORPUS_NAMES = {"wiki_es.txt", "novelas_es.txt", "parlamento_es.txt", "biblia_rv1909_es.txt",
                        "debian_docs_es.txt"}

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    """The suite computes in fp32 on every machine (as it did before --precision auto existed):
    the CPU is reported without native bf16 unless a test says otherwise, and the precision
    cache is a fresh folder, never the user's ~/.cache/mini-llm. Set here, before any test,
    so that the CLI subprocesses the tests start inherit both."""
    import tempfile
    os.environ["MINI_LLM_NATIVE_BF16"] = "0"
    os.environ["MINI_LLM_PRECISION_CACHE"] = tempfile.mkdtemp(prefix="mini-llm-precision-cache-")


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------- no skips in CI
# .ci/run sets MINI_LLM_NO_SKIPS=1: then a skipped test that is not marked `gpu` (a missing
# program, a module-level importorskip, a network failure...) fails the run, with the list of
# such tests and their reasons at the end of the report. Without the variable, skips are skips.
NO_SKIPS_ENV = "MINI_LLM_NO_SKIPS"
_forbidden_skips: list[tuple[str, str]] = []


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _no_skips() -> bool:
    return os.environ.get(NO_SKIPS_ENV, "") not in ("", "0")


def pytest_runtest_logreport(report):
    if (_no_skips() and report.skipped and not hasattr(report, "wasxfail")
            and "gpu" not in report.keywords):
        _forbidden_skips.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report):
    if _no_skips() and report.skipped:                       # e.g. pytest.importorskip at module level
        _forbidden_skips.append((report.nodeid, _skip_reason(report)))


def pytest_sessionfinish(session, exitstatus):
    if _forbidden_skips and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if not _forbidden_skips:
        return
    terminalreporter.write_sep("=", f"{len(_forbidden_skips)} test(s) skipped without the gpu marker "
                                    f"({NO_SKIPS_ENV}=1: that fails the run)", red=True, bold=True)
    for nodeid, reason in _forbidden_skips:
        terminalreporter.write_line(f"SKIPPED {nodeid}: {reason}", red=True)


def corpus_slice(name: str = SHIPPED_CORPUS.name, n_docs: int | None = None, n_chars: int | None = None) -> str:
    """The first documents (or characters) of the Spanish test corpus shipped in tests/data/.

    One corpus for every test, in the clone: nothing is read from outside the project and no
    test skips for want of text. `name` is kept for the tests written against ../shared/corpora
    (wiki_es.txt, novelas_es.txt, parlamento_es.txt, ...): every Spanish name reads the shipped
    corpus_es.txt, whose first 550 documents are short (300-2,000 characters for most, like the
    encyclopedia summaries) and whose last 3 are long novel openings (20-50K characters; see
    tests/data/README.md). A slice asked beyond its end is the whole file (430,247 characters,
    553 documents)."""
    if name != SHIPPED_CORPUS.name and name not in SPANISH_CORPUS_NAMES:
        raise ValueError(f"corpus_slice: no test corpus named {name!r}; the suite ships only "
                         f"{SHIPPED_CORPUS.relative_to(ROOT)} (Spanish)")
    with open(SHIPPED_CORPUS, encoding="utf-8") as f:
        text = f.read(n_chars) if n_chars else f.read()
    if n_docs is not None:
        docs = text.split("<|doc|>\n")[:n_docs]
        text = "<|doc|>\n".join(docs)
    return text


@pytest.fixture
def spanish_text():
    """~200 KB of real Spanish text in many short documents (speeches, novel passages)."""
    return corpus_slice("wiki_es.txt", n_chars=200_000)


def corpus_and_tokenizer(d: Path, n_chars: int = 60_000, vocab_size: int = 512) -> dict:
    """In folder `d`: the first `n_chars` of the shipped corpus as a corpus file and a tokenizer
    trained on it; {"dir", "corpus", "tok", "docs"}."""
    import tokenizer
    docs = [x.strip() for x in corpus_slice("wiki_es.txt", n_chars=n_chars).split("<|doc|>\n")[:-1]]
    corpus = d / "corpus.txt"
    corpus.write_text("".join(f"{x}\n<|doc|>\n" for x in docs if x), encoding="utf-8")
    tok = d / "tok.json"
    tokenizer.train_tokenizer([corpus], vocab_size=vocab_size, out_path=tok, quiet=True)
    return {"dir": d, "corpus": corpus, "tok": tok, "docs": docs}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and a busy 2-core box does not thrash); for a
    module: `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(*args, cwd=None, timeout=600, env=None, input=None):
    """Run `python main.py ...` as a user would; return CompletedProcess (text mode)."""
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONIOENCODING", "utf-8")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)],
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full_env, input=input)


@pytest.fixture
def cli():
    return run_cli


def assert_user_error(proc):
    """Exit code 2, exactly one `error:` line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr
