import torch

from reasonloop.config import load_config
from reasonloop.models.loading import ModelConfig, load_model, load_tokenizer, render_prompt
from reasonloop.models.forward import encode_pairs, policy_forward


def test_chat_template_is_applied_when_the_tokenizer_has_one(nano_model_dir):
    tok = load_tokenizer(nano_model_dir)
    assert render_prompt(tok, "Q: 1+1=?\n") == "Q: 1+1=?\n"  # the char tokenizer has no template
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    assert render_prompt(tok, "hi") == "<user>hi<assistant>"
    assert render_prompt(tok, "hi", use_chat_template=False) == "hi"


def test_dtype_and_lora_options(nano_model_dir):
    cfg = load_config(ModelConfig, [f"name={nano_model_dir}", "dtype=bfloat16", "lora.r=4"])
    model = load_model(cfg)
    assert next(model.parameters()).dtype == torch.bfloat16
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)


def test_lora_reference_is_the_adapter_free_model(nano_model_dir, tmp_path, monkeypatch):
    """With LoRA the RL reference is the same model with adapters disabled, never a second copy."""
    from toy_tasks import LetterFirstTask

    from reasonloop.recipes import rl

    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())
    cfg = load_config(rl.Config, [f"model.name={nano_model_dir}", "model.lora.r=4", "kl_coef=0.1", "steps=1",
                                  "prompts_per_step=8", "group_size=8", "sampling.max_new_tokens=6", "eval_n=2",
                                  "eval_k=0", "save_every=0", f"output_dir={tmp_path}", "optim.lr=0.05"])
    trainer = rl.Trainer(cfg)
    assert trainer.ref is None
    tok = trainer.tokenizer
    batch = encode_pairs(tok, ["Q: 1+2=?\n"], ["<think>1+2=3</think><answer>3</answer>"])
    base = policy_forward(load_model(ModelConfig(name=nano_model_dir)), batch).logprobs
    trainer.train()
    with torch.no_grad():
        ref = trainer._ref_logprobs(batch, 1.0)
        policy = policy_forward(trainer.model, batch).logprobs
    torch.testing.assert_close(ref, base, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(policy, base, atol=1e-4)  # the adapters did learn something


def test_the_cache_goes_under_the_name_the_installed_transformers_takes(nano_model_dir):
    """transformers renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40); older releases
    (the package allows >=4.50) know only the old one. Passed under the right name, no deprecation warning fires."""
    import inspect
    import warnings

    from transformers import DynamicCache

    from reasonloop.models.forward import cache_arg

    model = load_model(ModelConfig(name=nano_model_dir))
    cache = DynamicCache()
    takes_cache = "cache" in inspect.signature(model.forward).parameters
    assert cache_arg(model, cache) == {("cache" if takes_cache else "past_key_values"): cache}

    class Old(torch.nn.Module):  # a forward from before the rename
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return None

    assert cache_arg(Old(), cache) == {"past_key_values": cache}
    ids = torch.tensor([[1, 2, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(input_ids=ids, use_cache=True, **cache_arg(model, cache))
    assert cache.get_seq_length() == 3  # filled in place: the caller's reference is the cache
