"""`reasonloop pretrain`: both corpora build loadable models; the code corpus starts from tiny-arith."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from reasonloop.config import ConfigError, load_config
from reasonloop.tasks import make_task
from reasonloop.models.loading import ASSETS, ModelConfig, load_policy, model_label, resolve_model_path
from reasonloop.recipes import pretrain
from reasonloop.sandbox import NAMESPACES, isolation_level


def _first_loss(run_dir) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in rows if "loss" in r)


def _run(tmp_path, name: str, *args: str):
    out = tmp_path / name
    cfg = load_config(pretrain.Config, [f"output_dir={out}", "steps=2", "batch_size=8", "micro_batch_size=8",
                                        "corpus_size=64", "eval_every=100", "eval_per_level=1", "threads=1", *args])
    return out, pretrain.run(cfg)


def test_arithmetic_corpus_builds_a_fresh_model(tmp_path):
    out, result = _run(tmp_path, "arith", "size=nano")
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert sum(p.numel() for p in model.parameters()) == result["parameters"] < 200_000  # nano, not the asset
    assert set(result["eval"]) >= {"level/1", "overall"}
    assert _first_loss(out) > 3.0  # a random model over a ~100-token vocabulary starts near ln(105) = 4.65


@pytest.mark.skipif(isolation_level() != NAMESPACES, reason="the code corpus evaluates in the sandbox")
def test_code_corpus_continues_from_tiny_arith(tmp_path):
    out, result = _run(tmp_path, "code", "corpus=code", "optim.lr=1e-12")
    arith = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-arith"))
    trained = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    for (name, a), b in zip(arith.state_dict().items(), trained.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-8), name  # two steps at lr 1e-12 leave tiny-arith's weights
    assert set(result["eval"]) == {"level/1", "level/2", "level/3", "level/4", "overall"}


def test_layers_replaces_the_size_presets_depth(tmp_path):
    out, result = _run(tmp_path, "shallow", "size=nano", "layers=1")
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 64  # nano's width, one layer
    with pytest.raises(ConfigError, match="layers=-1: must be >= 0"):
        load_config(pretrain.Config, ["layers=-1"])
    with pytest.raises(ConfigError, match="layers sets the depth of a new model: corpus=arithmetic only"):
        load_config(pretrain.Config, ["layers=2", "corpus=code"])


def test_pretrain_rejects_an_unknown_corpus():
    with pytest.raises(ConfigError, match="corpus"):
        load_config(pretrain.Config, ["corpus=poetry"])


def test_embedded_resolves_to_the_tasks_asset(tmp_path, monkeypatch):
    assets = {name: resolve_model_path(name) for name in ASSETS}
    assert resolve_model_path("embedded") == assets["tiny-arith"]
    assert resolve_model_path("embedded", make_task("arithmetic")) == assets["tiny-arith"]
    assert resolve_model_path("embedded", make_task("code_arith")) == assets["tiny-code"]
    assert resolve_model_path("embedded", make_task("code_arith:1")) == assets["tiny-code"]
    assert resolve_model_path("some/hub-id", make_task("code_arith")) == "some/hub-id"
    assert model_label("embedded", make_task("code_arith")) == "embedded (tiny-code)"
    assert model_label("embedded") == "embedded (tiny-arith)" and model_label("x/y") == "x/y"
    tok, model = load_policy(ModelConfig(), make_task("code_arith"))
    assert model.config.model_type == "llama" and tok.decode(tok("def f(a):")["input_ids"]) == "def f(a):"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-code").mkdir()
    assert resolve_model_path("tiny-code") == "tiny-code"  # a local directory of that name wins


def test_the_shipped_bitnet_model_loads_ternary_and_solves_level_one():
    """assets/tiny-bitnet: `pretrain bitnet=true` (2 000 steps) exported packed; it loads as Llama + BitLinear."""
    import torch

    from reasonloop.models import bitnet
    from reasonloop.models.bitnet_pack import is_packed
    from reasonloop.models.loading import load_model, load_tokenizer
    from reasonloop.rollout.engine import SamplingConfig
    from reasonloop.rollout.sampler import TorchSampler

    path = resolve_model_path("tiny-bitnet")
    assert is_packed(path)
    model, tok = load_model(ModelConfig(name="tiny-bitnet")), load_tokenizer(path)
    layers = bitnet.bit_linears(model)
    assert len(layers) == 4 * 7 and bitnet.is_bitnet(model)
    for _, layer in layers:  # the master weights are rebuilt ternary: {-c, 0, c} per tensor
        values = layer.weight.detach().unique()
        assert len(values) == 3 and values[1] == 0 and torch.equal(values[0], -values[2])
    task = make_task("arithmetic")
    examples = [e for e in task.examples("test", 60, seed=0) if e.meta["level"] == 1][:8]
    batch = TorchSampler(model, tok).generate([e.prompt for e in examples], 1, SamplingConfig(temperature=0.0))
    assert all(task.is_correct(c, e) for c, e in zip(batch.completions, examples))  # level 1: 26 of 26 held out
