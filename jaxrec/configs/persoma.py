r"""PERSOMA (Hebert et al., arXiv 2408.00960; spec llm.md §1): a user's history, embedded by a frozen
sentence encoder and resampled into soft-prompt tokens, before a small decoder that generates the
genres of the user's next items; scored by genre-set F1.

Arguments (comma-separated after the colon):
  variant    persoma (default: a resampler of the history embeddings) |
             text (baseline: the history written into the prompt, truncated to context_tokens) |
             uem (UEM-style baseline [inferred]: the mean history embedding -> MLP -> num_tokens tokens)
  resampler  perceiver (default; k = num_tokens) | mlp | transformer (k = n)   [variant persoma]
  sampling   recent (default) | random          first-stage sampling of the n history items
  n          history length (default 50; the grid uses 10, 50, 200)
  regime     frozen (default: adapter only, decoder frozen) | lora (adapter + q/v LoRA) | full
             (text prompting has no adapter: frozen is refused, use lora or full)
  dataset    synthetic (default: MovieLens-like users with long histories and 1..5 ratings that
             follow their genres) | ml100k (MovieLens-100K from the recbole wheel: titles + 19 genres,
             no descriptions)
  encoder    minilm (default: offline all-MiniLM-L6-v2, mean-pooled, 384-d) | hash (hashed bag of
             words through a fixed random projection, for quick runs) | a BERT-family checkpoint
             directory (mean-pooled like MiniLM)
  decoder_checkpoint  a Hugging Face Llama / Mistral / Gemma directory (config.json, safetensors,
             tokenizer.json) as the decoder, read with its own tokenizer (bos / eos / pad ids are
             the tokenizer's; without a pad token, as Llama 3, padding uses eos under a zero
             mask); default: a small Llama pretrained here on the item texts (config.decoder)
  context    text prompting's history budget in tokens (default 96)
  steps      training steps (default 400)
  seed       training seed
  smoke      a few steps on tiny data (CI)

Settings [inferred; the paper's optimiser, steps, LoRA rank, n and m are UNVERIFIED, spec §1.3]:
the decoder is a 2-layer d=64 Llama pretrained here on the item texts (config.decoder,
cached) unless decoder_checkpoint names one; its frozen weights are stored as
config.decoder.frozen_dtype (bfloat16; trainable leaves stay float32); AdamW lr 3e-3 with 10 %
warm-up and cosine decay, LoRA rank 8 on q/v, Perceiver with 8
latents, targets = the 3 most frequent genres of the user's next 10 items rated >= 4.

Commands:
  python -m jaxrec.main --config=configs/persoma.py --workdir=/tmp/persoma
  python -m jaxrec.main --config=configs/persoma.py:resampler=mlp,regime=lora,n=200 --workdir=/tmp/p_mlp
  python -m jaxrec.main --config=configs/persoma.py:variant=text,regime=full --workdir=/tmp/p_text
  python -m jaxrec.main --config=configs/persoma.py:dataset=ml100k --workdir=/tmp/p_ml100k
  python -m jaxrec.main --config=configs/persoma.py:smoke --workdir=/tmp/smoke
  python -m jaxrec.main --config=configs/persoma.py:decoder_checkpoint=/models/Llama-3.2-1B,regime=lora \
      --workdir=/tmp/p_llama
"""

import ml_collections

from jaxrec import config_util
from jaxrec.backbones import decoder_lm

ARGS = dict(variant="persoma", resampler="perceiver", sampling="recent", n=50, regime="frozen",
            dataset="synthetic", encoder="minilm", context=96, steps=400, seed=0, smoke=False,
            decoder_checkpoint="")
VARIANTS = ("persoma", "text", "uem")


def synthetic_dataset(smoke: bool) -> ml_collections.ConfigDict:
    """The MovieLens-like synthetic preset: users ("sessions") with long histories and ratings."""
    c = config_util.dataset_config("synthetic")
    c.options.num_sessions = 120 if smoke else 1000
    c.options.num_items = 200 if smoke else 600
    c.options.min_len = 20
    c.options.max_len = 60 if smoke else 400
    c.options.mean_len = 35.0 if smoke else 120.0
    c.options.with_ratings = True
    return c


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    if a["variant"] not in VARIANTS:
        raise ValueError(f"unknown variant {a['variant']!r}; accepted: {', '.join(VARIANTS)}")
    smoke = a["smoke"]
    c = ml_collections.ConfigDict()
    c.method = "persoma"
    resampler = {"persoma": a["resampler"], "text": "none", "uem": "pooled"}[a["variant"]]
    c.label = f"persoma/{a['variant']}" + (f"-{resampler}" if a["variant"] == "persoma" else "") + \
        f"/{a['sampling']}/n{a['n']}/{a['regime']}"
    c.seed = int(a["seed"])
    if a["dataset"] == "synthetic":
        c.dataset = synthetic_dataset(smoke)
    elif a["dataset"] == "ml100k":
        c.dataset = config_util.dataset_config("ml100k_recbole")
    else:
        raise ValueError(f"unknown dataset {a['dataset']!r}; accepted: synthetic, ml100k")
    c.data = ml_collections.ConfigDict()
    c.data.kind = "jaxrec.data.persoma.persoma_task"
    c.data.sampling = a["sampling"]
    c.data.history_len = int(a["n"])
    c.data.prompt_mode = "text" if a["variant"] == "text" else "soft"
    c.data.context_tokens = int(a["context"])
    c.data.target_items = 10
    c.data.min_history = 10
    c.data.min_rating = 4.0
    c.data.target_rule = "top"
    c.data.target_top = 3
    c.data.target_tokens = 16
    c.data.train_cuts = 4
    c.data.data_seed = 0
    c.data.encoder = a["encoder"]
    c.data.hash_dim = 64
    c.data.encoder_max_len = 32
    c.data.emb_cache_dir = ""
    c.data.max_train_examples = 0
    c.data.max_validation_examples = 0
    c.data.max_test_examples = 0
    c.decoder = decoder_lm.default_section(pretrain_steps=400, checkpoint=a["decoder_checkpoint"])
    c.decoder.frozen_dtype = "bfloat16"
    c.model = ml_collections.ConfigDict()
    c.model.resampler = resampler
    c.model.regime = a["regime"]
    c.model.adapter_hidden = 128
    c.model.adapter_layers = 2
    c.model.adapter_heads = 4
    c.model.num_tokens = 8
    c.model.use_rating = True
    c.model.lora_rank = 8
    c.model.lora_alpha = 16.0
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 3e-3
    c.optim.weight_decay = 0.01
    c.optim.warmup_fraction = 0.1
    c.optim.clip_norm = 1.0
    c.train = config_util.train_section(batch_size=32, num_epochs=1, num_steps=int(a["steps"]),
                                        eval_every=int(a["steps"]), log_every=50, max_checkpoints=1)
    c.mesh = config_util.mesh_section()
    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 64
    c.eval.select_metric = "f1"
    c.eval.max_queries = 0
    c.eval.average = "macro"
    c.evals = ml_collections.ConfigDict()
    c.evals.genres = ml_collections.ConfigDict({"type": "genres", "prefix": ""})
    if smoke:
        c.data.encoder = "hash"
        c.data.train_cuts = 2
        c.decoder.update(dict(pretrain_steps=20, hidden_size=32, intermediate_size=64, max_position_embeddings=320))
        c.model.adapter_hidden = 32
        c.model.adapter_layers = 1
        c.train.batch_size = 8
        c.train.num_steps = 4
        c.train.eval_every = 4
        c.train.log_every = 1
        c.eval.batch_size = 16
        c.eval.max_queries = 16
    return c
