"""Writes colabs/persoma.ipynb (unexecuted; tests/test_notebooks.py runs it in smoke mode).

    .venv/bin/python colabs/make_persoma_notebook.py
"""

from notebook import code, md, write

CELLS = [
md("""# PERSOMA: a user's history as soft prompts for a frozen decoder

This notebook uses only the `jaxrec` library. It follows Hebert et al., "PERSOMA: PERsonalized SOft ProMpt Adapter Architecture for Personalized Language Prompting" (arXiv 2408.00960): each item of a user's history is embedded once by a frozen sentence encoder, a small **resampler** (MLP, Transformer or Perceiver) turns the `n` embeddings into soft tokens, and a frozen decoder LLM reads `[soft tokens ; "genres:"]` and generates the genres of the user's next items. The baseline writes the history into the prompt as text, which must be **truncated** to fit the context.

Offline, the "LLM" is a 2-layer Llama pretrained here on the item texts (`jaxrec.backbones.decoder_lm`), the data is a MovieLens-like synthetic world (users with genre tastes, long histories, 1–5 ratings), and the item encoder is MiniLM-L6 (a hashed bag of words in smoke mode). We look at one example, then plot F1 and the decoder's input length against the history length `n`.

Set `JAXREC_SMOKE=1` for a few-step version; the test suite runs it that way."""),
code("""import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import jaxrec
from jaxrec import config_util, experiment
from jaxrec.data import persoma as pdata
from jaxrec.data import tasks
from jaxrec.evaluators.genres import GenreF1Evaluator
from jaxrec.methods import persoma

SMOKE = os.environ.get("JAXREC_SMOKE") == "1"
WORKDIR = os.environ.get("JAXREC_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="persoma_colab_")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(jaxrec.__file__)), "configs")
NS = (4, 12) if SMOKE else (10, 50, 200)
STEPS = 4 if SMOKE else 150


def config(arg=""):
    \"\"\"configs/persoma.py:<arg>, shrunk in smoke mode.\"\"\"
    c = config_util.load_config_file(os.path.join(CONFIGS, "persoma.py"),
                                     ",".join(a for a in (arg, "smoke" if SMOKE else f"steps={STEPS}") if a))
    if not SMOKE:
        c.data.max_train_examples, c.data.max_validation_examples, c.data.max_test_examples = 1200, 150, 150
    return c

print("smoke mode" if SMOKE else "full mode", "- runs under", WORKDIR)"""),
md("""## One user: what the two kinds of prompt contain

The same sampled history (the most recent `n` items) feeds both: PERSOMA keeps every item as an embedding, text prompting renders as many of the most recent items as fit in its token budget."""),
code("""n = NS[-1]
c_soft, c_text = config(f"n={n}"), config(f"n={n},variant=text,regime=lora")
dataset = tasks.load_dataset(c_soft)
task_soft = tasks.build_task(c_soft, dataset)
task_text = tasks.build_task(c_text, dataset)
tok, names = task_soft.extras["tokenizer"], task_soft.extras["genre_names"]
texts = pdata.decoder_lm.item_texts(dataset.items, dataset.num_items)
a, t = task_soft.test.arrays, task_text.test.arrays
i = 0
hist = a["hist"][i][a["hist_mask"][i] > 0]
print(f"{a['num_history'][i]} items available, {len(hist)} sampled; the last three:")
for item, r in zip(hist[-3:], a["hist_rating"][i][a["hist_mask"][i] > 0][-3:]):
    print("   ", pdata.render_interaction(texts[item], r))
print("target:", tok.decode(a["target_ids"][i]))
print(f"soft prompt: {len(hist)} item embeddings -> soft tokens, then {tok.decode(a['prompt_ids'][i][a['prompt_mask'][i] > 0])!r}")
text_prompt = t["prompt_ids"][i][t["prompt_mask"][i] > 0]
print(f"text prompt: {len(text_prompt)} tokens, holding {int((text_prompt == tok.encode(pdata.SEP)[0]).sum())} of the {len(hist)} items")"""),
md("""## F1 and input length against the history length

Perceiver and MLP resamplers on a frozen decoder, and text prompting with LoRA (a frozen decoder with a text prompt has nothing to train). Every run sees the same users; `n` is the number of most recent items sampled."""),
code("""VARIANTS = {"Perceiver (frozen)": "resampler=perceiver", "text prompt (LoRA)": "variant=text,regime=lora"}
if not SMOKE:
    VARIANTS = {"Perceiver (frozen)": "resampler=perceiver", "MLP (frozen)": "resampler=mlp",
                "text prompt (LoRA)": "variant=text,regime=lora"}
f1, tokens, answers = {v: [] for v in VARIANTS}, {v: [] for v in VARIANTS}, {}
for n in NS:
    built = {}
    for name, arg in VARIANTS.items():
        c = config(f"n={n},{arg}")
        key = c.data.prompt_mode
        if key not in built:
            built[key] = tasks.build_task(c, dataset)
        task = built[key]
        res = experiment.run(c, os.path.join(WORKDIR, f"{n}_{arg}"), task=task, progress=False)
        f1[name].append(res["test"]["f1"])
        tokens[name].append(persoma.input_tokens(task, c))
        print(f"n={n:>3} {name:<20} F1 {res['test']['f1']:.3f}  decoder input {tokens[name][-1]:.0f} tokens")
        if n == NS[-1]:
            answers[name] = (res["state"], c, task)"""),
code("""fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
for name in VARIANTS:
    a1.plot(NS, f1[name], marker="o", label=name)
    a2.plot(NS, tokens[name], marker="o", label=name)
a1.set_xscale("log"); a2.set_xscale("log"); a2.set_yscale("log")
a1.set_xlabel("history length n"); a1.set_ylabel("test genre F1"); a1.legend()
a2.set_xlabel("history length n"); a2.set_ylabel("decoder input tokens per query")
a1.set_title("quality"); a2.set_title("cost: the Perceiver's k is fixed")
plt.tight_layout()
plt.show()"""),
md("""## What the models answer

Greedy answers of the first test users, next to the target genre set."""),
code("""for name, (state, c, task) in answers.items():
    ev = GenreF1Evaluator(persoma, task, c, c.eval)
    consts = persoma.make_consts(c, task)
    outs = ev.answers(state, consts, "test")[:4]
    print(name)
    for o, g in zip(outs, task.test.arrays["target_genres"][:4]):
        print(f"   answer {o!r:<40} target {', '.join(names[j] for j in np.nonzero(g)[0])}")"""),
md("""`benchmarks/persoma_grid.py` runs the full grid (resampler × sampling × n × regime, text prompting and a UEM-style baseline); its table, with a reading of where the paper's direction does and does not show, is in `results/persoma_grid.md`."""),
]
write("persoma", CELLS)
