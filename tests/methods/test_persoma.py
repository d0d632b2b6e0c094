"""PERSOMA end to end on the tiny synthetic task: arrays, prefix layout and masks, the masked
target loss, regimes, a loss that falls, generation + genre F1 (spec llm.md §1)."""

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.backbones.generation import check_left_padded
from jaxrec.data import persoma as pdata
from jaxrec.data import tasks
from jaxrec.data.preferences import EOS
from jaxrec.evaluators.genres import GenreF1Evaluator, parse_genres, set_prf
from jaxrec.methods import persoma
from tests.train.helpers import get_config


def _config(arg="smoke"):
    return get_config("persoma.py", arg)


@pytest.fixture(scope="module")
def setup():
    config = _config("smoke,n=12")
    dataset = tasks.load_dataset(config)
    return config, dataset, tasks.build_task(config, dataset)


def test_task_arrays(setup):
    config, _, task = setup
    tr = task.train
    n = int(config.data.history_len)
    assert tr["hist"].shape[1] == n
    # Recent sampling keeps min(n, available) items.
    np.testing.assert_array_equal(tr["hist_mask"].sum(1), np.minimum(tr["num_history"], n))
    assert tr["num_history"].min() >= int(config.data.min_history)
    check_left_padded(tr["prompt_mask"])
    tok, names = task.extras["tokenizer"], task.extras["genre_names"]
    for i in range(5):
        want = {j for j in np.nonzero(tr["target_genres"][i])[0]}
        assert 1 <= len(want) <= int(config.data.target_top)
        text = tok.decode(tr["target_ids"][i])
        assert parse_genres(text, names) == want, text
        last = int(tr["target_mask"][i].sum()) - 1
        assert tr["target_ids"][i, last] == EOS
    assert task.extras["item_emb"].shape[0] == task.num_items


def test_text_prompt_is_truncated(setup):
    config, dataset, task = setup
    cfg = _config("smoke,variant=text,regime=full,n=12,context=24")
    dec = task.extras["decoder"]
    texts = pdata.decoder_lm.item_texts(dataset.items, dataset.num_items)
    s = dataset.splits["validation"]
    ex = pdata.user_examples(s, task.extras["item_genres"], cuts=1, target_items=10, min_history=10,
                             min_rating=4.0, rule="top", top=3)[:4]
    a = pdata._arrays(s, ex, cfg, dec, texts, task.extras["genre_names"], np.random.default_rng(0))
    prompt_extra = len(dec.tokenizer.encode(pdata.PROMPT)) + 1
    real = a["prompt_mask"].sum(1)
    assert real.max() <= 24 + prompt_extra
    # The budget holds fewer rendered items than the 12 sampled ones.
    sep = dec.tokenizer.encode(pdata.SEP)[0]
    rendered = [(a["prompt_ids"][i][a["prompt_mask"][i] == 1] == sep).sum() for i in range(len(ex))]
    assert 0 < max(rendered) < 12
    # The kept items are the most recent: the last rendered item is the last history item.
    i = 0
    last_text = pdata.render_interaction(texts[a["hist"][i, a["hist_mask"][i].sum() - 1]],
                                         a["hist_rating"][i, a["hist_mask"][i].sum() - 1])
    ids = list(a["prompt_ids"][i][a["prompt_mask"][i] == 1])
    want = dec.tokenizer.encode(last_text) + [sep] + dec.tokenizer.encode(pdata.PROMPT)
    assert ids[-len(want):] == want


def _batch(task, b=4):
    return {k: jnp.asarray(v[:b]) for k, v in task.train.items()}


def test_prefix_layout_and_masks(setup):
    _, _, task = setup
    cfg = _config("smoke,n=12,resampler=mlp")
    state = persoma.init(jax.random.key(0), task, cfg)
    consts = persoma.make_consts(cfg, task)
    variables = persoma.full_params(state, consts)
    model = state.model
    b = _batch(task)
    args = persoma._inputs(b, consts)
    x, m = model.apply(variables, *args, method=persoma.PersomaModel.prefix)
    n, p = b["hist"].shape[1], b["prompt_ids"].shape[1]
    assert x.shape == (4, n + p, model.config.hidden_size)
    np.testing.assert_array_equal(np.asarray(m), np.concatenate([b["hist_mask"], b["prompt_mask"]], 1))
    # Soft block = the resampler's output; prompt block = the decoder's token embeddings.
    soft, _ = model.apply(variables, model.apply(variables, consts["item_emb"], b["hist"], b["hist_rating"],
                                                 method=persoma.PersomaModel.history),
                          b["hist_mask"], method=lambda mdl, e, mk: mdl.adapter(e, mk))
    np.testing.assert_allclose(np.asarray(x[:, :n]), np.asarray(soft), atol=1e-6)
    emb = variables["params"]["decoder"]["embed_tokens"]["embedding"][b["prompt_ids"]]
    np.testing.assert_allclose(np.asarray(x[:, n:]), np.asarray(emb), atol=1e-6)
    # The logits are the decoder's at positions n+p-1 .. n+p+T-2 of [prefix ; target].
    logits = model.apply(variables, *args, b["target_ids"], b["target_mask"])
    t = b["target_ids"].shape[1]
    full = jnp.concatenate([x, variables["params"]["decoder"]["embed_tokens"]["embedding"][b["target_ids"]]], 1)
    fm = jnp.concatenate([m, b["target_mask"]], 1)
    ref = persoma.LlamaModel(model.config).apply({"params": variables["params"]["decoder"]},
                                                 inputs_embeds=full, attention_mask=fm).logits
    assert logits.shape == (4, t, model.config.vocab_size)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref[:, n + p - 1:n + p - 1 + t]), atol=1e-4)


def test_target_loss_masks_padding():
    logits = jax.random.normal(jax.random.key(0), (2, 4, 7))
    ids = jnp.asarray([[1, 2, 3, 0], [4, 5, 0, 0]])
    mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss, _ = persoma.target_loss(logits, ids, mask)
    lp = jax.nn.log_softmax(logits)
    by_hand = -(lp[0, 0, 1] + lp[0, 1, 2] + lp[0, 2, 3] + lp[1, 0, 4] + lp[1, 1, 5]) / 5
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)
    loss2, _ = persoma.target_loss(logits, ids.at[1, 3].set(6), mask)      # a padded slot
    assert float(loss2) == pytest.approx(float(loss), rel=1e-6)


def _paths(tree):
    return {"/".join(k) for k in flax.traverse_util.flatten_dict(tree)} if tree else set()


def test_regimes_split_trainable_and_consts(setup):
    _, _, task = setup
    seen = {}
    for regime in ("frozen", "lora", "full"):
        cfg = _config(f"smoke,n=12,regime={regime}")
        state = persoma.init(jax.random.key(0), task, cfg)
        consts = persoma.make_consts(cfg, task)
        train, frozen = _paths(state.params), _paths(consts["frozen"])
        assert not train & frozen
        seen[regime] = (train, frozen)
    tr, fr = seen["frozen"]
    assert tr and all(p.startswith("adapter/") for p in tr)
    assert all(p.startswith("decoder/") for p in fr) and "decoder/lm_head/kernel" in fr
    tr, fr = seen["lora"]
    lora = {p for p in tr if p.startswith("decoder/")}
    assert lora and all(p.endswith(("lora_a", "lora_b")) for p in lora)
    assert not any("lora" in p for p in fr)
    tr, fr = seen["full"]
    assert not fr and "decoder/embed_tokens/embedding" in tr
    # The frozen consts are the pretrained weights, unchanged.
    dec = task.extras["decoder"].params
    np.testing.assert_array_equal(np.asarray(persoma.make_consts(_config("smoke,n=12"), task)["frozen"]["decoder"]
                                             ["embed_tokens"]["embedding"]), np.asarray(dec["embed_tokens"]["embedding"]))
    with pytest.raises(ValueError, match="trains nothing"):
        persoma.init(jax.random.key(0), task, _config("smoke,variant=text,regime=frozen"))


def test_loss_falls_and_evaluator(setup):
    _, _, task = setup
    cfg = _config("smoke,n=12,resampler=perceiver,regime=full,steps=60")
    state = persoma.init(jax.random.key(0), task, cfg)
    consts = persoma.make_consts(cfg, task)
    step = jax.jit(persoma.train_step)
    rng = np.random.default_rng(0)
    losses = []
    for s in range(60):
        idx = rng.integers(0, task.num_train, 16)
        state, m = step(state, {k: v[idx] for k, v in task.train.items()}, jax.random.key(s), consts)
        losses.append(float(m["loss"]))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    # Generation + genre F1: the evaluator's numbers equal set F1 of its own decoded answers.
    ev = GenreF1Evaluator(persoma, task, cfg, cfg.eval)
    out = ev.run(state, consts, "validation")
    answers = ev.answers(state, consts, "validation")
    gold = task.validation.arrays["target_genres"]
    f1 = [set_prf(parse_genres(a, task.extras["genre_names"]), set(np.nonzero(g)[0]))[2]
          for a, g in zip(answers, gold)]
    assert out["f1"] == pytest.approx(float(np.mean(f1)))
    assert len(answers) == task.validation.size
    toks = persoma.predict(state, {k: v[:4] for k, v in task.validation.arrays.items()}, consts)
    assert toks.shape == (4, task.validation.arrays["target_ids"].shape[1])
