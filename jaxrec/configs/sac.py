r"""SAC (Xin et al., SIGIR 2020, §3.3): SQN's double-Q pair, with the supervised head's
cross-entropy weighted by the raw Q value of the logged action (rl.md §4, ``M_AC.py``);
optional SQN-loss warm-up, then a fresh Adam at the same lr. Ranking with the supervised
head.

Arguments (comma-separated after the colon):
  dataset   synthetic (default) | retailrocket | yoochoose | movielens_1m | ml100k_recbole
  encoder   gru4rec | caser | nextitnet | sasrec (default)
  raw_dir   directory with the dataset's raw files (real datasets)
  smoke     a few steps on tiny batches (CI); the warm-up ends after step 1, so both
            phases run

Papers' settings: gamma 0.5, r_click 0.2, r_buy 1.0, batch 256, Adam lr 0.005
(RetailRocket) / 0.01 (RC15), validation every 2,000 steps, 30 epochs; Caser without
dropout. SQN-loss warm-up (config.rl.warmup_steps, from METHOD_DEFAULTS): 15,000 steps for
GRU4Rec on RetailRocket, 30,000 for SASRec on both datasets, none otherwise.

Warm-up elsewhere [inferred]: the share of the run that the RetailRocket scripts give it
(15,000 / 30,000 of ~115k steps: ~13 % for GRU4Rec, ~26 % for SASRec; none for Caser and
NextItNet), applied to each dataset's default run: synthetic (~58 steps per epoch,
10 epochs) 80 / 150 steps; ml100k_recbole (~310 steps per epoch, 30 epochs) 1,200 / 2,500;
movielens_1m (RetailRocket-sized) the paper's 15,000 / 30,000.

Commands:
  python -m jaxrec.main --config=configs/sac.py --workdir=/tmp/sasrec_sac
  python -m jaxrec.main --config=configs/sac.py:dataset=retailrocket,encoder=gru4rec,raw_dir=$HOME/data/retailrocket --workdir=runs/rr_gru_sac
  python -m jaxrec.main --config=configs/sac.py:dataset=yoochoose,encoder=sasrec,raw_dir=$HOME/data/yoochoose --workdir=runs/rc15_sasrec_sac
  python -m jaxrec.main --config=configs/sac.py:encoder=caser,smoke --workdir=/tmp/smoke_sac
"""

from jaxrec import config_util

ARGS = dict(dataset="synthetic", encoder="sasrec", raw_dir="", smoke=False)

# dataset -> encoder -> warm-up steps, off the papers' datasets [inferred, see above].
WARMUP = {"synthetic": {"gru4rec": 80, "sasrec": 150},
          "ml100k_recbole": {"gru4rec": 1200, "sasrec": 2500},
          "movielens_1m": {"gru4rec": 15000, "sasrec": 30000}}


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    c = config_util.base_config("sac", a["dataset"], a["encoder"], a["smoke"],
                                raw_dir=a["raw_dir"] or None, protocol="session")
    if a["dataset"] not in config_util.PAPER_DATASETS:
        c.rl.warmup_steps = WARMUP[a["dataset"]].get(a["encoder"], 0)
    if a["smoke"]:
        c.rl.warmup_steps = 1
    return c
