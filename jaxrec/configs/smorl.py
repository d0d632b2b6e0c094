r"""SMORL (Stamenkovic et al., WSDM 2022): an SQN with three Q heads (accuracy, diversity,
novelty) and a scalarised double-Q bootstrap (rl.md §7). Ranking with the supervised head;
coverage, novelty, repetition, diversity/novelty rewards and the off-policy NDCG reported
by the coverage evaluator next to the ranking metrics.

Arguments (comma-separated after the colon):
  dataset     synthetic (default) | retailrocket | yoochoose | movielens_1m |
              ml100k_recbole (users as sessions, every rating a click)
  encoder     gru4rec | caser | nextitnet | sasrec (default)
  raw_dir     directory with the dataset's raw files (real datasets)
  weights     w_acc,w_div,w_nov (default 1,1,1; the paper's ablations 1,1,0 1,0,1 0,1,1
              0,1,0 0,0,1). The commas may stay: the numbers after weights= are joined.
  pretrained  workdir of a finished supervised GRU4Rec run on the same dataset: its item
              embeddings are the frozen e of the diversity reward (required, except smoke)
  smoke       a few steps on tiny batches (CI); without pretrained= it uses seeded random
              embeddings (config.rl.smorl_embeddings='random', an ablation)

Settings (rl.md §7): gamma 0.5, r_click 0.2, r_buy 1.0, alpha 1, batch 256, Adam lr 0.005
(RetailRocket) / 0.01 (RC15), validation every 2,000 steps as SQN.

Commands:
  python -m jaxrec.main --config=configs/supervised.py:dataset=retailrocket,encoder=gru4rec,raw_dir=$HOME/data/retailrocket --workdir=runs/rr_gru
  python -m jaxrec.main --config=configs/smorl.py:dataset=retailrocket,encoder=sasrec,raw_dir=$HOME/data/retailrocket,pretrained=runs/rr_gru --workdir=runs/rr_sasrec_smorl
  python -m jaxrec.main --config=configs/smorl.py:dataset=retailrocket,encoder=gru4rec,weights=0,1,0,raw_dir=$HOME/data/retailrocket,pretrained=runs/rr_gru --workdir=runs/rr_gru_smorl_010
  python -m jaxrec.main --config=configs/smorl.py:smoke --workdir=/tmp/smorl_smoke
"""

from jaxrec import config_util

ARGS = dict(dataset="synthetic", encoder="sasrec", raw_dir="", smoke=False, weights="1,1,1",
            pretrained="")


def _join_weights(arg):
    """'weights=1,0,1,smoke' -> 'weights=1/0/1,smoke': bare numbers after weights= are its
    components, not arguments of their own."""
    parts = []
    for part in (arg or "").split(","):
        p = part.strip()
        if parts and parts[-1].startswith("weights=") and p and "=" not in p and p not in ARGS:
            parts[-1] += "/" + p
        else:
            parts.append(part)
    return ",".join(parts)


def get_config(arg=None):
    a = config_util.parse_arg(_join_weights(arg), ARGS)
    c = config_util.base_config("smorl", a["dataset"], a["encoder"], a["smoke"],
                                raw_dir=a["raw_dir"] or None, protocol="session")
    from jaxrec.methods.smorl import parse_weights
    w = parse_weights(a["weights"].replace("/", ","))
    c.rl.smorl_weights = w
    c.rl.smorl_alpha = 1.0
    c.rl.smorl_pretrained = a["pretrained"]
    c.rl.smorl_embeddings = "random" if a["smoke"] and not a["pretrained"] else "pretrained"
    c.rl.smorl_novel_percentile = 90.0
    c.rl.smorl_div_empty = "pad"
    if w != (1.0, 1.0, 1.0):
        c.label = f"smorl({','.join(f'{x:g}' for x in w)})/{a['encoder']}"
    # The method's consts carry the frozen embeddings (key 'item_embeddings'), so the
    # diversity reward of the top-1 is required, not optional.
    c.evals.coverage = dict(type="coverage", diversity=True,
                            novel_percentile=c.rl.get_ref("smorl_novel_percentile"),
                            offpolicy_norm="self")
    return c
