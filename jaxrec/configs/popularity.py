r"""Popularity baseline (``pop.py`` of the SNQN/SA2C release): items ranked by training
frequency. One pass over the training data.

Arguments: dataset (as in configs/supervised.py), raw_dir, protocol (session | loo), smoke.

Commands:
  python -m jaxrec.main --config=configs/popularity.py --workdir=/tmp/pop
  python -m jaxrec.main --config=configs/popularity.py:dataset=ml100k_recbole,protocol=loo --workdir=runs/ml100k_pop
"""

from jaxrec import config_util

ARGS = dict(dataset="synthetic", raw_dir="", protocol="", smoke=False)


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    c = config_util.base_config("popularity", a["dataset"], "sasrec", a["smoke"],
                                raw_dir=a["raw_dir"] or None, protocol=a["protocol"] or None)
    c.label = "popularity"          # no encoder
    c.train.num_epochs = 1
    c.train.eval_every = 0          # evaluate once, at the end
    return c
