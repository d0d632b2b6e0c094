r"""LEA (Wang et al., SIGIR 2024, arXiv 2403.16948; rl.md §8): a small decoder adapted by LoRA
as the environment of an RL recommender (SA2C or SQN), its outputs precomputed into the
training data (data kind 'lea', jaxrec/data/lea.py; the LE itself: jaxrec/methods/lea.py).

Arguments (comma-separated after the colon):
  variant   base (the recommender alone; 'sa2c' / 'sqn' are accepted as aliases) |
            state (s^e concatenated to the encoder state) | reward (reward-model rewards)
            | aug (augmented positives) | full (all three, the default)
  base      sa2c (default) | sqn — the recommender's own config file, unchanged
  dataset   synthetic (default) | ml100k_recbole (users as sessions, ratings as clicks) |
            retailrocket | yoochoose | movielens_1m (need item titles: only the first two
            have them offline)
  encoder   gru4rec | caser | nextitnet | sasrec (default)
  raw_dir   raw files of a real dataset
  decoder_checkpoint  a Hugging Face Llama / Mistral / Gemma directory (config.json, safetensors,
            tokenizer.json) as the LE's decoder, with its own tokenizer's special ids (default:
            a small Llama pretrained here on the item texts)
  smoke     a tiny decoder and a few LE steps (CI)

Every LEA detail is unverified (rl.md §8) and a field: config.lea (jaxrec.methods.lea.
default_section: switches state / rewards / aug, aug_k, aug_weight, aug_q, the LoRA rank,
the training subset (10 %), the stages' steps) and config.decoder (the decoder's size and
pretraining, jaxrec.backbones.decoder_lm.default_section; its frozen weights are kept as
config.decoder.frozen_dtype, bfloat16). LE state width = decoder width.

The LE is an earlier stage: it writes an artefact directory (cached under config.lea.cache_dir)
that the data kind reads; a training run builds it when missing (config.lea.build), or reads
the one named by config.lea.artefact.

Commands:
  python -m jaxrec.main --config=configs/lea.py --workdir=/tmp/lea_full
  python -m jaxrec.main --config=configs/lea.py:variant=reward,base=sqn --workdir=/tmp/lea_sqn_reward
  python -m jaxrec.main --config=configs/lea.py:dataset=ml100k_recbole,variant=aug --workdir=/tmp/lea_ml
  python -m jaxrec.main --config=configs/lea.py:smoke --workdir=/tmp/lea_smoke --config.lea.aug_k=3
  python -m jaxrec.methods.lea --config=configs/lea.py:decoder_checkpoint=/models/gemma-2b   # the stage alone
"""

import os

from jaxrec import config_util

ARGS = dict(variant="full", base="sa2c", dataset="synthetic", encoder="sasrec", raw_dir="",
            smoke=False, decoder_checkpoint="")
VARIANTS = {"base": {}, "state": {"state": "concat"}, "reward": {"rewards": "reward_model"},
            "aug": {"aug": True},
            "full": {"state": "concat", "rewards": "reward_model", "aug": True}}
BASES = ("sa2c", "sqn")


def get_config(arg=None):
    from jaxrec.backbones import decoder_lm
    from jaxrec.methods import lea
    a = config_util.parse_arg(arg, ARGS)
    variant = "base" if a["variant"] in BASES else a["variant"]
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join([*VARIANTS, *BASES])}, got {a['variant']!r}")
    if a["base"] not in BASES:
        raise ValueError(f"base must be one of {', '.join(BASES)}, got {a['base']!r}")
    base_arg = f"dataset={a['dataset']},encoder={a['encoder']}"
    if a["raw_dir"]:
        base_arg += f",raw_dir={a['raw_dir']}"
    if a["smoke"]:
        base_arg += ",smoke"
    # The recommender's own config, unchanged: LEA only adds its sections and data kind.
    c = config_util.load_config_file(os.path.join(os.path.dirname(__file__), f"{a['base']}.py"),
                                     base_arg)
    c.lea = lea.default_section(**VARIANTS[variant])
    c.decoder = decoder_lm.default_section(checkpoint=a["decoder_checkpoint"])
    c.decoder.frozen_dtype = "bfloat16"
    if variant != "base":
        c.data.kind = "jaxrec.data.lea.lea_task"   # registers kind 'lea' on import
    c.label = f"{a['base']}+lea-{variant}/{a['encoder']}" if variant != "base" else c.label
    if a["smoke"]:
        c.decoder.update(dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                              pretrain_steps=10, batch_size=16, max_len=32))
        c.lea.update(dict(item_steps=4, state_steps=4, reward_steps=4, batch_size=16,
                          eval_batch=128, item_max_len=24))
    return c
