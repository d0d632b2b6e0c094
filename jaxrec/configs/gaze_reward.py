r"""GazeReward (Lopez-Cardona et al., ICLR 2025, arXiv 2410.01532): a reward model over a
Llama-family decoder (tiny and random by default, or a pretrained Hugging Face checkpoint) that
reads predicted eye-tracking features, trained with the Bradley–Terry loss and scored by
pairwise accuracy.

Arguments (comma-separated after the colon):
  variant    none (baseline) | concat (GazeConcat, default) | add (GazeAdd)
  source     synthetic (default) | oasst1 | helpsteer2 (with data_dir holding train.jsonl and
             validation.jsonl; the validation file is the test split, 15 % of train (seed 42)
             the validation split)
  data_dir   local copy of the preference data
  predictor  the eye-tracking predictor (jaxrec.backbones.et_predictors documents the formats):
             proxy (default: word length, wordfreq frequency, position, punctuation) |
             bilstm (an ET1-style BiLSTM fitted to the proxy here) |
             et1:DIR (an ET1-style BiLSTM regressor directory: config.json, model.safetensors,
             tokenizer.json) | et2:DIR (a Hugging Face RoBERTa token-classification directory
             whose head gives the features)
  features   fcomb2.5 (default: all 5) | fcomb1 | fcomb2.1 | fcomb2.2 (a predictor that gives
             only TRT, like the paper's ET1, needs fcomb1)
  decoder_checkpoint
             a Hugging Face Llama / Mistral / Gemma directory (config.json, safetensors,
             tokenizer.json + tokenizer_config.json): the decoder's shape comes from its
             config.json and the special ids from its tokenizer; config.model's sizes are
             then unused, and lr is the paper's 5e-5. A jaxrec decoder directory
             (decoder.json) works too.
  regime     lora (default with decoder_checkpoint: the paper's) | full (default otherwise:
             the decoder is random-init here) | frozen (set config.model.pretrain_steps > 0
             or decoder_checkpoint first so lora/frozen start from a pretrained decoder)
  seed       training seed
  smoke      a few steps on tiny data (CI)

Paper settings kept (the authors' training setup): AdamW (0.9, 0.999), weight decay 0.1, cosine schedule with 10 %
warm-up floored at 0.7 x lr, LoRA r=8 alpha=32 dropout 0.1, projector 128 wide with dropouts
0.1 / 0.3. Changed for CPU [inferred]: a 2-layer d=64 decoder trained from scratch (no pretrained
LLM offline), lr 3e-3 (5e-5 is for a pretrained 8B model; 1e-3 barely moved the
smoke fit), the sub-word tokenizers of
jaxrec.data.preferences.

Commands:
  python -m jaxrec.main --config=configs/gaze_reward.py --workdir=/tmp/gaze_concat
  python -m jaxrec.main --config=configs/gaze_reward.py:variant=add --workdir=/tmp/gaze_add
  python -m jaxrec.main --config=configs/gaze_reward.py:source=oasst1,data_dir=$HOME/data/oasst1 --workdir=runs/oasst1_gaze
  python -m jaxrec.main --config=configs/gaze_reward.py:smoke --workdir=/tmp/smoke
  python -m jaxrec.main --config=configs/gaze_reward.py:decoder_checkpoint=$HOME/models/llama3-8b,predictor=et2:$HOME/models/et2,features=fcomb2.2 --workdir=runs/llama3_gaze
"""

import ml_collections

from jaxrec import config_util

ARGS = dict(variant="concat", source="synthetic", data_dir="", predictor="proxy", features="fcomb2.5",
            regime="", decoder_checkpoint="", seed=0, smoke=False)


def get_config(arg=None):
    a = config_util.parse_arg(arg, ARGS)
    if a["variant"] not in ("none", "concat", "add"):
        raise ValueError(f"unknown variant {a['variant']!r}; accepted: none, concat, add")
    c = ml_collections.ConfigDict()
    c.method = "gaze_reward"
    c.label = f"gaze_reward/{a['variant']}"
    c.seed = int(a["seed"])
    # The preference kind reads its own pairs (no interaction dataset is loaded); the section
    # stays so every config has the same fields.
    c.dataset = config_util.dataset_config("synthetic", None, True)
    c.data = ml_collections.ConfigDict()
    c.data.kind = "jaxrec.methods.gaze_reward.preference_task"
    c.data.source = a["source"]
    c.data.data_dir = a["data_dir"]
    c.data.val_fraction = 0.15
    c.data.split_seed = 42
    c.data.num_pairs = 3000
    c.data.data_seed = 0
    c.data.rare_chosen = 0.1
    c.data.rare_rejected = 0.4
    c.data.truncate_rejected = 0.3
    c.data.llm_piece = 3               # LLM sub-tokens of at most 3 characters
    c.data.et_piece = 5                # the ET predictor's own tokenizer
    c.data.max_len = 64
    c.data.max_et_len = 32
    c.data.predictor = a["predictor"]  # proxy | bilstm | et1:DIR | et2:DIR
    c.data.bilstm_steps = 300
    c.data.remap = "sum_split"         # ET1 path; 'first' = ET2 path (the authors' remapping)
    c.model = ml_collections.ConfigDict()
    c.model.variant = a["variant"]
    c.model.features = a["features"]
    c.model.regime = a["regime"] or ("lora" if a["decoder_checkpoint"] else "full")
    c.model.hidden_size = 64
    c.model.intermediate_size = 128
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.max_position_embeddings = 128
    c.model.pretrain_steps = 0         # > 0: causal-LM pretraining of the decoder on the pairs' texts (cached)
    # A Hugging Face Llama-family directory or a saved jaxrec decoder to start from; its shape
    # replaces the five sizes above.
    c.model.decoder_checkpoint = a["decoder_checkpoint"]
    c.model.lora_rank = 8
    c.model.lora_alpha = 32.0
    c.model.lora_dropout = 0.1
    c.model.proj_width = 128
    c.model.p1 = 0.1
    c.model.p2 = 0.3
    c.optim = ml_collections.ConfigDict()
    # 5e-5 is the paper's for a pretrained LLM; a decoder trained from scratch here needs more.
    c.optim.lr = 5e-5 if a["decoder_checkpoint"] else 3e-3
    c.optim.weight_decay = 0.1
    c.optim.warmup_fraction = 0.1
    c.optim.min_lr_ratio = 0.7
    c.train = config_util.train_section(batch_size=32, num_epochs=4, eval_every=100, log_every=50,
                                        max_checkpoints=1)
    c.mesh = config_util.mesh_section()
    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 64
    c.eval.select_metric = "accuracy"
    c.eval.max_queries = 0
    c.evals = ml_collections.ConfigDict()
    c.evals.pairwise = ml_collections.ConfigDict({"type": "pairwise", "prefix": ""})
    if a["smoke"]:
        c.data.num_pairs = 60
        c.data.bilstm_steps = 5
        c.model.hidden_size = 32
        c.model.intermediate_size = 64
        c.train.batch_size = 8
        c.train.num_steps = 4
        c.train.eval_every = 4
        c.train.log_every = 1
        c.eval.batch_size = 16
    return c
