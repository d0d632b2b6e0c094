r"""SA2C (Xin et al., WSDM 2022, §3.3-3.4): SNQN for a first phase, then the supervised
head's cross-entropy weighted by the advantage of the logged action over its sampled
negatives, minimised by a second Adam (rl.md §5, ``SA2C.py``). Ranking with the
supervised head.

Arguments (comma-separated after the colon):
  dataset   synthetic (default) | retailrocket | yoochoose | movielens_1m | ml100k_recbole
  encoder   gru4rec | caser | nextitnet | sasrec (default)
  raw_dir   directory with the dataset's raw files (real datasets)
  smoke     a few steps on tiny batches (CI); phase 1 ends after step 1, so both phases
            run

Papers' settings (METHOD_DEFAULTS): gamma 0.5, r_click 0.2, r_buy 1.0, batch 256, Adam lr
0.005 (RetailRocket) / 0.01 (RC15); phase 1 of 15,000 steps (rl.phase1_steps); second Adam
lr 0.001 (rl.lr2); 10 negatives, r_negative 0; advantage clipped to [0, 10]
(rl.advantage_clip; < 0 disables the clip); IPS smoothing 0 = off (rl.ips_smooth);
Q-loss weight 1 (rl.q_weight); 50 epochs, validation every 4,000 steps; Caser dropout 0.1.

Phase 1 elsewhere [inferred]: 15,000 steps are ~4 epochs of RetailRocket (~3,850 steps
per epoch), 8 % of the 50-epoch run. On synthetic (~58 steps per epoch, 10 epochs) that
share would be under one epoch, too short for the Q head to rank the positive above the
negatives before its advantage weights the CE, so phase 1 takes 120 steps (~2 epochs, a
fifth of the run); ml100k_recbole (~310 steps per epoch) 1,200 steps (~4 epochs);
movielens_1m (RetailRocket-sized) the paper's 15,000. Measured since
(results/rl_sa2c_phase1.md): on synthetic 120 is too short — at 290-460 steps SA2C/SASRec
beats SNQN and the base model; 120 stays the default so the committed grid reproduces.

Commands:
  python -m jaxrec.main --config=configs/sa2c.py --workdir=/tmp/sasrec_sa2c
  python -m jaxrec.main --config=configs/sa2c.py:dataset=retailrocket,encoder=sasrec,raw_dir=$HOME/data/retailrocket --workdir=runs/rr_sasrec_sa2c
  python -m jaxrec.main --config=configs/sa2c.py:dataset=yoochoose,encoder=gru4rec,raw_dir=$HOME/data/yoochoose --workdir=runs/rc15_gru_sa2c --config.rl.ips_smooth=1.0
  python -m jaxrec.main --config=configs/sa2c.py:encoder=nextitnet,smoke --workdir=/tmp/smoke_sa2c
"""

from jaxrec import config_util

ARGS = dict(dataset="synthetic", encoder="sasrec", raw_dir="", smoke=False)

# Phase-1 steps off the papers' datasets [inferred, see above].
PHASE1 = {"synthetic": 120, "ml100k_recbole": 1200, "movielens_1m": 15000}


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    c = config_util.base_config("sa2c", a["dataset"], a["encoder"], a["smoke"],
                                raw_dir=a["raw_dir"] or None, protocol="session")
    if a["dataset"] not in config_util.PAPER_DATASETS:
        c.rl.phase1_steps = PHASE1[a["dataset"]]
    if a["smoke"]:
        c.rl.phase1_steps = 1
    c.rl.q_weight = 1.0                  # w of the reference's --weight
    return c
