"""Shared fixtures: tiny models built locally (no downloads), one torch thread (CI has 2 cores)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """`ci` marks a slow test that CI runs after the default suite (`-m "slow and ci"`): one without `slow` would
    run twice there, so it is refused."""
    unmarked = [item.nodeid for item in items if item.get_closest_marker("ci") and not item.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError(f"marked ci but not slow (CI would run them twice): {', '.join(unmarked)}")


@pytest.fixture(scope="session")
def tokenizer():
    from reasonloop.models.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def nano_model_dir(tmp_path_factory, tokenizer):
    """A randomly initialised 'nano' Llama with the char tokenizer, saved as an HF directory."""
    from transformers import LlamaForCausalLM

    from reasonloop.models.tiny import build_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("nano")
    LlamaForCausalLM(build_config(tokenizer, "nano")).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


@pytest.fixture
def nano_model(nano_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(nano_model_dir)
