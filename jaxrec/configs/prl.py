r"""PRL (Xin et al., SIGIR 2022): prompt-based RL — the state, the step and the
normalised reward-to-go form a 3-token prompt, encoded by one attention block and trained
with re-weighted cross-entropy on the trajectory buffer; at inference the prompt asks for
ε × the mean return at the query's step (rl.md §6, jaxrec/methods/prl.py).

Arguments (comma-separated after the colon):
  dataset   synthetic (default) | retailrocket | yoochoose | movielens_1m |
              ml100k_recbole (users as sessions, every rating a click)
  encoder   gru4rec | caser | nextitnet | sasrec (default)
  raw_dir   directory with the dataset's raw files (real datasets)
  smoke     a few steps on tiny batches (CI)

Papers' settings (the released *_PRL.py scripts): sessions of at most 50 events, γ = 1 for
the reward-to-go, r_click 0.2, r_buy 1.0, batch 256, Adam lr 0.005 (RetailRocket) / 0.01
(RC15), 30 epochs, validation every 2,000 steps; prompt dropout 0.3 (0.1 for RC15 Caser),
which SASRec's own layers use too; one attention head; CE weighted by r_buy / r_click,
except RetailRocket GRU4Rec, weighted by R̃_t; inference ε = 2.0 at the true step;
cut-offs 1, 5, 10, 20.

Evaluators: ``ranking`` (ε = config.rl.prl_epsilon, the selection metric's source) and
``prl_sweep`` (ε in config.evals.prl_sweep.epsilons, keys 'prl_sweep/eps=1.5/...').

Commands:
  python -m jaxrec.main --config=configs/prl.py --workdir=/tmp/sasrec_prl
  python -m jaxrec.main --config=configs/prl.py:dataset=retailrocket,encoder=gru4rec,raw_dir=$HOME/data/retailrocket --workdir=runs/rr_gru_prl
  python -m jaxrec.main --config=configs/prl.py:dataset=yoochoose,encoder=sasrec,raw_dir=$HOME/data/yoochoose --workdir=runs/rc15_sasrec_prl
  python -m jaxrec.main --config=configs/prl.py:dataset=yoochoose,encoder=caser,raw_dir=$HOME/data/yoochoose --workdir=runs/rc15_caser_prl --config.rl.prl_epsilon=1.5
  python -m jaxrec.main --config=configs/prl.py:encoder=nextitnet,smoke --workdir=/tmp/smoke
"""

import ml_collections

from jaxrec import config_util

ARGS = dict(dataset="synthetic", encoder="sasrec", raw_dir="", smoke=False)


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    c = config_util.base_config("prl", a["dataset"], a["encoder"], a["smoke"],
                                raw_dir=a["raw_dir"] or None, protocol="session")
    c.data.kind = "prl"
    c.data.prl_max_length = 50       # sessions kept, and the rows of the step table
    # 'short' = evaluate on held-out sessions of at most prl_max_length events (the reference);
    # 'all' = every held-out session, the same queries as the other methods (step clipped).
    c.data.prl_eval_sessions = "short"
    c.rl.prl_epsilon = 2.0           # inference prompt R̃ = ε (ε × mean R_t at the step)
    c.rl.prl_dropout = 0.3           # prompt tokens and attention weights
    c.rl.prl_heads = 1
    c.rl.prl_weight = "reward"       # 'reward' (r_buy/r_click) | 'rtg' (R̃_t) | 'none'
    c.rl.prl_key_mask = "reference"  # SASRec keys: the reference's sum test, or 'ids'
    if a["dataset"] == "retailrocket" and a["encoder"] == "gru4rec":
        c.rl.prl_weight = "rtg"      # Kaggle/GRU_PRL.py
    if a["dataset"] == "yoochoose" and a["encoder"] == "caser":
        c.rl.prl_dropout = 0.1       # RC15/Caser_PRL.py
    if a["encoder"] == "sasrec":
        c.model.dropout = c.rl.prl_dropout   # SASRec_PRL.py: one --dropout_rate for both
    c.eval.ks = (1, 5, 10, 20)
    c.evals.prl_sweep = ml_collections.ConfigDict(
        {"type": "prl_sweep", "epsilons": (0.1, 1.0, 1.5, 2.0, 3.0)})
    return c
