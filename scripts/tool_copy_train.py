"""Can a model learn to copy the calculator's result? (docs/agents.md, issue 16.) Continues MODEL_DIR for STEPS steps
(lr LR, 32 sequences a step) on calculator solutions of levels 4-5 only, half of them with a counterfactual result
(true +- 1..20, copied into the answer), observations out of the loss (`recipes/pretrain.encode_masked`), and prints
every 20 steps the batch loss and the mean NLL per answer digit on 40 held-out level-5 problems [true result,
result + 7] (chance: ln 10 = 2.30; a model that copies: ~0).
Usage: PYTHONPATH=src python scripts/tool_copy_train.py MODEL_DIR LR STEPS [OUT_DIR: save the model there]"""
import sys, random, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from reasonloop.recipes.pretrain import encode_masked
from reasonloop.models.forward import completion_logprobs
from reasonloop.tasks.tool_arith import ToolArithTask, tool_completion
from reasonloop.train.optim import OptimConfig, build_optimizer
from reasonloop.train.supervised import supervised_step
torch.set_num_threads(1); torch.manual_seed(0)
path=sys.argv[1]; lr=float(sys.argv[2]); steps=int(sys.argv[3])
tok=AutoTokenizer.from_pretrained(path); m=AutoModelForCausalLM.from_pretrained(path)
task=ToolArithTask(levels=(4,5)); train=task.problems("train",4000,7,distinct=False); test=ToolArithTask(levels=(5,)).problems("test",40,0)
rng=random.Random(0)
def rec(p, planted): return {"prompt":f"Q: {p.text}=?\n","completion":tool_completion(p, p.answer+rng.choice([d for d in range(-20,21) if d and p.answer+d>=0]) if planted else None)}
a_id=tok.convert_tokens_to_ids("<answer>"); e_id=tok.convert_tokens_to_ids("</answer>")
def nll():
    m.eval(); out=[]
    for planted in (False, True):
        b,mask=encode_masked(tok,[rec(p,planted) for p in test])
        with torch.no_grad(): lp=completion_logprobs(m,b)
        tot=n=0
        for i in range(len(test)):
            ids=b.completion_ids[i].tolist(); s=ids.index(a_id)+1; e=ids.index(e_id); tot+=float(-lp[i,s:e].sum()); n+=e-s
        out.append(round(tot/n,3))
    return out
opt,sch=build_optimizer(m.parameters(), OptimConfig(lr=lr, weight_decay=0.01, warmup_steps=5), steps)
print(0, nll(), flush=True)
for step in range(1,steps+1):
    b,mask=encode_masked(tok,[rec(p, rng.random()<0.5) for p in rng.sample(train,32)])
    met=supervised_step(m,b,32,opt,sch,1.0,loss_mask=mask)
    if step%20==0: print(step, round(met["loss"],3), nll(), flush=True)
if len(sys.argv) > 4:
    m.save_pretrained(sys.argv[4], safe_serialization=True); tok.save_pretrained(sys.argv[4])
