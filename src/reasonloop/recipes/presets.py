"""Named online-RL variants: each is `reasonloop train` with these keys applied before the user's own.

Kept free of heavy imports so the CLI can list them instantly. What each one is, and which paper it
follows, is in the docstring of `recipes/rl.py` and in docs/rl.md.
"""

RL_PRESETS: dict[str, list[str]] = {
    "grpo": [],
    "dapo": ["clip_high=0.28", "agg_mode=token_mean", "dynamic_sampling=true", "overlong_buffer=16",
             "mask_truncated=true", "kl_coef=0"],
    "dr_grpo": ["std_mode=none", "agg_mode=seq_mean_token_sum_norm"],
    "rloo": ["advantage=rloo", "kl_in=reward", "kl_estimator=k1"],
    "reinforce": ["advantage=reinforce", "kl_in=reward", "kl_estimator=k1"],
    "reinforce_pp": ["advantage=reinforce_pp", "kl_in=reward", "kl_estimator=k1", "agg_mode=token_mean"],
    "ppo": ["advantage=gae", "critic=head", "kl_in=reward", "kl_estimator=k1", "kl_coef=0.05", "epochs=2",
            "agg_mode=token_mean"],
    "gspo": ["ratio_level=sequence", "clip_low=0.0003", "clip_high=0.0004", "epochs=2"],
}


def preset_of(cfg: object) -> str:
    """The preset `cfg` is, judged on every key some preset sets (the rest at their defaults), else 'custom'."""
    defaults = type(cfg)()
    keys = {kv.split("=", 1)[0] for preset in RL_PRESETS.values() for kv in preset}
    for name, preset in RL_PRESETS.items():
        wanted = {k: getattr(defaults, k) for k in keys}
        wanted.update(kv.split("=", 1) for kv in preset)
        if all(_same(getattr(cfg, k), v) for k, v in wanted.items()):
            return name
    return "custom"


def _same(have: object, want: object) -> bool:
    if isinstance(want, str) and isinstance(have, bool):
        return str(have).lower() == want.lower()
    if isinstance(want, str) and isinstance(have, (int, float)):
        return float(have) == float(want)
    return have == want


# `reasonloop pretrain_code`: rebuilds the tiny-code asset from tiny-arith (docs/tasks-embedded.md).
PRETRAIN_CODE: list[str] = ["corpus=code", "steps=400", "optim.lr=1e-3", "optim.warmup_steps=10", "corpus_size=20000",
                            "eval_every=100", "eval_per_level=50"]
# `reasonloop pretrain_tool`: builds the tiny-tool asset from tiny-arith (docs/agents.md).
# Calculator solutions on half of the level-4/5 problems (5% below), half of them with a counterfactual result,
# results out of the loss: a base that reads the result and calls sometimes, so RL has the decision to learn.
PRETRAIN_TOOL: list[str] = ["corpus=tool", "p_tool=0.05", "p_tool_hard=0.5", "p_counterfactual=0.5",
                            "mask_observations=true", "steps=800", "optim.lr=3e-3", "optim.warmup_steps=20",
                            "corpus_size=50000", "eval_every=0", "eval_per_level=40"]
