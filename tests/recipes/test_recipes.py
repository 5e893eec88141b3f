"""End-to-end recipe runs on the shipped tiny model: SFT learns, eval reports, runs leave their files."""

from __future__ import annotations

import json

import pytest
import torch

from reasonloop.config import load_config
from reasonloop.models.loading import resolve_model_path
from reasonloop.recipes import evaluate as eval_recipe
from reasonloop.recipes import sft


def test_shipped_model_is_a_plain_hf_directory():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path("embedded")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "llama"
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 1e7
    assert tok.decode(tok("Q: 1+2=?\n")["input_ids"]) == "Q: 1+2=?\n"


def test_sft_lowers_the_loss_and_raises_held_out_accuracy(tmp_path):
    cfg = load_config(sft.Config, [
        "task=arithmetic:2", "steps=30", "batch_size=16", "micro_batch_size=8", "optim.lr=5e-4",
        "task_records=480", "eval_n=48", "eval_every=0", "save_every=0", f"output_dir={tmp_path}", "seed=1",
    ])
    result = sft.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    before = result["before"]["overall"]["pass@1_greedy"]
    after = result["after"]["overall"]["pass@1_greedy"]
    assert after >= before + 0.15, (before, after)
    for name in ("config.yaml", "summary.json", "model/config.json", "model/model.safetensors"):
        assert (tmp_path / name).exists(), name
    assert any((tmp_path / "tb").iterdir())


def test_sft_skips_malformed_rows_and_reads_jsonl(tmp_path, caplog):
    data = tmp_path / "data.jsonl"
    good = {"prompt": "Q: 1+1=?\n", "completion": "<think>1+1=2</think><answer>2</answer>"}
    data.write_text("\n".join(json.dumps(r) for r in [good, {"prompt": "x"}, {"prompt": 3, "completion": "y"}, good]))
    cfg = load_config(sft.Config, [f"data={data}", "steps=2", "batch_size=2", "eval_n=5", "eval_every=0",
                                   "save_every=0", f"output_dir={tmp_path / 'run'}"])
    records = sft.load_records(cfg, task=None)
    assert records == [good, good]
    assert "skipped 2 of 4 rows" in caplog.text


def test_eval_writes_summary_and_samples_per_level(tmp_path):
    cfg = load_config(eval_recipe.Config, ["n=20", "k=4", f"output_dir={tmp_path}", "sampling.max_new_tokens=48"])
    summary = eval_recipe.run(cfg)
    assert set(summary) == {f"level/{lv}" for lv in range(1, 6)} | {"overall"}
    for group in summary.values():
        assert group["pass@1"] <= group["pass@4"] + 1e-9
        assert 0 <= group["pass@1_greedy"] <= 1 and 0 <= group["maj@4"] <= 1
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["eval"]["overall"]["n"] == 20
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 20 * (1 + 4)
    assert {s["mode"] for s in samples} == {"greedy", "sampled"}


def test_eval_against_a_baseline_run_reports_paired_differences(tmp_path):
    args = ["n=12", "k=2", "sampling.max_new_tokens=48"]
    eval_recipe.run(load_config(eval_recipe.Config, [*args, f"output_dir={tmp_path / 'a'}"]))
    eval_recipe.run(load_config(eval_recipe.Config, [*args, f"output_dir={tmp_path / 'b'}", f"baseline={tmp_path / 'a'}"]))
    diffs = json.loads((tmp_path / "b" / "summary.json").read_text())["vs_baseline"]["differences"]
    # the same model, problems and seed: every sample agrees, so every difference and interval is 0
    assert [d["metric"] for d in diffs] == ["pass@1_greedy", "pass@1", "pass@2"]
    assert all(d["n"] == 12 and d["baseline"] == d["other"] and d["lo"] == d["hi"] == 0 for d in diffs)


def test_eval_with_a_baseline_that_is_not_an_eval_run_is_a_config_error(tmp_path):
    from reasonloop.config import ConfigError

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "samples.jsonl").write_text('{"prompt": "no verdicts here"}\n')
    for baseline, message in [(tmp_path / "none", "no samples.jsonl there"), (tmp_path / "bad", "not an eval run")]:
        with pytest.raises(ConfigError, match=message):
            eval_recipe.run(load_config(eval_recipe.Config, ["n=4", "k=0", f"output_dir={tmp_path / 'out'}",
                                                             f"baseline={baseline}"]))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["n=0", "k=-1", "model.dtype=float8", "sampling.top_p=0"])
def test_eval_rejects_bad_values(bad):
    from reasonloop.config import ConfigError

    with pytest.raises(ConfigError):
        load_config(eval_recipe.Config, [bad])


def test_sft_killed_and_resumed_ends_with_the_same_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    args = ["task=arithmetic:2", "steps=4", "save_every=2", "batch_size=8", "micro_batch_size=4",
            "task_records=20", "eval_n=4", "eval_every=0"]
    straight = sft.run(load_config(sft.Config, [*args, f"output_dir={tmp_path / 'a'}"]))

    cfg = load_config(sft.Config, [*args, f"output_dir={tmp_path / 'b'}"])
    real = sft.supervised_step
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed at step 3")
        return real(*a, **k)

    monkeypatch.setattr(sft, "supervised_step", dying)
    with pytest.raises(KeyboardInterrupt):
        sft.run(cfg)
    monkeypatch.setattr(sft, "supervised_step", real)
    result = sft.run(cfg)
    assert result["before"] == straight["before"]  # kept across the resume (read back, not re-evaluated)
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_sft_with_a_chunked_output_layer_takes_the_same_step(nano_model_dir, tmp_path):
    """forward.logit_chunk: the same loss, and the same weights after a step, as from the model's own logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonloop.config import ConfigError
    from reasonloop.models.forward import ForwardConfig, encode_pairs
    from reasonloop.train.supervised import supervised_step

    tok = AutoTokenizer.from_pretrained(nano_model_dir)
    batch = encode_pairs(tok, ["Q: 1+2=?\n", "Q: 7-5=?\n", "Q: 9=?\n"],
                         ["<think>1+2=3</think><answer>3</answer>", "<answer>2</answer>", "9"])
    results = []
    for chunk in (0, 4):
        model = AutoModelForCausalLM.from_pretrained(nano_model_dir)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # AdamW's first step, ~lr * sign(g), would magnify rounding
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        metrics = supervised_step(model, batch, 2, optimizer, scheduler, 1.0, forward=ForwardConfig(logit_chunk=chunk))
        results.append((metrics, model.state_dict()))
    (plain, w0), (chunked, w1) = results
    assert chunked["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert chunked["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4) and plain["grad_norm"] > 1e-3
    for name, w in w0.items():
        torch.testing.assert_close(w1[name], w, atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(ConfigError, match="forward.logit_chunk with label_smoothing"):
        load_config(sft.Config, ["forward.logit_chunk=8", "label_smoothing=0.1"])
