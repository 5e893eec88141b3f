"""`reasonloop report RUN [RUN ...] [--out FILE] [--png DIR]`: one self-contained HTML page of a run, or of
several runs overlaid on the same axes.

The page needs no network to open: every figure is an inline SVG drawn by matplotlib, and the sample
browser is a few lines of inline JavaScript over the samples embedded as JSON. It shows

- the runs (command, task, steps done, held-out pass@1 before -> after, state) and the resolved config
  (`config.yaml`; for several runs only the keys that differ);
- every metric of `metrics.jsonl` over steps (iterations for the self-improvement loops), grouped:
  rewards by component, held-out accuracy by level, optimisation, KL/entropy/length, throughput and the
  time split; monitor alerts (the steps where an `alerts/<name>` count rises) are red dotted lines on
  every curve and listed in a table;
- the before/after held-out table (`summary.json`, or `before.json` for an unfinished run);
- for `reasonloop search` runs, accuracy against compute per strategy (`summary.json` rows);
- for the self-improvement loops (`self_train`, `dpo`, `distill`), one section per iteration; for a staged
  `reasonloop r1` run, one section per stage (its held-out table per eval task and level, its wall time, its
  summary and its own training curves from the stage's sub-run);
- a browser of `samples.jsonl`: filter by correct/incorrect, level, step, run and text; prompt,
  completion, reward and its components side by side.

`--out FILE` (default RUN/report.html, the first run's) chooses the page; `--png DIR` also writes each
figure as a PNG file. See docs/report.md.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reasonloop.errors import UserError
from reasonloop.recipes.runs import RunInfo, describe
from reasonloop.train.run import BEFORE, MARKER, recorded_values

MAX_SAMPLES = 5000  # per run: more would make the page slow to open; an even spread is kept
LINESTYLES = ("-", "--", ":", "-.")


@dataclass
class RunData:
    path: Path
    name: str  # the label in legends and tables
    info: RunInfo
    config: dict[str, Any]  # dotted keys -> values, as config.yaml records them
    metrics: list[dict]  # metrics.jsonl rows
    samples: list[dict]  # samples.jsonl rows
    summary: dict | None
    before: dict | None  # held-out table before training
    after: dict | None


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file; torn or non-object lines (a run killed mid-write) are skipped."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_run(path: Path, name: str) -> RunData:
    if not path.is_dir():
        raise UserError(f"{path}: not a directory; give a run directory (one that holds {MARKER})")
    if not (path / MARKER).is_file() and not (path / "config.yaml").is_file():
        raise UserError(f"{path}: not a reasonloop run (it has neither {MARKER} nor config.yaml)")
    try:
        config = recorded_values(path / "config.yaml")
    except Exception:  # missing or damaged: the page shows what it can
        config = {}
    summary = _read_json(path / "summary.json")
    summary = summary if isinstance(summary, dict) else None
    before = (summary or {}).get("before") or _read_json(path / BEFORE)
    after = (summary or {}).get("after") or (summary or {}).get("eval")
    return RunData(path, name, describe(path), config, read_jsonl(path / "metrics.jsonl"),
                   read_jsonl(path / "samples.jsonl"), summary,
                   before if isinstance(before, dict) else None, after if isinstance(after, dict) else None)


def run_names(paths: list[Path]) -> list[str]:
    """Directory names, or the paths as given where two runs share a name."""
    names = [p.resolve().name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]


# -- metrics -------------------------------------------------------------------------------------------------

GROUPS: list[tuple[str, str, Callable[[str], bool]]] = [
    ("heldout", "Held-out accuracy by level", lambda k: k.startswith("eval/")),
    ("rewards", "Rewards by component", lambda k: k.startswith("reward/") or k in ("accuracy", "zero_variance_frac")),
    ("optim", "Optimisation", lambda k: k in ("loss", "grad_norm", "lr", "kl_coef", "bad_steps")
     or k.startswith(("policy/", "value/", "optim/", "sft/", "dpo/")) or "clip" in k),
    ("kl", "KL, entropy, length", lambda k: k in ("kl", "entropy", "truncation_rate", "repetition_rate")
     or k.startswith(("kl/", "entropy/", "length/"))),
    ("time", "Throughput and time split", lambda k: k.startswith("time/") or "per_s" in k or k.endswith("seconds")),
    ("other", "Other", lambda k: True),
]
SKIPPED = ("step", "iteration")


def numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(rows: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """metric -> [(step, value)] for every finite number logged (alert counters excluded: they are markers)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        step = row.get("step")
        if not numeric(step):
            continue
        for k, v in row.items():
            if k in SKIPPED or k.startswith("alerts/") or not numeric(v):
                continue
            out.setdefault(k, []).append((step, float(v)))
    return out


def alert_steps(rows: list[dict]) -> list[tuple[int, str]]:
    """(step, alert) wherever a cumulative `alerts/<name>` count rises (from 0 at the start)."""
    seen: dict[str, float] = {}
    out = []
    for row in rows:
        for k, v in row.items():
            if k.startswith("alerts/") and numeric(v):
                name = k[len("alerts/"):]
                if v > seen.get(name, 0):
                    out.append((row.get("step"), name))
                seen[name] = max(v, seen.get(name, 0))
    return out


def group_of(metric: str) -> str:
    return next(key for key, _, match in GROUPS if match(metric))


def heldout_split(metric: str) -> tuple[str, str]:
    """'eval/level/3/pass@1' -> ('pass@1', 'level 3'); 'eval/pass@1' -> ('pass@1', 'overall')."""
    parts = metric.split("/")
    if len(parts) == 4 and parts[1] == "level":
        return parts[3], f"level {parts[2]}"
    return "/".join(parts[1:]), "overall"


# -- figures -------------------------------------------------------------------------------------------------


@dataclass
class Figure:
    slug: str  # file name for --png and the element id
    title: str
    svg: str
    points: int  # data points plotted


class Figures:
    """Draws matplotlib figures to inline SVG (and PNG files with `png_dir`)."""

    def __init__(self, png_dir: Path | None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.png_dir = png_dir
        self.count = 0
        # path.simplify off: every logged point is a vertex of its line (the browser test counts them)
        self.style = {"svg.fonttype": "none", "svg.hashsalt": "reasonloop", "path.simplify": False, "font.size": 8,
                      "axes.titlesize": 9, "legend.fontsize": 7, "axes.grid": True, "grid.alpha": 0.3}

    def new(self, figsize=(4.6, 2.8)):
        with self.plt.rc_context(self.style):
            fig, ax = self.plt.subplots(figsize=figsize)
        return fig, ax

    def finish(self, fig, title: str, points: int) -> Figure:
        self.count += 1
        slug = f"{self.count:02d}-" + re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_")[:60]
        with self.plt.rc_context(self.style):
            fig.tight_layout()
            buf = io.StringIO()
            fig.savefig(buf, format="svg")
            if self.png_dir is not None:
                self.png_dir.mkdir(parents=True, exist_ok=True)
                fig.savefig(self.png_dir / f"{slug}.png", dpi=150)
        self.plt.close(fig)
        svg = buf.getvalue()
        svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE: the SVG sits inside HTML
        return Figure(slug, title, svg, points)

    def curves(self, title: str, lines: list[tuple[str, list[tuple[float, float]], dict]],
               alerts: list[tuple[float, str]], xlabel: str, legend: list[tuple[str, dict]] | None = None) -> Figure:
        """One axis; `lines` are (label, points, matplotlib style); alerts are red dotted verticals. `legend`
        ((label, style) pairs) replaces the per-line legend, outside the axes on the right."""
        fig, ax = self.new((5.6, 2.8) if legend else (4.6, 2.8))
        n = 0
        for i, (label, pts, style) in enumerate(lines):
            pts = sorted(pts)
            marker = "o" if len(pts) <= 40 else None
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, marker=marker, markersize=3,
                    linewidth=1.2, gid=f"f{self.count + 1}-series-{i}", **style)
            n += len(pts)
        for j, (step, _) in enumerate(sorted(set(alerts), key=lambda a: (a[0], a[1]))):
            ax.axvline(step, color="red", linestyle=":", linewidth=1, alpha=0.8, gid=f"f{self.count + 1}-alert-{j}")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if legend:
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], label=label, **style) for label, style in legend]
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        elif len(lines) > 1:
            ax.legend(loc="best", frameon=False)
        return self.finish(fig, title, n)


def metric_figures(runs: list[RunData], figs: Figures) -> dict[str, list[Figure]]:
    """group key -> its figures: one per metric (one per accuracy measure for held-out), runs overlaid."""
    per_run = [series(r.metrics) for r in runs]
    alerts = [(s, name) for r in runs for s, name in alert_steps(r.metrics) if numeric(s)]
    xlabel = "iteration" if any("iteration" in row for r in runs for row in r.metrics) else "step"
    colors = [f"C{i}" for i in range(10)]
    out: dict[str, list[Figure]] = {key: [] for key, _, _ in GROUPS}
    names = list(dict.fromkeys(k for s in per_run for k in s))
    # held-out: one figure per measure, a line per level (colour) and run (line style)
    measures: dict[str, list[str]] = {}
    for k in names:
        if group_of(k) == "heldout":
            measure, _ = heldout_split(k)
            measures.setdefault(measure, []).append(k)
    for measure, keys in measures.items():
        keys = sorted(keys, key=lambda k: (heldout_split(k)[1] == "overall", heldout_split(k)[1]))
        lines, legend = [], {}
        for ri, (run, s) in enumerate(zip(runs, per_run)):
            for ci, k in enumerate(keys):
                if k in s:
                    level = heldout_split(k)[1]
                    color = "black" if level == "overall" else colors[ci % 10]
                    style = {"color": color, "linestyle": LINESTYLES[ri % len(LINESTYLES)]}
                    lines.append((f"{run.name}: {level}", s[k], style))
                    legend[level] = {"color": color}
        if len(runs) > 1:  # colour = level, line style = run
            legend.update({run.name: {"color": "grey", "linestyle": LINESTYLES[ri % len(LINESTYLES)]}
                           for ri, run in enumerate(runs)})
        out["heldout"].append(figs.curves(f"held-out {measure}", lines, alerts, xlabel,
                                          legend=list(legend.items())))
    for k in names:
        group = group_of(k)
        if group == "heldout":
            continue
        lines = [(run.name, s[k], {"color": colors[ri % 10]}) for ri, (run, s) in enumerate(zip(runs, per_run)) if k in s]
        out[group].append(figs.curves(k, lines, alerts, xlabel))
    return out


def search_figures(runs: list[RunData], figs: Figures) -> list[Figure]:
    """Accuracy against compute for `reasonloop search` runs: generated and forward tokens per problem, log-x."""
    rows = [(r, row) for r in runs if r.info.command == "search" for row in (r.summary or {}).get("rows", [])
            if isinstance(row, dict) and numeric(row.get("accuracy"))]
    if not rows:
        return []
    out = []
    for x, xlabel in (("generated_tokens", "generated tokens per problem"),
                      ("forward_tokens", "forward tokens per problem (policy + PRM/ORM)")):
        lines: dict[str, list[tuple[float, float]]] = {}
        for run, row in rows:
            if numeric(row.get(x)) and row[x] > 0:
                label = str(row.get("strategy")) if len(runs) == 1 else f"{run.name}: {row.get('strategy')}"
                lines.setdefault(label, []).append((float(row[x]), float(row["accuracy"])))
        if not lines:
            continue
        fig, ax = figs.new((5.2, 3.2))
        n = 0
        for i, (label, pts) in enumerate(lines.items()):
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label,
                    linestyle="--" if "oracle" in label else "-", gid=f"f{figs.count + 1}-series-{i}")
            n += len(pts)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy")
        ax.set_title(f"accuracy vs {xlabel.split(' per')[0]}")
        ax.legend(loc="best", frameon=False)
        out.append(figs.finish(fig, f"search accuracy vs {x}", n))
    return out


# -- HTML ----------------------------------------------------------------------------------------------------


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def html_table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def runs_section(runs: list[RunData]) -> str:
    rows = []
    for r in runs:
        i = r.info
        steps = "-" if i.done is None and i.total is None else f"{i.done or 0}/{i.total if i.total is not None else '?'}"
        acc = (f"{i.before:.3f}" if i.before is not None else "-") + " → " + (f"{i.after:.3f}" if i.after is not None else "-")
        command = i.command + (f" ({i.preset})" if i.preset and i.preset != i.command else "")
        rows.append([r.name, command, i.task, steps, acc, i.state, str(r.path)])
    return html_table(["run", "command", "task", "steps", "held-out pass@1 (greedy) before → after", "state", "path"],
                      rows)


def config_section(runs: list[RunData]) -> str:
    if len(runs) == 1:
        cfg = runs[0].config
        return html_table(["key", "value"], [[k, v] for k, v in cfg.items()], "config") if cfg else "<p>no config.yaml</p>"
    keys = list(dict.fromkeys(k for r in runs for k in r.config))
    differ = [k for k in keys  # a key only some runs have differs too
              if len({json.dumps(r.config[k], default=str) if k in r.config else "(absent)" for r in runs}) > 1]
    if not differ:
        return "<p>The runs share every config key.</p>"
    rows = [[k, *[r.config.get(k, "(absent)") for r in runs]] for k in differ]
    return (f"<p>{len(differ)} of {len(keys)} keys differ; the others are the same in every run.</p>"
            + html_table(["key", *[r.name for r in runs]], rows, "config"))


def heldout_section(runs: list[RunData]) -> str:
    parts = []
    for r in runs:
        if r.before is None and r.after is None:
            continue
        groups = list(dict.fromkeys([*(r.before or {}), *(r.after or {})]))
        measures = list(dict.fromkeys(m for t in (r.before, r.after) if t for g in t.values()
                                      if isinstance(g, dict) for m in g if m != "n"))
        rows = []
        for g in groups:
            b, a = (r.before or {}).get(g, {}), (r.after or {}).get(g, {})
            cells = []
            for m in measures:
                bv, av = b.get(m), a.get(m)
                if r.before is not None and r.after is not None and r.after is not r.before:
                    cells.append(f"{_num(bv)} → {_num(av)}")
                else:
                    cells.append(_num(av if av is not None else bv))
            rows.append([g, a.get("n", b.get("n", "")), *cells])
        label = "before → after" if r.before is not None and r.after is not None else (
            "after" if r.after is not None else "before (the run has not finished)")
        parts.append(f'<div class="heldout"><h3>{esc(r.name)}: {label}</h3>'
                     + html_table(["group", "n", *measures], rows, "heldout") + "</div>")
    return "".join(parts) or "<p>No held-out table (summary.json / before.json) in these runs.</p>"


def _num(v: Any) -> str:
    return f"{v:.3f}" if numeric(v) else "-"


def alerts_section(runs: list[RunData]) -> str:
    rows = [[r.name, s, name] for r in runs for s, name in alert_steps(r.metrics)]
    if not rows:
        return "<p>No monitor alerts.</p>"
    return ("<p>Red dotted lines on the curves mark these steps.</p>"
            + html_table(["run", "step", "alert"], rows, "alerts"))


def iterations_section(runs: list[RunData]) -> str:
    parts = []
    for r in runs:
        rows = [row for row in r.metrics if "iteration" in row]
        if not rows:
            continue
        parts.append(f"<h3>{esc(r.name)}</h3>")
        for row in rows:
            it = row["iteration"]
            title = "base model (iteration 0)" if it == 0 else f"iteration {it}"
            shown = [[k, v] for k, v in row.items() if k not in SKIPPED and "/level/" not in k]
            levels = [[k, v] for k, v in row.items() if "/level/" in k and k.endswith("pass@1_greedy")]
            parts.append(f'<section class="iteration" data-iteration="{esc(it)}"><h4>{esc(title)}</h4>'
                         + html_table(["metric", "value"], shown + levels, "kv") + "</section>")
    return "".join(parts)


STAGE_TRAINING = ("reward/accuracy", "accuracy", "loss")  # a stage's training curve: the first of these it logged


def stages_section(runs: list[RunData], figs: Figures) -> str:
    """One section per stage of every `reasonloop r1` run (its `stages.json` records)."""
    parts = []
    for r in runs:
        records = _read_json(r.path / "stages.json")  # recipes/r1.py's STAGE_RECORDS
        if not isinstance(records, dict) or not records:
            continue
        parts.append(f"<h3>{esc(r.name)}</h3>")
        for number, (name, rec) in enumerate(records.items()):
            if not isinstance(rec, dict):
                continue
            held = rec.get("held_out") or {}
            tasks = [t for t, table in held.items() if isinstance(table, dict)]
            groups = list(dict.fromkeys(g for t in tasks for g in held[t]))
            rows = [[g, *[_num((held[t].get(g) or {}).get("pass@1_greedy")) for t in tasks]] for g in groups]
            title = "start model" if number == 0 and name == "start" else f"stage {number}: {name} ({rec.get('command')})"
            wall = rec.get("seconds")
            body = [f"<p>wall time {wall:.0f} s" + (" (resumed)" if rec.get("resumed") else "") + "</p>"
                    if numeric(wall) and wall > 0 else ""]
            body.append(html_table(["group", *[f"{t} pass@1 (greedy)" for t in tasks]], rows, "heldout") if rows
                        else "<p>not evaluated</p>")
            if rec.get("summary"):
                body.append("<details><summary>summary</summary>"
                            + html_table(["key", "value"], [[k, v] for k, v in rec["summary"].items()], "kv")
                            + "</details>")
            from reasonloop.recipes.r1 import stage_path  # only for r1 runs: it imports the training stack

            curves = series(read_jsonl(stage_path(r.path, number, name) / "metrics.jsonl"))
            shown = [k for k in STAGE_TRAINING if k in curves][:1]
            if len(curves.get("eval/pass@1_greedy", [])) > 1:
                shown.append("eval/pass@1_greedy")
            stage_figs = [figs.curves(f"{name}: {k}", [(k, curves[k], {"color": f"C{i}"})], [], "step")
                          for i, k in enumerate(shown)]
            if stage_figs:
                body.append(figure_grid(stage_figs))
            parts.append(f'<section class="stage" data-stage="{esc(name)}"><h4>{esc(title)}</h4>{"".join(body)}'
                         "</section>")
    return "".join(parts)


def search_section(runs: list[RunData], figures: list[Figure]) -> str:
    parts = [figure_grid(figures)]
    for r in runs:
        rows = (r.summary or {}).get("rows") if r.info.command == "search" else None
        if rows:
            header = list(dict.fromkeys(k for row in rows for k in row))
            parts.append(f"<h3>{esc(r.name)}</h3>" + html_table(header, [[row.get(k, "") for k in header] for row in rows]))
    return "".join(parts)


def figure_grid(figures: list[Figure]) -> str:
    return '<div class="grid">' + "".join(
        f'<figure class="plot" id="{esc(f.slug)}" data-points="{f.points}">{f.svg}</figure>' for f in figures) + "</div>"


def sample_rows(runs: list[RunData]) -> list[dict]:
    """Samples as the browser shows them: run, step, level, correct, prompt, completion, reward, components."""
    out = []
    known = {"step", "prompt", "completion", "reward", "level", "correct", "id", "mode", "answer"}
    for r in runs:
        rows = r.samples
        if len(rows) > MAX_SAMPLES:  # an even spread over the run
            rows = [rows[i * len(rows) // MAX_SAMPLES] for i in range(MAX_SAMPLES)]
        for row in rows:
            components = {k: v for k, v in row.items() if k not in known and numeric(v)}
            correct = row.get("correct")
            if correct is None and numeric(components.get("accuracy")):
                correct = components["accuracy"] > 0  # the verifier's component of the reward
            out.append({"run": r.name, "step": row.get("step", row.get("mode", "")), "level": row.get("level", ""),
                        "correct": None if correct is None else bool(correct), "prompt": str(row.get("prompt", "")),
                        "completion": str(row.get("completion", "")), "answer": str(row.get("answer", "")),
                        "reward": row.get("reward"), "components": components})
    return out


def build_html(runs: list[RunData], figs: Figures) -> str:
    search = search_figures(runs, figs)  # first: figures are numbered in page order
    groups = metric_figures(runs, figs)
    samples = sample_rows(runs)
    title = "reasonloop report: " + ", ".join(r.name for r in runs)
    sections: list[tuple[str, str, str]] = [("runs", "Runs", runs_section(runs)),
                                            ("heldout-table", "Held-out accuracy", heldout_section(runs))]
    if search:
        sections.append(("search", "Accuracy against compute", search_section(runs, search)))
    for key, label, _ in GROUPS:
        if groups[key]:
            sections.append((f"g-{key}", label, figure_grid(groups[key])))
    sections.append(("alerts", "Monitor alerts", alerts_section(runs)))
    its = iterations_section(runs)
    if its:
        sections.append(("iterations", "Iterations", its))
    stages = stages_section(runs, figs)
    if stages:
        sections.append(("stages", "Stages", stages))
    sections.append(("samples", f"Samples ({len(samples)})", SAMPLES_HTML if samples else "<p>No samples.jsonl.</p>"))
    config = config_section(runs)
    sections.append(("config", "Config" + (" (keys that differ)" if len(runs) > 1 else ""),
                     config if len(runs) > 1 else f"<details><summary>resolved config.yaml</summary>{config}</details>"))
    nav = " ".join(f'<a href="#{sid}">{esc(label)}</a>' for sid, label, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{esc(label)}</h2>{content}</section>' for sid, label, content in sections)
    # no "<" at all inside the script element: model text like "</script>" or "<!--<script" cannot end it early
    data = json.dumps(samples, default=str).replace("<", "\\u003c")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1><nav>{nav}</nav></header>"
            f"<main>{body}</main><script type=\"application/json\" id=\"samples-data\">{data}</script>"
            f"<script>{JS}</script></body></html>\n")


def write_report(paths: list[Path], out: Path | None = None, png_dir: Path | None = None) -> Path:
    """Write the page (default: the first run's report.html) and, with `png_dir`, every figure as PNG."""
    if not paths:
        raise UserError("give at least one run directory")
    runs = [load_run(p, n) for p, n in zip(paths, run_names(paths))]
    out = out if out is not None else paths[0] / "report.html"
    page = build_html(runs, Figures(png_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="reasonloop report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories (several: overlaid on the same axes)")
    parser.add_argument("--out", default=None, help="the HTML file (default: RUN/report.html of the first run)")
    parser.add_argument("--png", default=None, metavar="DIR", help="also write every figure as a PNG file into DIR")
    args = parser.parse_args(argv)
    out = write_report([Path(p) for p in args.runs], Path(args.out) if args.out else None,
                       Path(args.png) if args.png else None)
    print(f"report written to {out}" + (f"; figures as PNG in {args.png}" if args.png else ""))
    return 0


SAMPLES_HTML = """
<div class="filters">
  <label>run <select id="f-run"><option value="">all</option></select></label>
  <label>verdict <select id="f-correct"><option value="">all</option><option value="1">correct</option>
    <option value="0">incorrect</option></select></label>
  <label>level <select id="f-level"><option value="">all</option></select></label>
  <label>step <select id="f-step"><option value="">all</option></select></label>
  <label>text <input id="f-text" type="search" placeholder="in prompt or completion"></label>
  <span id="samples-count"></span>
</div>
<table class="samples"><thead><tr><th>run</th><th>step</th><th>level</th><th>verdict</th><th>prompt</th>
<th>completion</th><th>reward</th><th>components</th></tr></thead><tbody id="samples-body"></tbody></table>
"""

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:6px 16px;z-index:2}
h1{font-size:18px;margin:4px 0}nav a{margin-right:12px;font-size:13px}
main{padding:0 16px 40px}section{margin-top:18px;scroll-margin-top:80px}h2{font-size:16px;border-bottom:1px solid #ddd}
h3{font-size:14px}h4{font-size:13px;margin:8px 0 4px}
table{border-collapse:collapse;font-size:12px;background:#fff;margin:4px 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}th{background:#f0f0f0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:10px}
figure.plot{margin:0;background:#fff;border:1px solid #e4e4e4}figure.plot svg{width:100%;height:auto;display:block}
div.heldout,section.iteration{display:inline-block;vertical-align:top;margin-right:12px}
.filters{margin:6px 0;display:flex;gap:12px;flex-wrap:wrap;align-items:center}
table.samples td{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;max-width:420px}
tr.correct td:nth-child(4){color:#176f2c}tr.incorrect td:nth-child(4){color:#b00020}
"""

JS = r"""
(function () {
  const el = document.getElementById('samples-data');
  const rows = el ? JSON.parse(el.textContent) : [];
  const body = document.getElementById('samples-body');
  if (!body) return;
  const LIMIT = 200;
  const f = {run: document.getElementById('f-run'), correct: document.getElementById('f-correct'),
             level: document.getElementById('f-level'), step: document.getElementById('f-step'),
             text: document.getElementById('f-text')};
  function fill(select, values) {
    for (const v of values) { const o = document.createElement('option'); o.value = o.textContent = v; select.appendChild(o); }
  }
  const uniq = (key) => [...new Set(rows.map(r => String(r[key])).filter(v => v !== ''))];
  fill(f.run, uniq('run'));
  fill(f.level, uniq('level').sort((a, b) => a.localeCompare(b, undefined, {numeric: true})));
  fill(f.step, uniq('step').sort((a, b) => a.localeCompare(b, undefined, {numeric: true})));
  function cell(tr, text) { const td = document.createElement('td'); td.textContent = text; tr.appendChild(td); }
  function num(v) { return typeof v === 'number' ? (Math.round(v * 1000) / 1000).toString() : (v == null ? '' : String(v)); }
  function matches(r) {
    if (f.run.value && String(r.run) !== f.run.value) return false;
    if (f.correct.value && (r.correct === null || (r.correct ? '1' : '0') !== f.correct.value)) return false;
    if (f.level.value && String(r.level) !== f.level.value) return false;
    if (f.step.value && String(r.step) !== f.step.value) return false;
    const t = f.text.value.trim().toLowerCase();
    return !t || r.prompt.toLowerCase().includes(t) || r.completion.toLowerCase().includes(t);
  }
  function render() {
    const shown = rows.filter(matches);
    body.replaceChildren();
    for (const r of shown.slice(0, LIMIT)) {
      const tr = document.createElement('tr');
      tr.className = r.correct === null ? '' : (r.correct ? 'correct' : 'incorrect');
      cell(tr, r.run); cell(tr, r.step); cell(tr, r.level);
      cell(tr, r.correct === null ? '?' : (r.correct ? '✓ correct' : '✗ incorrect'));
      cell(tr, r.prompt); cell(tr, r.completion + (r.answer ? '\n[answer: ' + r.answer + ']' : ''));
      cell(tr, num(r.reward));
      cell(tr, Object.entries(r.components).map(([k, v]) => k + ' ' + num(v)).join('\n'));
      body.appendChild(tr);
    }
    document.getElementById('samples-count').textContent =
      shown.length + ' of ' + rows.length + ' samples match' + (shown.length > LIMIT ? ' (first ' + LIMIT + ' shown)' : '');
    body.dataset.matching = shown.length;
  }
  for (const k of Object.keys(f)) f[k].addEventListener(k === 'text' ? 'input' : 'change', render);
  render();
})();
"""
