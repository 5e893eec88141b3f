"""docs/curriculum.md "Defaults that travel": does a model's pass@k come from skill or from its answer prior?

    python scripts/travel_skill.py "chain_sum,min_terms=2,max_terms=4,min_digits=1,max_digits=1" runs/t3/chain_sum3-sft/model [more model dirs]
    EVAL_N=100 K=8 python scripts/travel_skill.py ...

For each model: on EVAL_N held-out prompts of the reasoning-gym spec (template=raw), greedy pass@1, sampled pass@1
and pass@K (K samples at temperature 1), and the same K samples graded against *another* prompt's gold answer
(prompt i's samples against the gold of prompt i+s, averaged over the shifts s = 1..5): the "prior" pass@K,
what the answers would score if they did not depend on the question at all. pass@K minus prior pass@K is the
part of pass@K that comes from reading the question; a base whose pass@K is all prior leaves RL nothing to
sharpen but the prior's mode. Also the number of distinct greedy answers (against the gold's).
"""
import collections, os, re, sys
import torch
torch.set_num_threads(1)
from transformers import AutoTokenizer, AutoModelForCausalLM
from transformers.utils import logging; logging.set_verbosity_error()
from reasonloop.algos.passk import pass_at_k
from reasonloop.data.records import Example
from reasonloop.tasks import make_task

N, K, SHIFTS = int(os.environ.get("EVAL_N", 100)), int(os.environ.get("K", 8)), 5


def generate(model, tok, prompts, n, sample):
    """n completions per prompt (special tokens kept: the grader reads <think>/<answer>)."""
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=64, do_sample=sample, temperature=1.0 if sample else None,
                               top_k=0, top_p=1.0, num_return_sequences=n, pad_token_id=0, eos_token_id=1)
        out.append([tok.decode([t for t in row[ids.shape[1]:].tolist() if t > 1], skip_special_tokens=False)
                    for row in g])
    return out


def pass_and_prior(hits, n: int, k: int, shifts: int = SHIFTS) -> tuple[float, float]:
    """(pass@k, prior pass@k) of n prompts with k samples each, where hits(i, j) counts prompt i's samples that
    are right for prompt j's gold: pass@k on the diagonal, the prior on the pairs (i, i+s mod n), s = 1..shifts."""
    own = sum(pass_at_k(k, hits(i, i), k) for i in range(n)) / n
    prior = [pass_at_k(k, hits(i, (i + s) % n), k) for s in range(1, shifts + 1) for i in range(n)]
    return own, sum(prior) / len(prior)


def answer(c):
    m = re.search(r"<answer>(.*?)</answer>", c)
    return m.group(1).strip() if m else "?"


def main():
    spec, dirs = sys.argv[1], sys.argv[2:]
    task = make_task(f"reasoning_gym:{spec},template=raw")
    ex = task.examples("test", N, seed=0)
    gold = [e.answer for e in ex]
    print(f"{spec}: {len(ex)} held-out prompts, {len(set(gold))} distinct gold answers; K={K}")
    print("model | greedy | sampled | pass@K | prior pass@K | skill (pass@K - prior) | distinct greedy (top)")
    for d in dirs:
        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(d); model = AutoModelForCausalLM.from_pretrained(d).eval()
        greedy = [c[0] for c in generate(model, tok, [e.prompt for e in ex], 1, False)]
        samples = generate(model, tok, [e.prompt for e in ex], K, True)
        g_ok = [task.is_correct(c, e) for c, e in zip(greedy, ex)]
        own = [sum(task.is_correct(c, e) for c in cs) for cs, e in zip(samples, ex)]
        n = len(ex)
        pk, pr = pass_and_prior(lambda i, j: sum(task.is_correct(c, ex[j]) for c in samples[i]), n, K)
        top = collections.Counter(answer(c) for c in greedy)
        print(f"{d} | {sum(g_ok) / n:.3f} | {sum(own) / (n * K):.3f} | {pk:.3f} | {pr:.3f} | {pk - pr:+.3f} | "
              f"{len(top)} {top.most_common(3)}")


if __name__ == "__main__":
    main()
