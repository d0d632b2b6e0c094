r"""REINFORCE recommender with the top-K off-policy correction (Chen et al., WSDM 2019;
the base recommender of the latent-intent paper, intent_pcrec.md §1.2).

Arguments (comma-separated after the colon):
  dataset   synthetic (default) | ml100k_recbole (MovieLens-100K from the recbole wheel:
            users as sessions, proxy behaviour signals) | retailrocket (raw_dir needed)
  variant   topk (default: top-K correction, K = config.rl.topk = 10) | plain (no top-K
            correction; the capped importance weight stays)
  raw_dir   directory with the dataset's raw files (retailrocket)
  smoke     a few steps on tiny batches (CI)

Settings [inferred, none published for this setting]: GRU 64 over 64-d item embeddings
and the history's behaviour signals, the last 10 items as the state, weight cap c = 10,
return discount 0.5, behaviour head on a stop-gradient state, Adam with the dataset's lr
(config_util.DATASET_DEFAULTS), batch 256. On synthetic data the intent evaluator probes
the GRU state for the true intents (the baseline of the latent-intent table).

Commands:
  python -m jaxrec.main --config=configs/reinforce.py --workdir=/tmp/reinforce
  python -m jaxrec.main --config=configs/reinforce.py:variant=plain --workdir=/tmp/reinforce_plain
  python -m jaxrec.main --config=configs/reinforce.py:dataset=ml100k_recbole --workdir=runs/ml100k_reinforce
  python -m jaxrec.main --config=configs/reinforce.py:dataset=retailrocket,raw_dir=$HOME/data/retailrocket --workdir=runs/rr_reinforce
  python -m jaxrec.main --config=configs/reinforce.py:smoke --workdir=/tmp/smoke
"""

import ml_collections

from jaxrec import config_util

ARGS = dict(dataset="synthetic", variant="topk", raw_dir="", smoke=False)
DATASETS = ("synthetic", "ml100k_recbole", "retailrocket")
VARIANTS = ("topk", "plain")


def intent_base(method: str, a: dict) -> ml_collections.ConfigDict:
    """The session protocol on the 'intent' data kind, the GRU state, the REINFORCE
    settings and, on synthetic data, the intent-recovery evaluator (configs/latent_intent.py
    builds on this file's config)."""
    if a["dataset"] not in DATASETS:
        raise ValueError(f"unknown dataset {a['dataset']!r}; accepted: {', '.join(DATASETS)}")
    if a["variant"] not in VARIANTS:
        raise ValueError(f"unknown variant {a['variant']!r}; accepted: {', '.join(VARIANTS)}")
    c = config_util.base_config(method, a["dataset"], "gru4rec", a["smoke"],
                                raw_dir=a["raw_dir"] or None, protocol="session")
    c.label = f"{method}/{a['variant']}"
    c.data.kind = "intent"
    c.data.signals = "auto"          # 'features' (synthetic) or 'proxy' (logged data)
    c.data.return_gamma = 0.5        # R_t discount inside a session [inferred]
    c.model = ml_collections.ConfigDict()
    c.model.embed_dim = 64
    c.model.hidden = 64
    c.model.context_features = True  # the history's behaviour signals enter the GRU
    c.rl = ml_collections.ConfigDict()
    c.rl.topk = 10 if a["variant"] == "topk" else 0
    c.rl.cap = 10.0
    c.rl.off_policy = True
    c.rl.beta_weight = 1.0
    c.rl.beta_stop_gradient = True
    if a["dataset"] == "synthetic":
        c.evals.intent = ml_collections.ConfigDict({"type": "intent", "max_points": 4000})
        if a["smoke"]:
            c.evals.intent.probe_steps = 50
            c.evals.intent.kmeans_restarts = 1
    return c


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    return intent_base("reinforce", a)
