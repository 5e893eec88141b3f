"""Speed II benchmarks: forced completion lengths, the workload matrix's cells, the race's bookkeeping,
and both run end to end in tiny form (TRL is the optional extra these two compare against)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reasonloop.bench import Config
from reasonloop.bench.matrix import CELLS, cell_config, run_cell
from reasonloop.bench.race import Side
from reasonloop.bench.timing import peak_rss_mb, reset_peak_rss
from reasonloop.config import ConfigError, load_config
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.sampler import TorchSampler

PROMPTS = ["Q: 1+2=?\n", "Q: 13+4-5=?\n"]


def _eos_favoured(model, tokenizer):
    """The nano model with EOS's output row set to twice the row of the token it greedily emits first
    (positive logit), so that without min_new_tokens rows stop at once. EOS is never an input here, so the
    tied input embedding changing with it does not matter."""
    first = TorchSampler(model, tokenizer).generate(PROMPTS, 1, SamplingConfig(temperature=0.0, max_new_tokens=1))
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] = 2.0 * model.lm_head.weight[first.completion_ids[0, 0]]
    return model


@pytest.mark.parametrize("static_cache,fused_decode", [(True, True), (True, False), (False, False)])
def test_min_new_tokens_forces_lengths_and_equals_transformers_greedy(nano_model_dir, tokenizer, static_cache,
                                                                    fused_decode):
    from transformers import AutoModelForCausalLM

    model = _eos_favoured(AutoModelForCausalLM.from_pretrained(nano_model_dir).eval(), tokenizer)
    free = TorchSampler(model, tokenizer, static_cache=static_cache, fused_decode=fused_decode)
    forced = TorchSampler(model, tokenizer, static_cache=static_cache, fused_decode=fused_decode, min_new_tokens=12)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
    assert free.generate(PROMPTS, 1, greedy).completion_mask.sum(-1).max() < 12  # EOS does come early
    batch = forced.generate(PROMPTS, 1, greedy)
    assert batch.completion_mask.tolist() == [[1] * 12] * 2
    assert not (batch.completion_ids == tokenizer.eos_token_id).any()
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    with torch.no_grad():
        hf = model.generate(**enc, do_sample=False, max_new_tokens=12, min_new_tokens=12,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert batch.completion_ids.tolist() == hf[:, enc["input_ids"].shape[1]:].tolist()
    sampled = forced.generate(PROMPTS, 3, SamplingConfig(temperature=1.0, max_new_tokens=12),
                              torch.Generator().manual_seed(0))
    assert sampled.completion_mask.sum().item() == 6 * 12


def test_min_new_tokens_below_the_limit_lets_rows_stop_after_it(nano_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = _eos_favoured(AutoModelForCausalLM.from_pretrained(nano_model_dir).eval(), tokenizer)
    batch = TorchSampler(model, tokenizer, min_new_tokens=5).generate(
        PROMPTS, 4, SamplingConfig(temperature=1.0, max_new_tokens=20), torch.Generator().manual_seed(1))
    lengths = batch.completion_mask.sum(-1)
    assert lengths.min() >= 6  # five forced tokens, then the earliest EOS is the sixth
    assert lengths.min() < 20  # and EOS is allowed again after them
    assert not (batch.completion_ids[:, :5] == tokenizer.eos_token_id).any()


def test_matrix_cells_shrink_the_batch_as_they_grow():
    cfg = load_config(Config, ["matrix=true"])
    assert (cfg.matrix_sizes, cfg.matrix_lengths, cfg.matrix_part) == (["tiny", "small", "base"], [64, 256, 1024], "all")
    small = cell_config(cfg, "tiny", 64)
    assert (small.model, small.max_new_tokens, small.prompts, small.group_size, small.micro_batch_size) == (
        "tiny", 64, 4, 4, 16)
    big = cell_config(cfg, "base", 1024)
    assert (big.prompts, big.group_size, big.micro_batch_size, big.warmup, big.steps) == (1, 2, 2, 0, 1)
    assert len(CELLS) == 9
    wide = cell_config(load_config(Config, ["matrix=true", "matrix_batch=[8,8]"]), "base", 1024)
    assert (wide.prompts, wide.group_size, wide.micro_batch_size, wide.warmup, wide.steps) == (8, 8, 32, 0, 1)
    with pytest.raises(ConfigError, match="matrix_part"):
        load_config(Config, ["matrix_part=some"])
    for bad in ("[8]", "[0,8]", "[8,1]"):
        with pytest.raises(ConfigError, match="matrix_batch"):
            load_config(Config, [f"matrix_batch={bad}"])


def test_race_side_reaches_the_target_at_the_first_evaluation_at_or_above_it():
    side = Side("x", samples_per_step=128)
    side.steps, side.train_s, side.overhead_s = 10, 5.0, 0.5
    side.record(0.70, 0.75)
    side.steps, side.train_s = 20, 10.0
    side.record(0.75, 0.75)
    side.steps, side.train_s = 30, 15.0
    side.record(0.80, 0.75)
    assert side.reached == {"step": 20, "train_s": 10.0, "wall_s": 10.5, "samples": 2560, "pass@1_greedy": 0.75}
    assert side.summary()["final_pass@1_greedy"] == 0.80


def test_reset_peak_rss_forgets_an_earlier_peak():
    block = np.ones(40_000_000)  # 305 MiB, touched
    high = peak_rss_mb()
    del block
    assert reset_peak_rss()
    assert peak_rss_mb() < high - 200


def test_a_matrix_cell_times_both_frameworks_at_forced_lengths(tmp_path):
    pytest.importorskip("trl")
    cfg = load_config(Config, ["model=nano", "max_new_tokens=8", "prompts=2", "group_size=2", "warmup=0", "steps=1",
                               "micro_batch_size=4", "only=cell"])
    res = run_cell(cfg, tmp_path)
    assert res["sampler"]["tokens"] == 2 * 2 * 8
    assert res["grpo"]["reasonloop"]["completion_tokens"] == 2 * 2 * 8
    assert res["grpo"]["speedup_vs_trl"] > 0 and res["sampler"]["matmul_bound_tokens_per_s"] > 0


def test_the_race_runs_both_trainers_in_tiny_form(tmp_path, capsys):
    pytest.importorskip("trl")
    from reasonloop.bench import race

    cfg = load_config(Config, ["race=true", "model=nano", "race_max_steps=2", "race_eval_every=1", "race_eval_n=4",
                               "race_prompts=2", "group_size=2", "micro_batch_size=4", "max_new_tokens=8",
                               "race_target=1.0"])
    res = race.run(cfg, tmp_path)
    assert [p["step"] for p in res["reasonloop"]["curve"]] == [0, 1, 2]
    assert [p["step"] for p in res["trl"]["curve"]] == [0, 1, 2]
    assert res["reasonloop"]["curve"][0] == res["trl"]["curve"][0]  # the same start, evaluated once
    assert res["trl"]["curve"][2]["samples"] == 2 * 2 * 2
    assert "race: target 1.0 reached by reasonloop" in capsys.readouterr().out


def test_gemm_replay_with_distinct_reuses_that_many_tensor_sets_in_turn():
    from reasonloop.bench.timing import _replay, gemm_replay_seconds

    pool: dict = {}
    calls = [_replay("aten::mm", [[4, 8], [8, 3]], torch.device("cpu"), pool, 2) for _ in range(5)]
    assert len(pool[("aten::mm", ((4, 8), (8, 3)), torch.float32)]["calls"]) == 2
    assert calls[0] is calls[2] is calls[4] and calls[1] is calls[3] and calls[0] is not calls[1]
    assert calls[0]().shape == (4, 3)
    a, b = torch.randn(16, 16), torch.randn(16, 16)
    assert gemm_replay_seconds(lambda: [a @ b for _ in range(50)], 2, torch.device("cpu"), distinct=4) > 0
