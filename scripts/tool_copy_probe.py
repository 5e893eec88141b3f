"""Does a model copy the calculator's result into its answer? (docs/agents.md, issue 16.) 200 held-out tool_arith
problems, greedy after `<tool name="calc">CHAIN</tool><result>R</result></think><answer>`, with R the true value
and with a planted wrong R = true + 7; and, as a control, the planted R in the lazy trace's shape
`<think>CHAIN=R</think><answer>` (tiny-arith copies that one 39 of 40 times at level 5). Usage: PYTHONPATH=src python scripts/tool_copy_probe.py MODEL_DIR"""
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from reasonloop.tasks.tool_arith import ToolArithTask

torch.set_num_threads(1)
path = sys.argv[1]
tok, m = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
task = ToolArithTask()
exs = task.examples("test", 200, seed=0)
stats = {}
for ex in exs:
    chain = ex.prompt.split("Q: ")[-1].split("=")[0]
    lvl = ex.meta.get("level")
    for kind, r in (("true", int(ex.answer)), ("planted", int(ex.answer) + 7), ("planted-lazy", int(ex.answer) + 7)):
        body = f"{chain}={r}" if kind == "planted-lazy" else f'<tool name="calc">{chain}</tool><result>{r}</result>'
        text = f"{ex.prompt}<think>{body}</think><answer>"
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        ans = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("</answer>")[0]
        d = stats.setdefault((kind, lvl), [0, 0])
        d[0] += 1
        d[1] += ans.strip() == str(r)
for kind in ("true", "planted", "planted-lazy"):
    tot = sum(v[0] for (k, _), v in stats.items() if k == kind)
    cop = sum(v[1] for (k, _), v in stats.items() if k == kind)
    lv = {l: f"{v[1]}/{v[0]}" for (k, l), v in sorted(stats.items(), key=lambda kv: str(kv[0])) if k == kind}
    print(f"{path} result {kind}: copied {cop}/{tot} = {cop / tot:.3f}; by level {lv}")
