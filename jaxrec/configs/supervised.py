r"""Supervised next-item baselines: GRU4Rec, Caser, NextItNet, SASRec (rl.md §2).

Arguments (comma-separated after the colon):
  dataset   synthetic (default) | retailrocket | yoochoose | movielens_1m | ml100k_recbole
  encoder   gru4rec | caser | nextitnet | sasrec (default)
  raw_dir   directory with the dataset's raw files (real datasets)
  protocol  session (RL papers: replay rows, purchase/click metrics) | loo (leave-one-out,
            CE at every position as in the SASRec paper); default per dataset
  smoke     a few steps on tiny batches (CI)

Commands:
  python -m jaxrec.main --config=configs/supervised.py --workdir=/tmp/sasrec
  python -m jaxrec.main --config=configs/supervised.py:dataset=retailrocket,encoder=gru4rec,raw_dir=$HOME/data/retailrocket --workdir=runs/rr_gru
  python -m jaxrec.main --config=configs/supervised.py:dataset=yoochoose,encoder=caser,raw_dir=$HOME/data/yoochoose --workdir=runs/rc15_caser
  python -m jaxrec.main --config=configs/supervised.py:dataset=ml100k_recbole,protocol=loo --workdir=runs/ml100k_sasrec
  python -m jaxrec.main --config=configs/supervised.py:smoke --workdir=/tmp/smoke --config.train.num_steps=5
"""

from jaxrec import config_util

ARGS = dict(dataset="synthetic", encoder="sasrec", raw_dir="", protocol="", smoke=False)


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    c = config_util.base_config("supervised", a["dataset"], a["encoder"], a["smoke"],
                                raw_dir=a["raw_dir"] or None, protocol=a["protocol"] or None)
    return c
