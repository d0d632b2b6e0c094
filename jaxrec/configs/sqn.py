r"""SQN (Xin et al., SIGIR 2020): double-Q head + supervised head on a shared encoder,
two networks swapped at random (rl.md §3-4). Ranking with the supervised head.

Arguments (comma-separated after the colon):
  dataset   synthetic (default) | retailrocket | yoochoose | movielens_1m |
            ml100k_recbole (users as sessions, every rating a click, as movielens_1m)
  encoder   gru4rec | caser | nextitnet | sasrec (default)
  raw_dir   directory with the dataset's raw files (real datasets)
  smoke     a few steps on tiny batches (CI)

Papers' settings: gamma 0.5, r_click 0.2, r_buy 1.0, batch 256, Adam lr 0.005
(RetailRocket) / 0.01 (RC15), validation every 2,000 steps, 30 epochs.

Commands:
  python -m jaxrec.main --config=configs/sqn.py --workdir=/tmp/sasrec_sqn
  python -m jaxrec.main --config=configs/sqn.py:dataset=retailrocket,encoder=sasrec,raw_dir=$HOME/data/retailrocket --workdir=runs/rr_sasrec_sqn
  python -m jaxrec.main --config=configs/sqn.py:dataset=yoochoose,encoder=nextitnet,raw_dir=$HOME/data/yoochoose --workdir=runs/rc15_nitnet_sqn
  python -m jaxrec.main --config=configs/sqn.py:dataset=retailrocket,encoder=gru4rec,smoke,raw_dir=DIR --workdir=/tmp/smoke
"""

from jaxrec import config_util

ARGS = dict(dataset="synthetic", encoder="sasrec", raw_dir="", smoke=False)


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    c = config_util.base_config("sqn", a["dataset"], a["encoder"], a["smoke"],
                                raw_dir=a["raw_dir"] or None, protocol="session")
    return c
