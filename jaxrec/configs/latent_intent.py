r"""Latent-intent recommender (Chang et al., WWW '23 Companion; intent_pcrec.md §1): a
conditional VAE over behaviour signals whose prior mean conditions a REINFORCE policy with
the top-K off-policy correction (configs/reinforce.py is its base config).

Arguments (comma-separated after the colon):
  dataset       synthetic (default) | ml100k_recbole (users as sessions, proxy signals:
                time gap, repeat flag, genre switch) | retailrocket (raw_dir; time gap and
                repeat flag — events.csv has no categories)
  variant       topk (default) | plain (no top-K correction)
  conditioning  concat (default: [s; sg(z̄)]) | film | gate
  raw_dir       directory with the dataset's raw files (retailrocket)
  smoke         a few steps on tiny batches (CI)

Settings [inferred; the paper gives none]: z ∈ R^8, MLPs of 64, β_KL = 1, λ = 1, soft clip
c = 5 of every log-variance, μ/ℓ output layers initialised with std 0.01 (KL ≈ 0 at the
start), the policy reads the prior mean; everything else as configs/reinforce.py.

Commands:
  python -m jaxrec.main --config=configs/latent_intent.py --workdir=/tmp/latent_intent
  python -m jaxrec.main --config=configs/latent_intent.py:conditioning=film --workdir=/tmp/li_film
  python -m jaxrec.main --config=configs/latent_intent.py:dataset=ml100k_recbole --workdir=runs/ml100k_intent
  python -m jaxrec.main --config=configs/latent_intent.py:dataset=retailrocket,raw_dir=$HOME/data/retailrocket --workdir=runs/rr_intent
  python -m jaxrec.main --config=configs/latent_intent.py:smoke --workdir=/tmp/smoke
"""

import os

import ml_collections

from jaxrec import config_util

ARGS = dict(dataset="synthetic", variant="topk", conditioning="concat", raw_dir="",
            smoke=False)


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    base = ",".join(f"{k}={a[k]}" for k in ("dataset", "variant", "raw_dir") if a[k])
    c = config_util.load_config_file(os.path.join(os.path.dirname(__file__), "reinforce.py"),
                                     base + (",smoke" if a["smoke"] else ""))
    c.method = "latent_intent"
    c.label = f"latent_intent/{a['variant']}"
    if a["conditioning"] != "concat":
        c.label += f"/{a['conditioning']}"
    c.intent = ml_collections.ConfigDict()
    c.intent.latent_dim = 8
    c.intent.hidden = 64
    c.intent.kl_weight = 1.0           # β of the β-weighted KL
    c.intent.vae_weight = 1.0          # λ of L_RL + λ·(−ELBO)
    c.intent.logvar_clip = 5.0         # c of ℓ <- c·tanh(ℓ/c)
    c.intent.init_scale = 0.01         # std of the μ/ℓ output kernels (KL ≈ 0 at start)
    c.intent.conditioning = a["conditioning"]
    c.intent.policy_latent = "prior_mean"    # or 'prior_sample'
    c.intent.decoder_reads_x = True    # p(y|z,x); False: p(y|z)
    c.intent.context_stop_gradient = False   # True: the VAE's loss does not reach the GRU
    return c
