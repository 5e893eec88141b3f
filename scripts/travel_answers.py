"""docs/curriculum.md "Defaults that travel": what a travel run's models answer greedily, counted.

    python scripts/travel_answers.py count_bits "count_bits,level=0" sft rl-default rl-candidate
    TRAVEL_DIR=runs/travel2 python scripts/travel_answers.py ...     # another runs directory (default runs/travel)

Decodes the 50 held-out prompts of the reasoning-gym spec greedily from runs/travel/<task>-<arm>/model and prints
the number of distinct answers and the most common ones (a model that answers one value to every prompt does not
read the question).
"""
import collections, os, re, sys
import torch
torch.set_num_threads(1)
from transformers import AutoTokenizer, AutoModelForCausalLM
from transformers.utils import logging; logging.set_verbosity_error()
from reasonloop.tasks import make_task
name, spec, arms = sys.argv[1], sys.argv[2], sys.argv[3:]
t = make_task(f"reasoning_gym:{spec},template=raw")
ex = t.examples("test", 50, seed=0)
print(name, "gold distinct", len(set(str(e.answer) for e in ex)), collections.Counter(str(e.answer) for e in ex).most_common(3))
for m in arms:
    d = f"{os.environ.get('TRAVEL_DIR', 'runs/travel')}/{name}-{m}/model"
    tok = AutoTokenizer.from_pretrained(d); model = AutoModelForCausalLM.from_pretrained(d).eval()
    outs = []
    for e in ex:
        ids = tok(e.prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=0)
        s = tok.decode(g[0, ids.shape[1]:], skip_special_tokens=False)
        mm = re.search(r"<answer>(.*?)</answer>", s); outs.append(mm.group(1) if mm else "?")
    c = collections.Counter(outs)
    print(" ", m, "greedy answers: distinct", len(c), "most common", c.most_common(3))
