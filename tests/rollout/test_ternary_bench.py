"""`reasonloop bench which=bitnet` (bench/bitnet.py): weight accounting by hand and one in-process
speed measurement on the tiny shape."""

from __future__ import annotations

import pytest

from reasonloop.bench import bitnet as bench
from reasonloop.config import ConfigError
from reasonloop.rollout import ternary


def test_weight_bytes_of_the_tiny_shape_by_hand():
    w = bench.weight_bytes(bench.build("tiny"))
    hidden, layers, _, inter, vocab = bench.SHAPES["tiny"]
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    assert w["linear_fp32"] == layers * per_layer * 4
    # K = 192 pads to 256 (q k v o gate up read 192 inputs), K = 576 pads to 640 (down); one fp32 scale per output row
    packed_layer = 4 * hidden * 256 // 4 + 2 * inter * 256 // 4 + hidden * 640 // 4 + 4 * (5 * hidden + 2 * inter)
    assert w["linear_packed"] == layers * packed_layer
    # tied embeddings (vocab x hidden) + 2 norms per layer + the final norm, fp32
    assert w["other_fp32"] == 4 * (vocab * hidden + (2 * layers + 1) * hidden)


@pytest.mark.skipif(not ternary.available(), reason="no C++ compiler to build the ternary kernel")
def test_speed_child_times_both_paths_on_the_tiny_shape():
    cfg = bench.BitNetBenchConfig(sizes=["tiny"], threads=[1], tokens=3, repeats=1, prompt_len=4)
    out = bench.child("tiny", "speed", cfg)
    row = out["threads"][1]
    assert row["fp32_tokens_per_s"] > 0 and row["ternary_tokens_per_s"] > 0 and row["bandwidth_gb_s"] > 0
    assert row["ternary_torch_tokens_per_s"] > 0 and row["compiled_vs_torch_ternary"] > 0
    assert row["paths"] == {"fp32": "fp32 compiled decode step", "ternary": "ternary compiled decode step",
                            "ternary_torch": "ternary kernel + StaticDecoder"}


def test_config_names_a_bad_size():
    with pytest.raises(ConfigError, match="bitnet.sizes"):
        bench.BitNetBenchConfig(sizes=["1b"])
