"""SMORL (Stamenkovic et al., WSDM 2022; rl.md §7): the three rewards on a hand example,
one step's loss against a NumPy computation from the network outputs, the frozen item
embeddings (unchanged by training, absent from checkpoints, loaded from a real supervised
GRU4Rec run) and a smoke run with every encoder."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxrec import experiment
from jaxrec.data.tasks import build_task
from jaxrec.methods import smorl
from jaxrec.train.data import BatchSource

from tests.train.helpers import get_config

R2 = 1 / math.sqrt(2)


def _holds(tree, table) -> bool:
    """Whether some leaf of ``tree`` (or a member of a stacked leaf) equals ``table``."""
    for leaf in jax.tree.leaves(tree):
        leaf = np.asarray(leaf)
        if leaf.shape[-2:] == table.shape and any(
                np.allclose(m, table) for m in leaf.reshape((-1,) + table.shape)):
            return True
    return False


@pytest.fixture(scope="module")
def pretrained(tiny, tmp_path_factory):
    """(workdir, item table [N + 1, D]) of a 2-step supervised GRU4Rec run on tiny."""
    workdir = str(tmp_path_factory.mktemp("sup_gru"))
    out = experiment.run(get_config("supervised.py", "encoder=gru4rec,smoke"), workdir,
                         dataset=tiny, progress=False)
    table = np.asarray(out["state"].params["params"]["encoder"]["item_embed"]["embedding"])
    return workdir, table


# ------------------------------------------------------------------ rewards
def test_rewards_on_a_hand_example():
    n, pad = 4, 4
    table = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 1.0]])  # row 4: pad
    consts = {"item_embeddings": table, "less_popular": jnp.array([True, False, True, False])}
    batch = {"state": jnp.array([[0, 2, pad], [pad, pad, pad], [3, pad, pad], [1, 2, 3]]),
             "len_state": jnp.array([2, 1, 1, 3]), "is_buy": jnp.array([1, 0, 0, 1])}
    logits = jax.nn.one_hot(jnp.array([3, 0, 3, 0]), n)          # â = 3, 0, 3, 0
    r_acc, r_div, r_nov = smorl.smorl_rewards(logits, batch, consts, smorl.Hyper())
    np.testing.assert_allclose(r_acc, [1.0, 0.2, 0.2, 1.0], rtol=1e-6)
    # last items 2, pad, 3, 3: (1,1)·(-1,0) -> 1 + 1/√2; pad (0,1)·(1,0) -> 1; same -> 0;
    # (-1,0)·(1,0) -> 2
    np.testing.assert_allclose(r_div, [1 + R2, 1.0, 0.0, 2.0], rtol=1e-6)
    np.testing.assert_array_equal(r_nov, [0.0, 1.0, 0.0, 1.0])
    zero = smorl.smorl_rewards(logits, batch, consts, smorl.Hyper(div_empty="zero"))[1]
    np.testing.assert_allclose(zero, [1 + R2, 0.0, 0.0, 2.0], rtol=1e-6)   # empty history


# ------------------------------------------------------------------ one step by hand
W = (1.0, 0.5, 2.0)


def _loss_by_hand(main_s, main_next, tgt_next, batch, table, less, per_head_argmax=False):
    """NumPy SMORL loss (rl.md §7) from given network outputs, float64."""
    a, done = batch["action"], batch["is_done"]
    i = np.arange(len(a))
    a_hat = main_s["s"].argmax(1)
    last = batch["state"][i, batch["len_state"] - 1]
    x, y = table[last], table[a_hat]
    cos = (x * y).sum(1) / (np.maximum(np.linalg.norm(x, axis=1), 1e-6)
                            * np.maximum(np.linalg.norm(y, axis=1), 1e-6))
    rewards = [np.where(batch["is_buy"] > 0, 1.0, 0.2), 1 - cos, less[a_hat].astype(float)]
    a_star = sum(w * main_next[h] for w, h in zip(W, smorl.Q_HEADS)).argmax(1)
    td = 0.0
    for w, h, r in zip(W, smorl.Q_HEADS, rewards):
        pick = main_next[h].argmax(1) if per_head_argmax else a_star
        target = r + 0.5 * np.where(done, 0.0, tgt_next[h][i, pick])
        td = td + w * 0.5 * (target - main_s[h][i, a]) ** 2
    logp = main_s["s"] - main_s["s"].max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -logp[i, a].mean() + 1.0 * td.mean()


@pytest.fixture(scope="module")
def gru_setup(tiny):
    """GRU4Rec (no dropout, so training-mode outputs are the eval outputs), w = (1, .5, 2)."""
    config = get_config("smorl.py", "encoder=gru4rec,smoke,weights=1,0.5,2")
    task = build_task(config, tiny)
    return config, task, smorl.make_consts(config, task)


def test_one_step_loss_equals_numpy_and_consts_stay_frozen(gru_setup):
    config, task, consts = gru_setup
    assert config.rl.smorl_weights == W and config.rl.smorl_embeddings == "random"
    state = smorl.init(jax.random.key(3), task, config)
    source = BatchSource(task.train, 8, seed=0)
    batch = source[0]
    batch["is_done"][:2] = True
    batch["is_buy"][2:4] = 1
    batch["state"][5], batch["len_state"][5] = task.num_items, 1    # an empty history
    rng = jax.random.key(11)
    main_i = 0 if bool(jax.random.bernoulli(jax.random.split(rng)[0])) else 1
    member = lambda i: jax.tree.map(lambda x: x[i], state.params)
    out = lambda i, s, l: {k: np.asarray(v, np.float64) for k, v in
                           state.net.apply(member(i), batch[s], batch[l]).items()}
    main_s = out(main_i, "state", "len_state")
    main_next = out(main_i, "next_state", "len_next_state")
    tgt_next = out(1 - main_i, "next_state", "len_next_state")
    table = np.asarray(consts["item_embeddings"], np.float64)
    less = np.asarray(consts["less_popular"])
    want = _loss_by_hand(main_s, main_next, tgt_next, batch, table, less)
    # The example must tell apart a swapped selector/target and per-head bootstraps.
    swapped = _loss_by_hand(main_s, tgt_next, main_next, batch, table, less)
    per_head = _loss_by_hand(main_s, main_next, tgt_next, batch, table, less, True)
    assert abs(want - swapped) > 1e-4 and abs(want - per_head) > 1e-4

    frozen = jax.tree.map(np.array, consts)
    before = jax.tree.map(np.array, state.params)      # copies: the state is donated
    step = jax.jit(smorl.train_step, donate_argnums=0)      # as the trainer calls it
    new, metrics = step(state, batch, rng, consts)
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
    after = jax.tree.map(np.array, new.params)
    for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a[1 - main_i], b[1 - main_i])   # target untouched
    for k in range(3):
        new, metrics = step(new, source[k + 1], jax.random.key(20 + k), consts)
    assert np.isfinite(float(metrics["loss"]))
    # The embeddings are a const: bit-identical after the steps, rebuilt identically
    # (a resumed run gets the same), and nowhere in the trained state.
    rebuilt = smorl.make_consts(config, task)
    for k in consts:
        np.testing.assert_array_equal(np.asarray(consts[k]), frozen[k])
        np.testing.assert_array_equal(np.asarray(rebuilt[k]), frozen[k])
    assert not _holds(new, frozen["item_embeddings"])


# ------------------------------------------------------------------ pretrained embeddings
def test_embeddings_load_from_a_supervised_gru4rec_run(pretrained, gru_setup):
    workdir, table = pretrained
    config, task, _ = gru_setup
    config = config.copy_and_resolve_references()
    config.rl.smorl_embeddings = "pretrained"
    config.rl.smorl_pretrained = workdir
    consts = smorl.make_consts(config, task)
    np.testing.assert_array_equal(np.asarray(consts["item_embeddings"]), table)
    assert table.shape == (task.num_items + 1, config.model.embed_dim)

    config.rl.smorl_pretrained = ""
    with pytest.raises(ValueError, match=r"config\.rl\.smorl_pretrained"):
        smorl.make_consts(config, task)
    config.rl.smorl_pretrained = os.path.join(workdir, "nope")
    with pytest.raises(ValueError, match="no checkpoints/ directory"):
        smorl.make_consts(config, task)
    assert not os.path.exists(config.rl.smorl_pretrained)       # nothing created there
    with pytest.raises(ValueError, match=f"N={task.num_items - 1} items"):
        smorl.load_item_embeddings(workdir, task.num_items - 1)
    # Without smoke, configs/smorl.py needs the pretrained run.
    assert get_config("smorl.py", "").rl.smorl_embeddings == "pretrained"


# ------------------------------------------------------------------ smoke runs
@pytest.mark.parametrize("encoder", ["gru4rec", "caser", "nextitnet", "sasrec"])
def test_smoke_run_each_encoder(encoder, tiny, pretrained, tmp_path):
    # GRU4Rec runs on the pretrained embeddings end to end; the others on random ones.
    arg = f"encoder={encoder},smoke" + (f",pretrained={pretrained[0]}"
                                        if encoder == "gru4rec" else "")
    config = get_config("smorl.py", arg)
    if encoder == "sasrec":
        # SASRec's dropout inside the vmapped network pair triples the XLA compile time on
        # CPU; the dropout path is SQN's (tests/train), so this run leaves it out.
        config.model.dropout = 0.0
    out = experiment.run(config, str(tmp_path), dataset=tiny, progress=False)
    val = out["validation"]
    assert out["steps_done"] == 2 and out["best_step"] == 2
    for key in ("cv@10", "novel_cv@10", "repetitions@10", "div_reward", "nov_reward",
                "offpolicy_ndcg@10", "purchase/offpolicy_ndcg@10"):
        assert np.isfinite(val[f"coverage/{key}"]), key
    assert 0 < val["coverage/cv@10"] <= 1
    assert set(out["test"]) == set(val)
    # The checkpoint holds the two networks and their optimizers, never the embeddings.
    saved = ocp.StandardCheckpointer().restore(
        os.path.join(str(tmp_path), "checkpoints", "2", "state"))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(saved)]
    assert not [p for p in paths if "item_embeddings" in p or "less_popular" in p]
    assert set(saved["params"]["params"]) == {"encoder", "head_s", "head_q_acc",
                                              "head_q_div", "head_q_nov"}
    frozen = smorl.make_consts(config, build_task(config, tiny))["item_embeddings"]
    assert not _holds(saved, np.asarray(frozen))
