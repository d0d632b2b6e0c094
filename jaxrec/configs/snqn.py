r"""SNQN (Xin et al., WSDM 2022, §3.2): SQN plus 10 uniform negative actions per row whose
TD targets bootstrap from the current state (rl.md §5, ``SNQN.py``).

Arguments (comma-separated after the colon):
  dataset   synthetic (default) | retailrocket | yoochoose | movielens_1m | ml100k_recbole
  encoder   gru4rec | caser | nextitnet | sasrec (default)
  raw_dir   directory with the dataset's raw files (real datasets)
  smoke     a few steps on tiny batches (CI)

Papers' settings: gamma 0.5, r_click 0.2, r_buy 1.0, batch 256, Adam lr 0.005
(RetailRocket) / 0.01 (RC15); rl.num_negatives 10, rl.r_negative 0 (the DQN_NS baseline
uses -1), Q-loss weight rl.q_weight 1. The RetailRocket script ranks with the supervised
head, the RC15 script with the Q head (rl.rank_head 's' / 'q', set per dataset).
50 epochs and validation every 4,000 steps on the papers' datasets (the defaults of the
mirrored Kaggle SNQN.py, as SA2C's; rl.md §5 does not list them for SNQN).

Commands:
  python -m jaxrec.main --config=configs/snqn.py --workdir=/tmp/sasrec_snqn
  python -m jaxrec.main --config=configs/snqn.py:dataset=retailrocket,encoder=gru4rec,raw_dir=$HOME/data/retailrocket --workdir=runs/rr_gru_snqn
  python -m jaxrec.main --config=configs/snqn.py:dataset=yoochoose,encoder=nextitnet,raw_dir=$HOME/data/yoochoose --workdir=runs/rc15_nitnet_snqn
  python -m jaxrec.main --config=configs/snqn.py:encoder=gru4rec,smoke --workdir=/tmp/smoke_snqn
"""

from jaxrec import config_util

ARGS = dict(dataset="synthetic", encoder="sasrec", raw_dir="", smoke=False)


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    c = config_util.base_config("snqn", a["dataset"], a["encoder"], a["smoke"],
                                raw_dir=a["raw_dir"] or None, protocol="session")
    c.rl.q_weight = 1.0                  # w of the reference's --weight
    if a["dataset"] in config_util.PAPER_DATASETS and not a["smoke"]:
        c.train.num_epochs, c.train.eval_every = 50, 4000     # SNQN.py's defaults
    return c
