"""`python main.py report runs/a [runs/b ...] --out report.html`: one self-contained HTML page.

The page compares training runs side by side: curves against tokens seen (loss,
perplexity, learning rate, gradient norm, throughput; every run overlaid), the
config and final metrics of each run in one table with differing rows
highlighted, and the text sampled at each evaluation. Plots are inline SVG drawn
by matplotlib without pyplot (no display needed); the page loads nothing from
anywhere else, so it can be mailed, archived or opened offline.

A run folder is what `train` writes: config.json (model, train, tokenizer,
corpus, versions) and history.json (one entry per evaluation). Both are written
atomically by training, so a report can be made while a run is in progress.
"""
from __future__ import annotations

import html
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from common import UserError, atomic_path, format_seconds, log, perplexity, read_json, write_text

# history.json of a run folder: one entry per evaluation with these keys, in this order
# (written by training.Trainer.evaluate_and_save). The numeric ones may be null (e.g. no
# validation set), and older runs may lack some.
HISTORY_KEYS = ("step", "epoch", "tokens_seen", "train_loss", "val_loss", "val_perplexity", "val_loss_by_corpus",
                "lr", "grad_norm", "tokens_per_second", "elapsed_seconds", "sample")
NUMERIC_FIELDS = tuple(k for k in HISTORY_KEYS if k not in ("step", "sample", "val_loss_by_corpus"))
LOSS_PNG_PLOTS = ("loss", "perplexity")   # the figures of a run folder's loss.png (write_loss_png)

# One figure per metric: (id, title, y label, [(history key, series label, line style)], y scale).
# Series label None = the run name alone. "auto" scale goes logarithmic when the data spans
# more than AUTO_LOG_SPAN (gradient norms start an order of magnitude above where they settle).
BY_CORPUS = "by corpus"     # a figure's series: one per corpus of a mixture (val_loss_by_corpus)
CORPUS_STYLES = ("-", "--", ":", "-.")
PLOTS = [
    ("loss", "Loss", "cross-entropy (nats / token)",
     [("train_loss", "train", "-"), ("val_loss", "validation", "--")], "linear"),
    ("perplexity", "Perplexity", "perplexity (log scale)",
     [("train_perplexity", "train", "-"), ("val_perplexity", "validation", "--")], "log"),
    ("val_by_corpus", "Validation loss by corpus", "cross-entropy (nats / token)", BY_CORPUS, "linear"),
    ("lr", "Learning rate", "learning rate", [("lr", None, "-")], "linear"),
    ("grad_norm", "Gradient norm", "gradient norm", [("grad_norm", None, "-")], "auto"),
    ("tokens_per_second", "Throughput", "tokens / second", [("tokens_per_second", None, "-")], "linear"),
]
AUTO_LOG_SPAN = 20.0
MAX_EXP_LOSS = 50.0          # exp() of a larger loss is not a meaningful perplexity; leave it out
LEGEND_INSIDE_UP_TO = 6      # more legend entries than this go beside the axes
MARKERS_UP_TO = 60           # draw point markers on curves with at most this many evaluations
# matplotlib's default cycle: the comparison table's swatches use the same colours as the plots.
RUN_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


@dataclass
class Run:
    path: Path
    name: str
    config: dict
    history: list[dict] = field(default_factory=list)   # sorted by step, one entry per step
    history_mtime: float | None = None
    colour: str = RUN_COLOURS[0]                          # the same in plots and tables

    def last(self, key):
        """The value of `key` in the latest evaluation that has it."""
        for entry in reversed(self.history):
            if _finite(entry.get(key)):
                return entry[key]
        return None

    def best(self) -> dict | None:
        """The evaluation with the lowest finite validation loss."""
        scored = [e for e in self.history if _finite(e.get("val_loss"))]
        return min(scored, key=lambda e: e["val_loss"]) if scored else None


# =========================================================================== loading

def load_run(folder: str | os.PathLike) -> Run:
    """Read and check one run folder; UserError with a clear line for anything unusable."""
    path = Path(folder)
    if not path.exists():
        raise UserError(f"run folder not found: {path}")
    if not path.is_dir():
        raise UserError(f"{path} is not a run folder (expected a folder written by `train`)")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path} has no config.json; is it a run folder written by `train`?")
    config = read_json(config_path, "run config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) \
            or not isinstance(config.get("train"), dict):
        raise UserError(f"{config_path} is not a run config (expected an object with "
                        f"'model' and 'train' objects); pass a folder written by `train`")

    history_path = path / "history.json"
    history, mtime = [], None
    if history_path.is_file():
        # Without history.json (training starts by writing config.json and adds the
        # history at its first evaluation) the run is shown as "no evaluations yet".
        history = _check_history(read_json(history_path, "run history"), history_path)
        mtime = history_path.stat().st_mtime
    return Run(path=path, name=path.resolve().name or str(path), config=config,
               history=history, history_mtime=mtime)


def _check_history(raw, where: Path) -> list[dict]:
    if not isinstance(raw, list):
        raise UserError(f"{where} is not a run history (expected a list of evaluations, "
                        f"got {type(raw).__name__})")
    by_step: dict[int, dict] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise UserError(f"{where}: evaluation #{i} is not an object")
        step = entry.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise UserError(f"{where}: evaluation #{i} has no valid 'step' (got {step!r})")
        clean = {"step": step}
        for key in NUMERIC_FIELDS:
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise UserError(f"{where}: evaluation #{i} (step {step}) has a non-numeric "
                                f"{key!r}: {value!r}")
            clean[key] = value
        clean["val_loss_by_corpus"] = _by_corpus(entry.get("val_loss_by_corpus"), where, i, step)
        clean["sample"] = _sample_text(entry.get("sample"))
        # Perplexities derived from losses where they are not stored.
        clean["train_perplexity"] = _exp(clean["train_loss"])
        if clean["val_perplexity"] is None:
            clean["val_perplexity"] = _exp(clean["val_loss"])
        # A resumed run may evaluate a step again: the later entry wins.
        by_step[step] = clean
    return [by_step[s] for s in sorted(by_step)]


def _by_corpus(value, where: Path, i: int, step: int) -> dict | None:
    """A mixture's validation losses by corpus name (None for a one-corpus run)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
            for k, v in value.items()):
        raise UserError(f"{where}: evaluation #{i} (step {step}) has a malformed 'val_loss_by_corpus': {value!r}")
    return value


def corpus_names(run: Run) -> list[str]:
    """The corpora of a mixture run, in the order of its first evaluation that names them."""
    names: list[str] = []
    for e in run.history:
        for name in e.get("val_loss_by_corpus") or {}:
            if name not in names:
                names.append(name)
    return names


def _sample_text(sample) -> str | None:
    if sample is None or isinstance(sample, str):
        return sample
    if isinstance(sample, list):
        return "\n\n".join(str(s) for s in sample)
    return json.dumps(sample, ensure_ascii=False)


def _exp(loss):
    """Perplexity for the plots: None where undefined or past MAX_EXP_LOSS."""
    ppl = perplexity(loss)
    return ppl if ppl is not None and loss <= MAX_EXP_LOSS else None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_runs(folders) -> list[Run]:
    runs = [load_run(f) for f in folders]
    seen = set()
    for run in runs:
        if run.path.resolve() in seen:
            raise UserError(f"run folder {run.path} is given twice")
        seen.add(run.path.resolve())
    # Same folder name in different places (runs/a, old/runs/a): name them by their paths.
    names = [r.name for r in runs]
    for i, run in enumerate(runs):
        if names.count(run.name) > 1:
            run.name = str(run.path)
        run.colour = RUN_COLOURS[i % len(RUN_COLOURS)]
    return runs


# =========================================================================== plots

def _lines(runs: list[Run], spec) -> list[tuple]:
    """The curves of one figure: (run, label, style, xs, ys) for every run and series with data."""
    _, _, _, series, scale = spec
    lines = []
    for run in runs:
        if series == BY_CORPUS:
            names = corpus_names(run)
            run_series = [(n, n, CORPUS_STYLES[i % len(CORPUS_STYLES)]) for i, n in enumerate(names)]
        else:
            run_series = series
        for key, label, style in run_series:
            value = (lambda e: (e.get("val_loss_by_corpus") or {}).get(key)) if series == BY_CORPUS \
                else (lambda e: e.get(key))
            points = [(e["tokens_seen"], value(e)) for e in run.history
                      if _finite(e.get("tokens_seen")) and _finite(value(e))]
            if scale != "linear":
                points = [(x, y) for x, y in points if y > 0]
            if points:
                xs, ys = zip(*points)
                name = label if not run.name else run.name if label is None else f"{run.name} ({label})"
                lines.append((run, name, style, xs, ys))
    return lines


def _draw(fig, ax, lines: list[tuple], spec) -> None:
    """One figure's curves, scale, labels and legend on `ax`."""
    from matplotlib.ticker import EngFormatter
    _, title, ylabel, _, scale = spec
    for run, label, style, xs, ys in lines:
        ax.plot(xs, ys, style, color=run.colour, linewidth=1.6,
                marker="o" if len(xs) <= MARKERS_UP_TO else None, markersize=3, label=label)
    values = [y for *_, ys in lines for y in ys]
    if scale == "log" or (scale == "auto" and min(values) > 0 and max(values) / min(values) > AUTO_LOG_SPAN):
        ax.set_yscale("log")
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel("tokens seen", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if len(lines) <= LEGEND_INSIDE_UP_TO:
        ax.legend(fontsize=8, frameon=False)
    else:                                        # many runs: beside the axes, not over the curves
        fig.legend(loc="outside right upper", fontsize=7, frameon=False)


def plot_svg(runs: list[Run], spec) -> str | None:
    """One figure as an inline <svg> element, or None when no run has data for it."""
    lines = _lines(runs, spec)
    if not lines:
        return None
    from matplotlib import rc_context
    from matplotlib.figure import Figure   # no pyplot: no display, no global figure state

    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    _draw(fig, fig.add_subplot(), lines, spec)
    buf = io.StringIO()
    # Text stays text (small, selectable); a salt per figure keeps the clip-path ids of
    # several inline SVGs in one page from colliding, and makes the output reproducible.
    fig_id = spec[0]
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": f"mini-llm-{fig_id}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]                                  # drop the XML prolog and doctype
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)  # RDF block with web URIs
    # matplotlib names groups figure_1, axes_1, ... in every figure: prefix the ids (and the
    # references to them) so that the ids stay unique in a page holding several SVGs.
    svg = re.sub(r'(\bid="|href="#|url\(#)', rf"\g<1>{fig_id}-", svg)
    return svg


def write_loss_png(history: list[dict], path: Path) -> None:
    """A run folder's loss.png: the report's loss and perplexity figures for that one run,
    side by side (headless, written atomically)."""
    from matplotlib.figure import Figure
    run = Run(path=path.parent, name="", config={}, history=_check_history(history, path))
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    specs = [spec for spec in PLOTS if spec[0] in LOSS_PNG_PLOTS]
    for ax, spec in zip(fig.subplots(1, len(specs)), specs):
        lines = _lines([run], spec)
        if lines:
            _draw(fig, ax, lines, spec)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


# =========================================================================== tables

def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _human(n) -> str:
    """1234567 -> '1.23M': token counts at a glance."""
    if not _finite(n):
        return "—"
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.3g}{suffix}"
    return f"{n:g}"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _final_metrics(run: Run) -> dict:
    if not run.history:
        return {"evaluations": "no evaluations yet"}
    best = run.best()
    updated = (datetime.fromtimestamp(run.history_mtime).strftime("%Y-%m-%d %H:%M")
               if run.history_mtime else None)
    last = run.history[-1]
    return {
        "evaluations": str(len(run.history)),
        "best val loss": _fmt(best["val_loss"]) if best else None,
        "best val perplexity": _fmt(best["val_perplexity"]) if best else None,
        "best at step": f"{best['step']:,}" if best else None,
        "last val loss": _fmt(run.last("val_loss")),
        **{f"last val loss, {name}": _fmt((run.history[-1].get("val_loss_by_corpus") or {}).get(name))
           for name in corpus_names(run)},
        "last train loss": _fmt(run.last("train_loss")),
        "steps": f"{last['step']:,}",
        "epoch": _fmt(last.get("epoch")),
        "tokens seen": _human(run.last("tokens_seen")),
        "elapsed": format_seconds(run.last("elapsed_seconds")) if run.last("elapsed_seconds") is not None else None,
        "tokens / s (last)": _human(run.last("tokens_per_second")),
        "history updated": updated,
    }


def _config_rows(run: Run, section: str) -> dict:
    part = run.config.get(section)
    return {k: _fmt(v, digits=6) for k, v in _flatten(part).items()} if isinstance(part, dict) else {}


def _data_rows(run: Run) -> dict:
    rows = {}
    tok, corpus = run.config.get("tokenizer"), run.config.get("corpus")
    if isinstance(tok, dict):
        rows["tokenizer"] = _fmt(tok.get("path"))
        rows["vocab size"] = _fmt(tok.get("vocab_size"))
        rows["tokenizer hash"] = _short_hash(tok.get("hash"))
    if isinstance(corpus, dict):
        rows["corpus"] = _fmt(corpus.get("path"))
        rows["corpus hash"] = _short_hash(corpus.get("hash"))
    for c in run.config.get("corpora") or []:
        if isinstance(c, dict):
            rows[f"corpus {c.get('name')}"] = (f"{_fmt(c.get('path'))}, weight {_fmt(c.get('weight'), 3)}, "
                                               f"{_human(c.get('tokens'))} tokens")
    init = run.config.get("init_from")
    if isinstance(init, dict):      # the lineage: where this run's first weights came from
        rows["initialised from"] = (f"{_fmt(init.get('path'))} ({_fmt(init.get('kind'))}, step "
                                    f"{_fmt(init.get('step'))}, sha256 {_short_hash(init.get('sha256'))})")
    versions = run.config.get("versions")
    if isinstance(versions, dict):
        rows.update({f"{k} version": _fmt(v) for k, v in versions.items()})
    return rows


def _short_hash(h) -> str:
    return h[:12] if isinstance(h, str) else _fmt(h)


def comparison_table(runs: list[Run]) -> str:
    """Runs as columns; sections of rows; rows whose values differ between runs highlighted."""
    sections = [
        ("Final metrics", [_final_metrics(r) for r in runs]),
        ("Model", [_config_rows(r, "model") for r in runs]),
        ("Training", [_config_rows(r, "train") for r in runs]),
        ("Data and versions", [_data_rows(r) for r in runs]),
    ]
    e = html.escape
    out = ['<table class="compare">', "<thead><tr><th></th>"]
    for run in runs:
        out.append(f'<th title="{e(str(run.path))}"><span class="swatch" '
                   f'style="background:{run.colour}"></span>{e(run.name)}</th>')
    out.append("</tr></thead>")
    bests = [r.best() for r in runs]
    best_losses = [b["val_loss"] for b in bests if b]
    best_loss = min(best_losses) if len(best_losses) > 1 else None
    for title, per_run in sections:
        keys = list(dict.fromkeys(k for rows in per_run for k in rows))
        if not keys:
            continue
        out.append(f'<tbody><tr class="section"><th colspan="{len(runs) + 1}">{e(title)}</th></tr>')
        for key in keys:
            cells = [rows.get(key) for rows in per_run]
            differs = len(runs) > 1 and len(set(cells)) > 1
            out.append(f'<tr class="differs"><th>{e(key)}</th>' if differs else f"<tr><th>{e(key)}</th>")
            for run_best, cell in zip(bests, cells):
                best = (best_loss is not None and key in ("best val loss", "best val perplexity")
                        and run_best is not None and run_best["val_loss"] == best_loss)
                cls = ' class="best"' if best else (' class="pending"' if cell == "no evaluations yet" else "")
                out.append(f"<td{cls}>{e(cell if cell is not None else '—')}</td>")
            out.append("</tr>")
        out.append("</tbody>")
    out.append("</table>")
    return "\n".join(out)


def samples_section(run: Run) -> str:
    e = html.escape
    head = (f'<h3><span class="swatch" style="background:{run.colour}"></span>{e(run.name)}</h3>')
    rows = [x for x in run.history if x.get("sample") is not None]
    if not rows:
        note = "no evaluations yet" if not run.history else "no samples recorded"
        return f'{head}\n<p class="note">{note}</p>'
    out = [head, '<table class="samples"><thead><tr><th class="num">step</th><th class="num">tokens seen</th>'
                 '<th class="num">val loss</th><th>sample</th></tr></thead><tbody>']
    for x in rows:
        out.append(f'<tr><td class="num">{x["step"]:,}</td><td class="num">{_human(x.get("tokens_seen"))}</td>'
                   f'<td class="num">{e(_fmt(x.get("val_loss")))}</td>'
                   f'<td class="sample">{e(x["sample"])}</td></tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


# =========================================================================== page

CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #222; background: #fafafa; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 24px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 36px 0 12px; padding-bottom: 4px; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; margin: 24px 0 8px; }
p.meta, p.note { color: #666; margin: 4px 0; }
nav a { margin-right: 14px; color: #1f5fa8; text-decoration: none; }
table { border-collapse: collapse; background: #fff; font-size: 0.92em; }
th, td { border: 1px solid #e2e2e2; padding: 4px 10px; text-align: left; vertical-align: top; }
table.compare { min-width: 50%; }
table.compare thead th { background: #f0f0f0; }
table.compare tbody th { font-weight: normal; color: #444; white-space: nowrap; }
table.compare td { font-variant-numeric: tabular-nums; word-break: break-word; }
table.compare tr.section th { background: #f6f6f6; font-weight: 600; color: #222; }
tr.differs td, tr.differs th { background: #fff5d6; }
td.best { font-weight: 700; color: #17692a; }
td.pending { color: #8a6d00; font-style: italic; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin-right: 6px; vertical-align: baseline; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; background: #fff; border: 1px solid #e2e2e2; border-radius: 4px; padding: 6px; }
figure svg { width: 100%; height: auto; display: block; }
table.samples { width: 100%; }
table.samples .num { width: 1%; white-space: nowrap; text-align: right; font-variant-numeric: tabular-nums; }
td.sample { white-space: pre-wrap; font-family: Georgia, "DejaVu Serif", serif; line-height: 1.5; }
.legend-note { font-size: 0.88em; color: #666; }
"""


def render(runs: list[Run]) -> str:
    e = html.escape
    names = ", ".join(r.name for r in runs)
    figures = []
    for spec in PLOTS:
        svg = plot_svg(runs, spec)
        if svg is None and spec[3] == BY_CORPUS:
            continue                             # no mixture among the runs: nothing to split
        body = svg if svg is not None else '<p class="note">no evaluations yet</p>'
        figures.append(f'<figure id="plot-{spec[0]}" aria-label="{e(spec[1])}">{body}</figure>')
    generated = datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mini-llm report: {e(names)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>Training report</h1>
<p class="meta">{len(runs)} run{"s" if len(runs) != 1 else ""}: {e(names)} · generated {generated}</p>
<nav><a href="#curves">Curves</a><a href="#runs">Runs side by side</a><a href="#samples">Samples</a></nav>

<section id="curves">
<h2>Curves against tokens seen</h2>
<p class="legend-note">Solid lines: training (the latest batches); dashed: validation.
Perplexity = exp(loss).</p>
<div class="plots">
{chr(10).join(figures)}
</div>
</section>

<section id="runs">
<h2>Runs side by side</h2>
<p class="legend-note">Highlighted rows differ between runs; the lowest validation loss is in bold green.</p>
{comparison_table(runs)}
</section>

<section id="samples">
<h2>Samples at each evaluation</h2>
{chr(10).join(samples_section(r) for r in runs)}
</section>
</main>
</body>
</html>
"""


def _refuse_run_file(runs: list[Run], out: Path) -> None:
    """Never overwrite a run's own files (history, config, a checkpoint) with the page."""
    if not out.exists():
        return
    for run in runs:
        inside = out.resolve().parent == run.path.resolve()
        if inside and out.suffix.lower() not in (".html", ".htm"):
            raise UserError(f"--out {out} is a file of run folder {run.path}; "
                            f"choose a .html path such as {run.path / 'report.html'}")


def write_report(folders, out: str | os.PathLike) -> Path:
    """Load the run folders, render the page, write it atomically to `out`; return its path."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'report.html'}")
    runs = load_runs(folders)
    _refuse_run_file(runs, out)
    page = render(runs)
    write_text(out, page)
    n_evals = sum(len(r.history) for r in runs)
    log.info(f"wrote {out} ({len(runs)} run{'s' if len(runs) != 1 else ''}, {n_evals} evaluations)")
    return out
