"""`main.py report`: the HTML page parsed with html.parser, error handling, and a real
headless browser (Debian's chromium) rendering the page to a screenshot.

Run folders are fabricated here the way `train` writes them (config.json + history.json).
"""
from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import report
from common import UserError
from conftest import assert_user_error, run_cli

METRIC_PLOTS = ["loss", "perplexity", "lr", "grad_norm", "tokens_per_second"]
SAMPLES = [
    "La historia de la ciudad comenzó en el siglo XIX, cuando los españoles llegaron al río.",
    "El niño comió pingüino <b>asado</b> & «qué» — ¿por qué? ¡Año!",
    "Durante el siglo XIX la región fue\nuna de las más importantes del país.",
]


def make_config(n_layer=4, lr=1e-3, vocab_size=8000) -> dict:
    return {
        "model": {"vocab_size": vocab_size, "block_size": 128, "n_layer": n_layer, "n_head": 4,
                  "n_embd": 256, "dropout": 0.0, "bias": True, "rope_base": 10000.0,
                  "norm_eps": 1e-5, "sep_token_id": 0},
        "train": {"batch_size": 16, "accumulation_steps": 1, "epochs": 3, "max_steps": None,
                  "lr": lr, "min_lr": lr / 10, "warmup_steps": 50, "weight_decay": 0.1,
                  "grad_clip": 1.0, "patience": 0, "eval_every": 100, "seed": 1337,
                  "device": "cpu", "amp": False},
        "tokenizer": {"path": "runs/tok/tokenizer.json", "hash": "ab" * 32, "vocab_size": vocab_size},
        "corpus": {"path": "data/wiki_es.txt", "hash": "cd" * 32},
        "versions": {"python": "3.11.7", "torch": "2.13.0"},
    }


def make_history(n_evals: int, lr=1e-3, seed=0, samples=SAMPLES) -> list[dict]:
    """Plausible curves: losses decaying from ~9 nats, warmup + cosine lr, a settling grad norm."""
    rng = random.Random(seed)
    history = []
    for i in range(n_evals):
        step = (i + 1) * 100
        train_loss = 2.5 + 6.5 * math.exp(-step * lr / 0.3) + rng.uniform(-0.05, 0.05)
        val_loss = train_loss + 0.1 + 0.02 * i
        history.append({
            "step": step, "epoch": step // 1000, "tokens_seen": step * 16 * 128,
            "train_loss": train_loss, "val_loss": val_loss, "val_perplexity": math.exp(val_loss),
            "lr": lr * (0.55 + 0.45 * math.cos(math.pi * i / n_evals)),
            "grad_norm": 5 * math.exp(-step / 200) + 0.3 + rng.uniform(0, 0.1),
            "tokens_per_second": 9000 + rng.uniform(-500, 500), "elapsed_seconds": step * 0.25,
            "sample": samples[i % len(samples)],
        })
    return history


def make_run(folder: Path, history: list | None, **config) -> Path:
    """A run folder as `train` leaves it; history None = no history.json yet."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(make_config(**config), indent=2), encoding="utf-8")
    if history is not None:
        (folder / "history.json").write_text(json.dumps(history, ensure_ascii=False, indent=1),
                                             encoding="utf-8")
    return folder


class PageParser(HTMLParser):
    """Collects what the tests look at: figures and their images, attributes, table cells."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []          # (tag, name, value)
        self.figure_images: dict[str, list[str]] = {}         # figure id -> ["svg" | "png"]
        self.compare_headers: list[str] = []
        self.differing_rows: list[str] = []
        self.sample_cells: list[str] = []
        self.style_text = ""
        self._figure = None
        self._stack: list[tuple[str, dict]] = []
        self._text: list[str] | None = None
        self._capture = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.attrs.extend((tag, k, v or "") for k, v in attrs)
        if tag == "figure":
            self._figure = a.get("id")
            self.figure_images[self._figure] = []
        elif self._figure and tag == "svg":
            self.figure_images[self._figure].append("svg")
        elif self._figure and tag == "img" and (a.get("src") or "").startswith("data:image/png;base64,"):
            self.figure_images[self._figure].append("png")
        in_compare = any(t == "table" and "compare" in (x.get("class") or "") for t, x in self._stack)
        if tag == "tr" and in_compare and "differs" in (a.get("class") or ""):
            self._capture, self._text = "differs", []
        elif tag == "th" and in_compare and any(t == "thead" for t, _ in self._stack):
            self._capture, self._text = "header", []
        elif tag == "td" and "sample" in (a.get("class") or "").split():
            self._capture, self._text = "sample", []
        elif tag == "style":
            self._capture, self._text = "style", []
        if tag not in ("meta", "br", "img", "path", "use", "rect", "line", "circle", "stop"):
            self._stack.append((tag, a))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if self._stack and self._stack[-1][0] == tag:
            self._stack.pop()

    def handle_endtag(self, tag):
        while self._stack:
            t, _ = self._stack.pop()
            if t == tag:
                break
        if tag == "figure":
            self._figure = None
        ends = {"header": "th", "sample": "td", "style": "style"}
        if self._capture == "differs" and tag == "th":
            self.differing_rows.append("".join(self._text).strip())
            self._capture = None
        elif self._capture in ends and tag == ends[self._capture]:
            text = "".join(self._text)
            {"header": self.compare_headers, "sample": self.sample_cells}.get(
                self._capture, []).append(text.strip() if self._capture == "header" else text)
            if self._capture == "style":
                self.style_text = text
            self._capture = None

    def handle_data(self, data):
        if self._capture is not None:
            self._text.append(data)


def parse(path: Path) -> tuple[str, PageParser]:
    text = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return text, parser


# =========================================================================== the page, built once by the CLI

@pytest.fixture(scope="module")
def two_run_report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    a = make_run(base / "runs" / "small-a", make_history(12, lr=1e-3, seed=1), n_layer=4, lr=1e-3)
    b = make_run(base / "runs" / "wide-b", make_history(9, lr=5e-4, seed=2, samples=SAMPLES[::-1]),
                 n_layer=6, lr=5e-4)
    out = base / "report.html"
    proc = run_cli("report", a, b, "--out", out, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""                      # logs go to stderr
    return out


def test_every_metric_has_an_embedded_plot(two_run_report):
    _, page = parse(two_run_report)
    for metric in METRIC_PLOTS:
        assert page.figure_images.get(f"plot-{metric}"), f"no embedded plot for {metric}"


def test_plots_legend_names_each_run(two_run_report):
    text = two_run_report.read_text(encoding="utf-8")
    for name in ("small-a (train)", "small-a (validation)", "wide-b (train)", "wide-b (validation)"):
        assert name in text


def test_comparison_table_has_both_runs_and_highlights_differences(two_run_report):
    _, page = parse(two_run_report)
    assert page.compare_headers[1:] == ["small-a", "wide-b"]
    assert {"n_layer", "lr", "best val loss", "steps"} <= set(page.differing_rows)
    assert "n_head" not in page.differing_rows          # same in both runs: not highlighted
    assert "vocab_size" not in page.differing_rows


def test_samples_are_escaped_and_keep_spanish_text(two_run_report):
    text, page = parse(two_run_report)
    assert "b" not in page.tags                         # the sample's <b> did not become markup
    assert "&lt;b&gt;asado&lt;/b&gt; &amp; «qué»" in text
    assert any("pingüino <b>asado</b> & «qué» — ¿por qué? ¡Año!" in s for s in page.sample_cells)
    assert any("Durante el siglo XIX la región fue\nuna de las más" in s for s in page.sample_cells)
    assert len(page.sample_cells) == 12 + 9             # one row per evaluation per run


def test_page_loads_nothing_from_elsewhere(two_run_report):
    text, page = parse(two_run_report)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    for tag, name, value in page.attrs:
        if name.startswith("xmlns"):                    # XML namespace names, never fetched
            continue
        assert not value.strip().lower().startswith(("http:", "https:", "//")), (tag, name, value)
        assert "url(http" not in value.replace(" ", "").lower()
    assert "@import" not in page.style_text and "url(" not in page.style_text


# =========================================================================== runs in progress, odd histories

def test_run_without_evaluations_is_reported_not_an_error(tmp_path):
    started = make_run(tmp_path / "started", None)           # config.json only
    empty = make_run(tmp_path / "empty", [])                 # history.json = []
    out = report.write_report([started, empty], tmp_path / "r.html")
    text, page = parse(out)
    assert text.count("no evaluations yet") >= 4             # table cells and samples sections
    assert all(not imgs for imgs in page.figure_images.values())   # nothing to plot yet


def test_in_progress_run_beside_a_finished_one(tmp_path):
    done = make_run(tmp_path / "done", make_history(5))
    running = make_run(tmp_path / "running", make_history(1, seed=3), n_layer=2)
    out = report.write_report([done, running], tmp_path / "r.html")
    _, page = parse(out)
    assert page.compare_headers[1:] == ["done", "running"]
    assert all(page.figure_images[f"plot-{m}"] == ["svg"] for m in METRIC_PLOTS)


def test_missing_and_non_finite_values_are_left_out(tmp_path):
    history = make_history(4)
    history[0]["val_loss"] = history[0]["val_perplexity"] = None     # no validation set yet
    history[1]["train_loss"] = float("nan")                          # diverged batch
    history[2]["sample"] = None
    del history[3]["grad_norm"]                                      # older history format
    run = report.load_run(make_run(tmp_path / "r", history))
    assert run.best()["step"] in (200, 300, 400)
    assert run.history[1]["train_perplexity"] is None
    out = report.write_report([tmp_path / "r"], tmp_path / "r.html")
    _, page = parse(out)
    assert len(page.sample_cells) == 3


def test_resumed_run_repeating_steps_keeps_the_latest_entry(tmp_path):
    history = make_history(3)
    redo = dict(history[2], val_loss=1.0, sample="después de reanudar")
    run = report.load_run(make_run(tmp_path / "r", [history[2], history[0], history[1], redo]))
    assert [e["step"] for e in run.history] == [100, 200, 300]
    assert run.history[-1]["sample"] == "después de reanudar"


def test_runs_with_the_same_folder_name_are_named_by_path(tmp_path):
    a = make_run(tmp_path / "x" / "run", make_history(2))
    b = make_run(tmp_path / "y" / "run", make_history(2))
    runs = report.load_runs([a, b])
    assert [r.name for r in runs] == [str(a), str(b)]
    assert runs[0].colour != runs[1].colour
    with pytest.raises(UserError, match="given twice"):
        report.load_runs([a, a])


# =========================================================================== bad input

def _write(folder: Path, name: str, content: str) -> None:
    (folder / name).write_text(content, encoding="utf-8")


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "run folder not found"),
    (lambda d: d.write_text("x"), "is not a run folder"),
    (lambda d: d.mkdir(), "has no config.json"),
    (lambda d: (d.mkdir(), _write(d, "config.json", "{not json")), "not valid JSON"),
    (lambda d: (d.mkdir(), _write(d, "config.json", '{"model": 1}')), "is not a run config"),
    (lambda d: (make_run(d, None), _write(d, "history.json", "[{")), "not valid JSON"),
    (lambda d: (make_run(d, None), _write(d, "history.json", '{"step": 1}')), "expected a list"),
    (lambda d: (make_run(d, None), _write(d, "history.json", "[3]")), "is not an object"),
    (lambda d: (make_run(d, None), _write(d, "history.json", '[{"val_loss": 2.0}]')), "no valid 'step'"),
    (lambda d: (make_run(d, None), _write(d, "history.json", '[{"step": 1, "tokens_seen": "many"}]')),
     "non-numeric 'tokens_seen'"),
])
def test_unusable_run_folders_are_user_errors(tmp_path, setup, message):
    folder = tmp_path / "run"
    setup(folder)
    with pytest.raises(UserError, match=message):
        report.load_run(folder)


def test_cli_missing_run_folder_is_one_error_line(tmp_path):
    proc = run_cli("report", tmp_path / "no-such-run", "--out", tmp_path / "r.html")
    assert_user_error(proc)
    assert "run folder not found" in proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_cli_refuses_to_overwrite_a_run_file(tmp_path):
    run = make_run(tmp_path / "run", make_history(2))
    before = (run / "history.json").read_bytes()
    proc = run_cli("report", run, "--out", run / "history.json")
    assert_user_error(proc)
    assert (run / "history.json").read_bytes() == before


# =========================================================================== a real browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; "
                                             ".ci/run installs it)")
def test_chromium_renders_the_plots(two_run_report, tmp_path):
    """Headless chromium loads the page from disk and screenshots it (a few seconds; < 30 s)."""
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
         two_run_report.resolve().as_uri()],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000, "screenshot missing or nearly empty"

    pixels = imread(shot)[..., :3]                        # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (2000, 1200)
    assert (pixels.min(axis=-1) < 0.8).mean() > 0.02, "page looks blank"
    # Each run's colour (the plot lines; the table swatches alone are ~100 pixels).
    for hex_colour in report.RUN_COLOURS[:2]:
        rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255.0
        near = (np.abs(pixels - rgb).max(axis=-1) < 0.08).sum()
        assert near > 1500, f"few pixels in {hex_colour}: the plots did not render ({near})"
