"""Config of tests/train/toy_method.py: the base skeleton plus the toy's own evaluator."""

from jaxrec import config_util


def get_config(arg=None):
    a = config_util.parse_arg(arg, dict(smoke=False))
    c = config_util.base_config("tests.train.toy_method", "synthetic", "gru4rec", a["smoke"])
    c.optim.lr = 0.5
    c.evals.toy = dict(type="prior")          # the method's own evaluator, prefix 'toy/'
    return c
