r"""PCRec: peer collaboration of two SASRec / YouTube-DNN / BPR networks (Sun et al.,
SIGIR 2022; specs/intent_pcrec.md §2).

Arguments (comma-separated after the colon):
  base         sasrec (default) | youtube | bpr
  variant      lw (layer-wise, default) | pw (parameter-wise) | noise | none
               (none and noise train one network unless peers= says otherwise: 'none'
               is the base model alone)
  dataset      synthetic (default) | ml100k_recbole (MovieLens-100K from the recbole wheel)
  size         paper (default: the code's d = 256, 2 SASRec blocks, max_len 100, 200 / 300
               epochs) | cpu (§2.7: d = 64, one block, 50 inputs, 20 epochs)
  criterion    entropy (default) | l1 — the layer-wise importance criterion
  cooperation  alllayer (default) | onlyembed | onlymiddle | onlyfinal (§2.3 ablations)
  peers        number of peers (0: 2 for lw/pw, 1 for none/noise)
  raw_dir      raw files of the dataset (default: the recbole wheel's ml-100k)
  smoke        tiny sizes and two short epochs, so one cooperation happens (CI)

Commands:
  python -m jaxrec.main --config=configs/pcrec.py:dataset=ml100k_recbole,size=cpu --workdir=runs/pcrec_lw
  python -m jaxrec.main --config=configs/pcrec.py:base=bpr,variant=pw,dataset=ml100k_recbole --workdir=runs/bpr_pw
  python -m jaxrec.main --config=configs/pcrec.py:base=youtube,variant=none,smoke --workdir=/tmp/yt
  python -m jaxrec.main --config=configs/pcrec.py:smoke --workdir=/tmp/pcrec --config.pcrec.a=1

Where the code and the paper leave a choice, it is a field: ``pcrec.a`` (1 in the code,
30 on its README's command line: 30 here), ``pcrec.include_max`` (the code's entropy drops
the maximum: False), ``model.mean_over_pads`` (YouTube-DNN averages pads too: True).
"""

import ml_collections

from jaxrec import config_util

ARGS = dict(base="sasrec", variant="lw", dataset="synthetic", size="paper",
            criterion="entropy", cooperation="alllayer", peers=0, raw_dir="", smoke=False)
BASES = {"sasrec": "sasrec", "youtube": "youtube_dnn", "bpr": "bpr"}
SIZES = ("paper", "cpu")

# (embed_dim, SASRec blocks, input window, batch size, epochs) per base and size (§2.5,
# §2.7). The window is the reference's max_len − 1: it feeds seq[:-1] of max_len items.
SHAPES = {
    ("sasrec", "paper"): (256, 2, 99, 128, 200),
    ("youtube_dnn", "paper"): (256, 0, 99, 128, 200),
    ("bpr", "paper"): (256, 0, 1, 2048, 300),
    ("sasrec", "cpu"): (64, 1, 50, 128, 20),
    ("youtube_dnn", "cpu"): (64, 0, 50, 128, 20),
    ("bpr", "cpu"): (64, 0, 1, 2048, 30),
}


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    if a["base"] not in BASES:
        raise ValueError(f"configs/pcrec.py: base={a['base']!r}; accepted: {', '.join(BASES)}")
    if a["size"] not in SIZES:
        raise ValueError(f"configs/pcrec.py: size={a['size']!r}; accepted: {', '.join(SIZES)}")
    base = BASES[a["base"]]
    variant = a["variant"]
    c = config_util.base_config("pcrec", a["dataset"], "sasrec", False,
                                raw_dir=a["raw_dir"] or None, protocol="loo")
    dim, blocks, window, batch, epochs = SHAPES[(base, a["size"])]
    peers = a["peers"] or (2 if variant in ("lw", "pw") else 1)
    c.label = f"{a['base']}-{variant}" if variant != "none" or peers > 1 else a["base"]

    # Data: leave-one-out per §2.6 (filters, windows, left padding; BPR dedup).
    c.data.kind = "pcrec_bpr" if base == "bpr" else "pcrec_sequence"
    c.data.state_len = window
    c.data.loo_min_len = 5
    # distinct items required: the reference's RetailRocket rule (> 3), always on for BPR.
    c.data.min_unique = 4 if (base == "bpr" or a["dataset"] == "retailrocket") else 0

    # Model: PCRec's SASRec (SASRec/SASRec.py + Modules.py): post-LN blocks with biased
    # Q/K/V, no output projection, no input LN, kernel-1 conv FFN of width d, LN eps 1e-5,
    # dropout 0, one head.
    m = c.model
    m.encoder = base
    m.embed_dim = dim
    m.num_blocks = max(blocks, 1)
    m.num_heads = 1
    m.ffn_dim = dim
    m.dropout = 0.0
    m.norm_style = "post_ln"
    m.attn_bias = True
    m.attn_out_proj = False
    m.input_ln = False
    m.final_ln = False
    m.ln_eps = 1e-5
    m.ffn_conv = True
    m.mlp_layers = 1
    m.mean_over_pads = True          # YoutubeDNN.py: torch.mean over all L positions

    c.optim.lr = 1e-3
    c.train.batch_size = batch
    c.train.num_epochs = epochs
    c.train.eval_every_epochs = 1.0  # the reference tests after every epoch
    c.train.log_every = 50

    c.eval.ks = (5, 20)
    c.eval.select_metric = "all/mrr@20"
    # The BPR reference masks the user's training items out of the ranking.
    c.eval.exclude_history = base == "bpr"

    p = c.pcrec = ml_collections.ConfigDict()
    p.variant = variant
    p.num_peers = peers
    p.difflr = True                  # lr·(1 + cos(π(P − i)/P))/2: 0.5× and 1×
    p.cosine = True                  # per-step cosine annealing over the run (--cos)
    p.lr_scales = ()                 # explicit per-peer factors (overrides difflr)
    p.shuffle_seeds = ()             # () = 10, 11 (one peer: 11)
    p.shuffle = "per_peer"           # or 'shared': every peer gets the trainer's batch
    p.criterion = a["criterion"]
    p.cooperation = a["cooperation"]
    p.select = ""                    # regex over parameter paths; overrides cooperation
    p.a = 30.0
    p.b = 1.0
    p.bins = 10
    p.include_max = False
    p.percent = 50.0
    p.noise_rate = 0.05
    p.noise_period = 30
    p.serve_peer = -1                # the last peer: lr 1×, seed 11
    p.l2 = 0.0                       # BPR's L2 on the gathered rows (reference default 0)
    p.neg_tries = 8

    if a["smoke"]:
        config_util.shrink(c)
        if a["dataset"] == "synthetic":
            c.dataset.options.preset = "tiny"
        m.embed_dim = m.ffn_dim = 16
        c.data.state_len = 8
        c.train.num_steps = 0
        c.train.num_epochs = 2
        c.train.eval_every_epochs = 1.0
        c.train.batch_size = 256 if base == "bpr" else 64
    return c
