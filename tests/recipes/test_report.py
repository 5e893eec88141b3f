"""`reasonloop report`: the page's parts from hand-made run directories (metric names as `train` logs them), the
command line, and the page opened in headless Chromium (no console errors, plots with data points, the sample
browser's filters, a screenshot kept as an artifact)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

from reasonloop.cli import main as cli_main
from reasonloop.errors import UserError
from reasonloop.recipes import report

EVAL = {"eval/level/1/pass@1_greedy": 1.0, "eval/level/2/pass@1_greedy": 0.5, "eval/pass@1_greedy": 0.75}
TABLE_BEFORE = {"level/1": {"n": 2, "pass@1_greedy": 1.0}, "level/2": {"n": 2, "pass@1_greedy": 0.5},
                "overall": {"n": 4, "pass@1_greedy": 0.75}}
TABLE_AFTER = {"level/1": {"n": 2, "pass@1_greedy": 1.0}, "level/2": {"n": 2, "pass@1_greedy": 1.0},
               "overall": {"n": 4, "pass@1_greedy": 1.0}}
# (step, level, accuracy component) of each sample row: 3 correct of 6 per run; level 2 has 2 correct of 4
TRAP = "<!--<script></script>"  # model text that would end an inline script early if embedded raw
SAMPLES = [(2, 1, 1.0), (2, 2, 0.0), (2, 2, 1.0), (4, 1, 0.0), (4, 2, 1.0), (4, 2, 0.0)]


def write_run(path: Path, command: str = "train", lr: float = 1e-4, rows: list[dict] | None = None,
              samples: bool = True, summary: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "reasonloop-run.json").write_text(json.dumps({"reasonloop": "0.1.0", "command": command,
                                                          "created": "2026-12-02T00:00:00+00:00"}))
    (path / "config.yaml").write_text(f"output_dir: {path}\nseed: 0\ntask: arithmetic\nsteps: 4\n"
                                      f"optim:\n  lr: {lr}\n  betas: [0.9, 0.999]\n")
    if rows is None:
        rows = [{"step": 0, **EVAL}]
        for step in range(1, 5):
            rows.append({"step": step, "reward/mean": 0.5 + 0.1 * step, "reward/accuracy": 0.4 + 0.1 * step,
                         "reward/format": 1.0, "loss": 0.1 / step, "policy/clip_frac_high": 0.0,
                         "grad_norm": 0.3, "lr": lr, "kl": 0.001 * step, "entropy": 0.1, "length/mean": 18.0,
                         "tokens_per_s": 340.0, "time/step": 6.9, "bad_steps": 0, "custom_thing": step,
                         "alerts/reward_spike": 1 if step >= 3 else 0, "note": "text", "nan_metric": float("nan")})
        rows.append({"step": 4, **{k: v + 0.25 if "level/1" not in k else v for k, v in EVAL.items()}})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "torn')
    if samples:
        (path / "samples.jsonl").write_text("".join(json.dumps(
            {"step": s, "level": lv, "prompt": f"Q: {s}+{lv}=?\n", "completion": f"<answer>{s + lv}</answer>" + TRAP * (s == 2),
             "reward": acc + 0.1, "accuracy": acc, "format": 1.0, "length": 0.0}) + "\n" for s, lv, acc in SAMPLES))
    if summary is None:
        summary = {"preset": "grpo", "before": TABLE_BEFORE, "after": TABLE_AFTER, "alerts": {"reward_spike": 1}}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_series_skip_alerts_and_non_numbers_and_alerts_mark_the_step_a_count_rises(tmp_path):
    run = report.load_run(write_run(tmp_path / "a"), "a")
    s = report.series(run.metrics)
    assert s["reward/mean"] == [(1, 0.6), (2, 0.7), (3, 0.8), (4, pytest.approx(0.9))]
    assert s["eval/pass@1_greedy"] == [(0, 0.75), (4, 1.0)]
    assert not any(k.startswith("alerts/") for k in s) and "note" not in s and "nan_metric" not in s
    assert report.alert_steps(run.metrics) == [(3, "reward_spike")]
    assert len(run.metrics) == 6  # the torn last line is skipped


def test_groups_follow_the_names_train_logs():
    assert [report.group_of(k) for k in ("reward/accuracy", "accuracy", "eval/level/3/pass@1", "loss",
                                         "policy/clip_frac_low", "lr", "kl", "entropy", "length/mean",
                                         "time/generation", "tokens_per_s", "custom_thing")] == \
        ["rewards", "rewards", "heldout", "optim", "optim", "optim", "kl", "kl", "kl", "time", "time", "other"]
    assert report.heldout_split("eval/level/3/pass@1") == ("pass@1", "level 3")
    assert report.heldout_split("eval/maj@4") == ("maj@4", "overall")


def test_the_config_of_several_runs_shows_only_the_keys_that_differ(tmp_path):
    a = report.load_run(write_run(tmp_path / "a", lr=1e-4), "a")
    b = report.load_run(write_run(tmp_path / "b", lr=1e-3), "b")
    html = report.config_section([a, b])
    assert "2 of 6 keys differ" in html  # output_dir and optim.lr; seed, task, steps, optim.betas are shared
    assert "<td>optim.lr</td><td>0.0001</td><td>0.001</td>" in html
    assert "<td>seed</td>" not in html and "optim.betas" not in html
    assert "<td>seed</td><td>0</td>" in report.config_section([a])


def test_samples_get_a_verdict_from_the_verifier_component(tmp_path):
    run = report.load_run(write_run(tmp_path / "a"), "a")
    rows = report.sample_rows([run])
    assert [r["correct"] for r in rows] == [True, False, True, False, True, False]
    assert rows[0]["components"] == {"accuracy": 1.0, "format": 1.0, "length": 0.0}
    assert rows[0]["level"] == 1 and rows[0]["step"] == 2 and rows[0]["run"] == "a"
    page = report.build_html([run], report.Figures(None))
    data = page.split('<script type="application/json" id="samples-data">')[1].split("</script>")[0]
    assert "<" not in data and json.loads(data)[0]["completion"] == "<answer>3</answer>" + TRAP


def test_report_command_writes_one_self_contained_page_and_the_pngs(tmp_path, capsys):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", lr=1e-3)
    assert cli_main(["report", str(a), str(b), "--png", str(tmp_path / "png")]) == 0
    out = a / "report.html"
    assert capsys.readouterr().out.strip() == f"report written to {out}; figures as PNG in {tmp_path / 'png'}"
    page = out.read_text()
    assert 'src="http' not in page and 'href="http' not in page and "<link" not in page  # nothing to fetch
    figures = page.count('<figure class="plot"')
    # held-out: one figure (pass@1_greedy); then one per other numeric metric: 14 in the rows above
    assert figures == 1 + 14
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert len(pngs) == figures and pngs[0] == "01-held_out_pass_1_greedy.png"
    for section in ("g-heldout", "g-rewards", "g-optim", "g-kl", "g-time", "g-other", "alerts", "samples"):
        assert f'<section id="{section}">' in page
    assert "<td>a</td><td>3</td><td>reward_spike</td>" in page  # the alert table
    assert "0.750 → 1.000" in page  # the before/after table


def test_search_runs_plot_accuracy_against_compute_and_loops_get_a_section_per_iteration(tmp_path):
    rows = [{"strategy": "majority", "n": n, "accuracy": acc, "generated_tokens": 20.0 * n,
             "forward_tokens": 50.0 * n, "level/1": 1.0} for n, acc in ((1, 0.4), (2, 0.5), (4, 0.6))]
    search = write_run(tmp_path / "search", command="search", rows=[], samples=False,
                       summary={"model": "tiny", "task": "arithmetic", "rows": rows})
    loop_rows = [{"step": i, "iteration": i, "kept": 10 * i, "eval/pass@1_greedy": 0.4 + 0.1 * i} for i in range(3)]
    loop = write_run(tmp_path / "loop", command="self_train", rows=loop_rows, samples=False,
                     summary={"before": TABLE_BEFORE, "after": TABLE_AFTER})
    out = report.write_report([search, loop], tmp_path / "r.html")
    page = out.read_text()
    assert '<section id="search">' in page and "<td>majority</td><td>4</td><td>0.6</td>" in page
    assert 'id="01-search_accuracy_vs_generated_tokens" data-points="3"' in page
    assert [f'data-iteration="{i}"' in page for i in range(4)] == [True, True, True, False]
    assert "<p>No samples.jsonl.</p>" in page


def test_an_r1_run_gets_a_section_per_stage_with_its_held_out_table_and_curves(tmp_path):
    held = {"arithmetic": TABLE_BEFORE, "code_arith": {"overall": {"n": 4, "pass@1_greedy": 0.25}}}
    records = {"start": {"name": "start", "command": "", "seconds": 0.0, "held_out": held},
               "cold_start": {"name": "cold_start", "command": "sft", "seconds": 68.4, "resumed": True,
                              "summary": {"steps": 2}, "held_out": {"arithmetic": TABLE_AFTER}},
               "rejection": {"name": "rejection", "command": "rejection_sample", "seconds": 30.0, "summary": {"kept": 7}}}
    run = write_run(tmp_path / "r1", command="r1", rows=[{"step": i, "stage": n, "seconds": r["seconds"]}
                                                         for i, (n, r) in enumerate(records.items())],
                    samples=False, summary={"stages": records})
    (run / "stages.json").write_text(json.dumps(records))
    sft_rows = [{"step": 0, "eval/pass@1_greedy": 0.75}, {"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25},
                {"step": 2, "eval/pass@1_greedy": 1.0}]
    write_run(run / "stages" / "01-cold_start", command="sft", rows=sft_rows, samples=False, summary={})
    page = report.write_report([run], tmp_path / "r.html").read_text()
    assert '<section id="stages">' in page
    assert [f'data-stage="{n}"' in page for n in records] == [True, True, True]
    start = page[page.index('data-stage="start"'):page.index('data-stage="cold_start"')]
    assert "<th>arithmetic pass@1 (greedy)</th><th>code_arith pass@1 (greedy)</th>" in start
    assert "<td>level/2</td><td>0.500</td><td>-</td>" in start and "<td>overall</td><td>0.750</td><td>0.250</td>" in start
    cold = page[page.index('data-stage="cold_start"'):page.index('data-stage="rejection"')]
    assert "stage 1: cold_start (sft)" in cold and "wall time 68 s (resumed)" in cold
    assert "<td>level/2</td><td>1.000</td>" in cold and "<td>steps</td><td>2</td>" in cold
    assert "cold_start_loss" in cold and 'data-points="2"' in cold  # its training curve, from its sub-run
    assert "cold_start_eval_pass_1_greedy" in cold  # held-out logged twice: a curve too
    rejection = page[page.index('data-stage="rejection"'):]
    assert "<p>not evaluated</p>" in rejection and "<td>kept</td><td>7</td>" in rejection


def test_what_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError) as exc:
        report.write_report([tmp_path / "plain"])
    assert str(exc.value) == f"{tmp_path / 'plain'}: not a reasonloop run (it has neither reasonloop-run.json nor config.yaml)"
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == (f"reasonloop report: error: {tmp_path / 'missing'}: not a directory; "
                                               "give a run directory (one that holds reasonloop-run.json)")


# -- in a real browser ---------------------------------------------------------------------------------------------

CHECK_PLOTS = """(() => [...document.querySelectorAll('figure.plot')].map(f => ({
  id: f.id, expected: +f.dataset.points,
  vertices: [...f.querySelectorAll('g[id*="-series-"] path')].filter(p => !p.closest('defs')).reduce(
      (n, p) => n + (p.getAttribute('d') || '').split(/[ML]/).filter(s => s.trim()).length, 0),
  markers: f.querySelectorAll('g[id*="-series-"] use').length,
  alerts: f.querySelectorAll('g[id*="-alert-"]').length,
  height: f.getBoundingClientRect().height})))()"""


def apply_filters(browser, **values) -> tuple[int, int, str]:
    """Set the sample browser's filters as a user would (value + change/input event); (rows shown, matching, text)."""
    js = "".join(f"""{{const e = document.getElementById('f-{k}'); e.value = {json.dumps(v)};
                     e.dispatchEvent(new Event('{'input' if k == 'text' else 'change'}'));}}""" for k, v in values.items())
    return tuple(browser.evaluate(f"""(() => {{ {js}
        const b = document.getElementById('samples-body');
        return [b.rows.length, +b.dataset.matching, document.getElementById('samples-count').textContent]; }})()"""))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow  # starts a browser; the page's parts are checked without one above. CI runs it
@pytest.mark.ci
def test_the_page_in_headless_chromium(tmp_path):
    from cdp_browser import Browser, find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (`./dev.sh test` installs it with apt-get where it runs as root)")
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", lr=1e-3)
    page = report.write_report([a, b], tmp_path / "report.html")
    browser = Browser(binary, Path(tempfile.mkdtemp(dir=tmp_path)), width=1400, height=900)
    try:
        browser.open(page.resolve().as_uri())
        assert browser.errors == []
        plots = browser.evaluate(CHECK_PLOTS)
        assert len(plots) == 15
        for p in plots:  # every data point is drawn: two runs of 5 (held-out: 2 runs x 3 lines x 2) points
            assert p["vertices"] == p["markers"] == p["expected"] > 0, p  # a line through each, a marker on each
            assert p["alerts"] == 1 and p["height"] > 100, p  # the alert at step 3, on every curve
        assert apply_filters(browser) == (12, 12, "12 of 12 samples match")
        assert apply_filters(browser, correct="1") == (6, 6, "6 of 12 samples match")
        assert apply_filters(browser, correct="1", level="2") == (4, 4, "4 of 12 samples match")
        assert apply_filters(browser, correct="0", level="2", step="4") == (2, 2, "2 of 12 samples match")
        verdicts = browser.evaluate("[...document.querySelectorAll('#samples-body td:nth-child(4)')].map(t => t.textContent)")
        assert verdicts == ["✗ incorrect", "✗ incorrect"]
        assert apply_filters(browser, correct="0", level="2", step="4", run="b") == (1, 1, "1 of 12 samples match")
        assert apply_filters(browser, correct="", level="", run="", step="2")[:2] == (6, 6)
        completions = browser.evaluate("[...document.querySelectorAll('#samples-body td:nth-child(6)')].map(t => t.textContent)")
        assert completions[:2] == ["<answer>3</answer>" + TRAP, "<answer>4</answer>" + TRAP]  # shown as text
        assert apply_filters(browser, correct="", level="", step="", run="", text="4+2") == (4, 4, "4 of 12 samples match")
        apply_filters(browser, text="")
        browser.evaluate("document.getElementById('g-heldout').scrollIntoView()")
        shot = browser.screenshot(tmp_path / "report.png")
        assert browser.errors == []
    finally:
        browser.close()
    assert png_size(shot) == (1400, 900) and shot.stat().st_size > 20_000  # a rendered page, not a blank one
    artifacts = os.environ.get("REASONLOOP_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "report.png")


def screenshot_report(run_dirs: list[Path], out: Path, width: int = 1280, height: int = 820) -> Path:
    """The report of real runs, opened and checked as above, its top captured: how docs/img/report.png is made
    (`python tests/recipes/test_report.py RUN [RUN ...] docs/img/report.png`)."""
    from cdp_browser import Browser, find_chromium

    with tempfile.TemporaryDirectory() as tmp:
        page = report.write_report(run_dirs, Path(tmp) / "report.html")
        browser = Browser(find_chromium() or "chromium", Path(tmp) / "profile", width=width, height=height)
        try:
            browser.open(page.resolve().as_uri())
            plots = browser.evaluate(CHECK_PLOTS)
            assert plots and all(p["vertices"] == p["expected"] > 0 for p in plots), plots
            browser.screenshot(out)
            assert browser.errors == [], browser.errors
        finally:
            browser.close()
    return out


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    print(screenshot_report([Path(p) for p in sys.argv[1:-1]], Path(sys.argv[-1])))
