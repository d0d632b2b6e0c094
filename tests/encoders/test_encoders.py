"""Tests for jaxrec.encoders (specs/rl.md §2, specs/iisan.md §1.8, intent_pcrec.md §2.5).

Every encoder is compared against an independent NumPy (float64) re-derivation of the
reference's TF1 computation, run on random parameters (not the initialisers' zeros and
ones) so that LN biases, gate biases and the pad row are all non-trivial. On top: shapes,
padding invariance, causality, analytic parameter counts (via jax.eval_shape), initial
values and dropout behaviour.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from ml_collections import ConfigDict

from jaxrec.encoders import ENCODERS, RECBOLE_SASREC, EncoderConfig, make_encoder
from jaxrec.encoders.common import REFERENCE_MASK_VALUE

N = 30          # items
L = 10          # state length
# Histories in 0-based item ids: empty, one item, short, exactly L, long (cut to last L).
HISTORIES = [[], [7], [3, 14, 3, 25], list(range(10, 20)), [1, 2, 3, 4, 5, 6, 7], [29, 0, 8]]
B = len(HISTORIES)
CAUSAL = ("gru4rec", "nextitnet", "sasrec")


def make_batch(histories, padding):
    """Right: ids 0..N-1, pad N after, len = max(|h|, 1). Left: ids +1, pad 0 before."""
    items = np.zeros((len(histories), L), np.int32)
    lengths = np.zeros(len(histories), np.int32)
    for b, h in enumerate(histories):
        h = h[-L:]
        if padding == "right":
            items[b] = N
            items[b, :len(h)] = h
            lengths[b] = max(len(h), 1)
        else:
            items[b, L - len(h):] = np.asarray(h, np.int32) + 1
            lengths[b] = len(h)
    return items, lengths


def random_params(model, items, lengths, seed=1, scale=0.3):
    """Parameters with the model's shapes and N(0, scale^2) values, made in NumPy.

    Shapes come from jax.eval_shape (nothing compiled); random values (rather than the
    initialisers' zeros/ones) make LN biases, gate biases and the pad row non-trivial.
    Initial values themselves are checked in test_initial_values.
    """
    shapes = jax.eval_shape(lambda k, i, n: model.init(k, i, n, train=False),
                            jax.random.key(0), items, lengths)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(
        scale * rng.standard_normal(x.shape).astype(np.float32)), shapes)


@functools.lru_cache(maxsize=None)
def build(name, padding="right", **overrides):
    """(model, random params, jitted fn(params, items, lengths, train=False, rng=None)
    -> (state [B, S], sequence [B, L, D] or None)), one compile per (config, train)."""
    cfg = EncoderConfig(padding=padding, **overrides)
    model = ENCODERS[name](N, cfg)
    items, lengths = make_batch(HISTORIES, padding)
    params = random_params(model, items, lengths)
    has_seq = hasattr(model, "sequence")

    def run(p, items, lengths, train=False, rng=None):
        rngs = None if rng is None else {"dropout": rng}
        v = {"params": p}
        state = model.apply(v, items, lengths, train=train, rngs=rngs)
        seq = (model.apply(v, items, lengths, train=train, rngs=rngs, method="sequence")
               if has_seq and not train else None)
        return state, seq

    return model, params, jax.jit(run, static_argnames="train")


def np_(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def np_ln(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------- NumPy references
def ref_gru(p, items, lengths, padding):
    """TF1 GRUCell under dynamic_rnn(sequence_length=len): h after len steps."""
    p = np_(p)
    E = p["item_embed"]["embedding"]
    H = p["gate_bias"].shape[0] // 2
    out = np.zeros((items.shape[0], H))
    for b in range(items.shape[0]):
        h = np.zeros(H)
        steps = range(lengths[b]) if padding == "right" else range(L - lengths[b], L)
        for t in steps:
            x = E[items[b, t]]
            g = sigmoid(np.concatenate([x, h]) @ p["gate_kernel"] + p["gate_bias"])
            r, u = g[:H], g[H:]
            c = np.tanh(np.concatenate([x, r * h]) @ p["candidate_kernel"] + p["candidate_bias"])
            h = u * h + (1 - u) * c
        out[b] = h
    return out


def ref_caser(p, items, pad_id, cfg):
    p = np_(p)
    x = p["item_embed"]["embedding"][items] * (items != pad_id)[..., None]   # [B, L, D]
    feats = []
    for h in cfg.filter_heights:
        W, bias = p[f"h_conv_{h}"]["kernel"], p[f"h_conv_{h}"]["bias"]      # [h, D, F]
        conv = np.stack([np.einsum("bhd,hdf->bf", x[:, t:t + h], W) + bias
                         for t in range(L - h + 1)], axis=1)
        feats.append(np.maximum(conv, 0).max(axis=1))
    v = np.maximum(np.einsum("bld,lv->bvd", x, p["v_kernel"]) + p["v_bias"][None, :, None], 0)
    return np.concatenate(feats + [v.reshape(len(items), -1)], axis=1)


def ref_causal_conv(x, W, bias, dil):
    """out[t] = sum_i W[i] x[t - (k-1-i) dil] (zero before the start) + bias."""
    k = W.shape[0]
    out = np.zeros(x.shape[:2] + (W.shape[2],)) + bias
    for t in range(x.shape[1]):
        for i in range(k):
            s = t - (k - 1 - i) * dil
            if s >= 0:
                out[:, t] += x[:, s] @ W[i]
    return out


def ref_nextitnet_seq(p, items, pad_id, cfg):
    p = np_(p)
    mask = (items != pad_id)[..., None].astype(np.float64)
    x = p["item_embed"]["embedding"][items] * mask
    for i, d in enumerate(cfg.dilations):
        blk = p[f"block_{i}"]
        h = x
        for j, dil in enumerate((d, 2 * d)):
            h = ref_causal_conv(h, blk[f"conv{j + 1}"]["kernel"], blk[f"conv{j + 1}"]["bias"], dil)
            h = np.maximum(np_ln(h, blk[f"ln{j + 1}"], cfg.ln_eps), 0)
        x = (x + h) * mask
    return x


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def ref_sasrec_seq(p, items, pad_id, cfg):
    """kang205/SQN TF1 SASRec, including the reference's "sums to zero" key/query masks."""
    p = np_(p)
    Hn, D = cfg.num_heads, cfg.embed_dim
    dh = D // Hn
    mask = (items != pad_id)[..., None].astype(np.float64)
    x = (p["item_embed"]["embedding"][items] + p["pos_embed"][None]) * mask
    tril = np.tril(np.ones((L, L)))
    for i in range(cfg.num_blocks):
        blk = p[f"block_{i}"]
        a = blk["attention"]
        q_in = np_ln(x, blk["ln_attn"], cfg.ln_eps)
        Q = q_in @ a["query"]["kernel"] + a["query"]["bias"]
        K = x @ a["key"]["kernel"] + a["key"]["bias"]
        V = x @ a["value"]["kernel"] + a["value"]["bias"]
        key_ok = np.sign(np.abs(x.sum(-1)))            # keys whose vector sums to 0 -> pad
        query_ok = np.sign(np.abs(q_in.sum(-1)))
        outs = []
        for h in range(Hn):
            sl = slice(h * dh, (h + 1) * dh)
            z = Q[..., sl] @ np.swapaxes(K[..., sl], 1, 2) / np.sqrt(dh)
            z = np.where(key_ok[:, None, :] == 0, REFERENCE_MASK_VALUE, z)
            z = np.where(tril[None] == 0, REFERENCE_MASK_VALUE, z)
            w = _softmax(z) * query_ok[:, :, None]
            outs.append(w @ V[..., sl])
        h_out = np.concatenate(outs, -1) + q_in
        f = np_ln(h_out, blk["ln_ffn"], cfg.ln_eps)
        ff = blk["ffn"]
        inner = np.maximum(f @ ff["inner"]["kernel"] + ff["inner"]["bias"], 0)
        x = (inner @ ff["outer"]["kernel"] + ff["outer"]["bias"] + f) * mask
    return np_ln(x, p["final_ln"], cfg.ln_eps)


def ref_post_ln_seq(p, items, pad_id, cfg):
    """IISAN's post-LN user encoder with its additive -1e9 causal+padding mask."""
    p = np_(p)
    Hn, D = cfg.num_heads, cfg.embed_dim
    dh = D // Hn
    valid = items != pad_id
    x = p["item_embed"]["embedding"][items] * valid[..., None] + p["pos_embed"][None]
    x = np_ln(x, p["input_ln"], cfg.ln_eps)
    allowed = valid[:, None, :] & (np.tril(np.ones((L, L))) > 0)[None]
    additive = np.where(allowed, 0.0, -1e9)
    for i in range(cfg.num_blocks):
        blk = p[f"block_{i}"]
        a = blk["attention"]
        Q, K, V = (x @ a[n]["kernel"] for n in ("query", "key", "value"))
        heads = []
        for h in range(Hn):
            sl = slice(h * dh, (h + 1) * dh)
            z = Q[..., sl] @ np.swapaxes(K[..., sl], 1, 2) / np.sqrt(dh) + additive
            heads.append(_softmax(z) @ V[..., sl])
        x = np_ln(x + np.concatenate(heads, -1) @ a["out"]["kernel"], blk["ln_attn"], cfg.ln_eps)
        ff = blk["ffn"]
        f = np.maximum(x @ ff["inner"]["kernel"] + ff["inner"]["bias"], 0)
        x = np_ln(x + f @ ff["outer"]["kernel"] + ff["outer"]["bias"], blk["ln_ffn"], cfg.ln_eps)
    return x


def read_np(seq, lengths, padding):
    idx = lengths - 1 if padding == "right" else np.full(len(lengths), L - 1)
    return seq[np.arange(len(seq)), idx]


POST_LN = dict(norm_style="post_ln", num_blocks=2, num_heads=2, ffn_dim=256, ln_eps=1e-6)


# ----------------------------------------------------------------------- tests
def states(fn, params, items, lengths, **kw):
    return np.asarray(fn(params, items, lengths, **kw)[0])


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("name,dim", [("gru4rec", 64), ("caser", 112), ("nextitnet", 64),
                                      ("sasrec", 64)])
def test_shapes_and_state_dim(name, dim, padding):
    model, params, fn = build(name, padding)
    items, lengths = make_batch(HISTORIES, padding)
    assert model.state_dim == dim
    s, seq = fn(params, items, lengths)
    chex.assert_shape(s, (B, dim))
    chex.assert_tree_all_finite(s)
    if name in CAUSAL:
        chex.assert_shape(seq, (B, L, 64))
    else:
        assert not hasattr(model, "sequence")
    # lengths=None derives the same lengths from the pad mask (eager apply, no jit).
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, items, None)),
                               np.asarray(s), atol=1e-6)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_gru_matches_tf_grucell_reference(padding):
    model, params, fn = build("gru4rec", padding)
    items, lengths = make_batch(HISTORIES, padding)
    got, seq = (np.asarray(a) for a in fn(params, items, lengths))
    np.testing.assert_allclose(got, ref_gru(params, items, lengths, padding), atol=1e-5)
    # The last step taken is the state; steps not taken output zeros (as dynamic_rnn).
    has = lengths > 0
    np.testing.assert_allclose(read_np(seq, np.maximum(lengths, 1), padding)[has], got[has],
                               atol=1e-6)
    if padding == "right":
        assert np.all(seq[0, 1:] == 0) and np.all(seq[2, 4:] == 0)
    else:
        assert np.all(seq[0] == 0) and np.all(got[0] == 0)   # empty left history: h0 = 0


@pytest.mark.parametrize("padding", ["right", "left"])
def test_caser_matches_reference(padding):
    model, params, fn = build("caser", padding)
    items, lengths = make_batch(HISTORIES, padding)
    np.testing.assert_allclose(states(fn, params, items, lengths),
                               ref_caser(params, items, model.pad_id, model.cfg), atol=1e-5)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_nextitnet_matches_reference(padding):
    model, params, fn = build("nextitnet", padding)
    items, lengths = make_batch(HISTORIES, padding)
    ref = ref_nextitnet_seq(params, items, model.pad_id, model.cfg)
    s, seq = fn(params, items, lengths)
    np.testing.assert_allclose(np.asarray(seq), ref, atol=1e-4)
    np.testing.assert_allclose(np.asarray(s), read_np(ref, lengths, padding), atol=1e-4)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_sasrec_reference_style_matches_tf_reference(padding):
    model, params, fn = build("sasrec", padding)
    items, lengths = make_batch(HISTORIES, padding)
    ref = ref_sasrec_seq(params, items, model.pad_id, model.cfg)
    s, seq = fn(params, items, lengths)
    np.testing.assert_allclose(np.asarray(seq), ref, atol=1e-4)
    np.testing.assert_allclose(np.asarray(s), read_np(ref, lengths, padding), atol=1e-4)


def test_sasrec_post_ln_matches_iisan_reference():
    """Two blocks, two heads (exercises the head split), left padding."""
    model, params, fn = build("sasrec", "left", **POST_LN)
    items, lengths = make_batch(HISTORIES, "left")
    ref = ref_post_ln_seq(params, items, 0, model.cfg)
    s, seq = (np.asarray(a) for a in fn(params, items, lengths))
    valid = items != 0
    # Real positions agree; pad rows differ by design (IISAN's fully masked rows average
    # over every key, jaxrec zeroes their attention).
    np.testing.assert_allclose(seq[valid], ref[valid], atol=1e-4)
    has = lengths > 0
    np.testing.assert_allclose(s[has], ref[has, L - 1], atol=1e-4)


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("name", ["caser", "nextitnet", "sasrec", "gru4rec"])
def test_pad_row_never_changes_masked_states(name, padding):
    model, params, fn = build(name, padding)
    items, lengths = make_batch(HISTORIES, padding)
    table = params["item_embed"]["embedding"]
    moved = dict(params, item_embed={"embedding": table.at[model.pad_id].add(5.0)})
    before = states(fn, params, items, lengths)
    after = states(fn, moved, items, lengths)
    if name == "gru4rec" and padding == "right":
        # The reference's GRU consumes the pad row for the empty history (len = 1) ...
        assert np.abs(after[0] - before[0]).max() > 1e-3
        np.testing.assert_allclose(after[0], ref_gru(moved, items, lengths, padding)[0],
                                   atol=1e-5)
        # ... and nowhere else.
        np.testing.assert_array_equal(after[1:], before[1:])
    else:
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("name", CAUSAL)
def test_right_padding_ignores_ids_after_len(name):
    """Causal encoders read position len-1, so whatever follows it cannot matter."""
    model, params, fn = build(name, "right")
    items, lengths = make_batch(HISTORIES, "right")
    garbage = np.where(np.arange(L)[None] >= lengths[:, None], (np.arange(L) * 7) % N, items)
    garbage[0] = items[0]            # the empty history's len=1 position is the pad itself
    assert (garbage != items).sum() > 20
    np.testing.assert_allclose(states(fn, params, garbage.astype(np.int32), lengths),
                               states(fn, params, items, lengths), atol=1e-6)


@pytest.mark.parametrize("name,padding,extra", [
    ("gru4rec", "right", ()), ("gru4rec", "left", ()),
    ("nextitnet", "right", ()), ("nextitnet", "left", ()),
    ("sasrec", "right", ()), ("sasrec", "left", ()),
    ("sasrec", "left", tuple(POST_LN.items()))])
def test_sequence_is_causal(name, padding, extra):
    model, params, fn = build(name, padding, **dict(extra))
    # Rows 0/1 and 2/3 are pairs (lengths 10 and 8) that differ only at position t.
    hist = [list(range(10, 20))] * 2 + [list(range(1, 9))] * 2 + HISTORIES[:2]
    items, lengths = make_batch(hist, padding)
    t = 5                            # real in rows 0-3: right 0..len-1, left L-len..L-1
    changed = items.copy()
    changed[[1, 3], t] = (items[[1, 3], t] + 11) % (N + 1) + (padding == "left")
    before = np.asarray(fn(params, items, lengths)[1])
    after = np.asarray(fn(params, changed, lengths)[1])
    np.testing.assert_array_equal(after[:, :t], before[:, :t])        # earlier: untouched
    np.testing.assert_array_equal(after[[0, 2, 4, 5]], before[[0, 2, 4, 5]])
    assert np.abs(after[[1, 3], t] - before[[1, 3], t]).max(-1).min() > 0   # edit is seen


def test_gru_state_is_the_same_for_both_paddings():
    _, params, fn_r = build("gru4rec", "right")
    model_l, _, fn_l = build("gru4rec", "left")
    # Same parameters: move the pad row from the end (right) to the front (left).
    table = params["item_embed"]["embedding"]
    params_l = dict(params, item_embed={"embedding": jnp.roll(table, 1, axis=0)})
    s_r = states(fn_r, params, *make_batch(HISTORIES, "right"))
    s_l = states(fn_l, params_l, *make_batch(HISTORIES, "left"))
    np.testing.assert_allclose(s_l[1:], s_r[1:], atol=1e-6)   # non-empty histories
    # item_embeddings() returns the real items in item order for either padding.
    np.testing.assert_array_equal(
        model_l.apply({"params": params_l}, method=model_l.item_embeddings), table[:N])


def test_initial_values():
    """Reference initialisers (rl.md §2; TF1 defaults): N(0, 0.01) tables, GRU gate bias 1,
    Caser truncnormal(0.1)/bias 0.1, NextItNet truncnormal(0.02), Glorot-uniform dense."""
    items, lengths = make_batch(HISTORIES, "right")
    p = {}
    for name in ENCODERS:
        model = ENCODERS[name](N, EncoderConfig())
        p[name] = np_(jax.jit(functools.partial(model.init, train=False))(
            jax.random.key(0), items, lengths)["params"])
        table = p[name]["item_embed"]["embedding"]
        assert table.shape == (N + 1, 64) and 0.0085 < table.std() < 0.0115
    g = p["gru4rec"]
    assert np.all(g["gate_bias"] == 1.0) and np.all(g["candidate_bias"] == 0.0)
    assert np.abs(g["gate_kernel"]).max() <= np.sqrt(6 / (128 + 128))
    c = p["caser"]
    for h in (2, 3, 4):
        assert np.all(c[f"h_conv_{h}"]["bias"] == np.float32(0.1))
        assert np.abs(c[f"h_conv_{h}"]["kernel"]).max() <= 0.2          # truncated at 2 sd
    assert np.all(c["v_bias"] == np.float32(0.1)) and np.abs(c["v_kernel"]).max() <= 0.2
    blk = p["nextitnet"]["block_0"]
    assert np.abs(blk["conv1"]["kernel"]).max() <= 0.04 and np.all(blk["conv2"]["bias"] == 0)
    assert np.all(blk["ln1"]["scale"] == 1) and np.all(blk["ln1"]["bias"] == 0)
    s = p["sasrec"]
    assert 0.006 < s["pos_embed"].std() < 0.014
    q = s["block_0"]["attention"]["query"]
    assert np.abs(q["kernel"]).max() <= np.sqrt(6 / 128) and np.all(q["bias"] == 0)


# ---------------------------------------------------------- parameter counts
def count(model, items, method=None, *args):
    kw = {"method": method} if method else {}
    shapes = jax.eval_shape(lambda k, *a: model.init(k, *a, train=False, **kw),
                            jax.random.key(0), items, *args)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


def test_parameter_counts_at_paper_configs():
    """RetailRocket: N = 70,852 items, d = 64, L = 10 (rl.md §1.5, §2)."""
    n, d = 70_852, 64
    items = jax.ShapeDtypeStruct((2, 10), jnp.int32)
    lengths = jax.ShapeDtypeStruct((2,), jnp.int32)
    emb = (n + 1) * d                                            # 4,534,592
    gru = 3 * (d * d + d * d + d)                                # [x;h]->r,u and candidate
    caser = (2 + 3 + 4) * d * 16 + 3 * 16 + 10 * 1 + 1           # 9,275
    nextitnet = 6 * (2 * (3 * d * d + d) + 2 * 2 * d)            # 149,760
    sasrec = (10 * d                                             # positions
              + 2 * d                                            # LN before attention
              + 3 * (d * d + d)                                  # Q, K, V (biased)
              + 2 * d                                            # LN before FFN
              + 2 * (d * d + d)                                  # FFN 64->64->64
              + 2 * d)                                           # final LN
    expected = {"gru4rec": emb + gru, "caser": emb + caser,
                "nextitnet": emb + nextitnet, "sasrec": emb + sasrec}
    assert expected == {"gru4rec": 4_559_360, "caser": 4_543_867,
                        "nextitnet": 4_684_352, "sasrec": 4_556_416}
    for name, want in expected.items():
        assert count(make_encoder(name, EncoderConfig(), num_items=n), items, None,
                     lengths) == want, name


def test_iisan_user_encoder_count_closes_the_papers_total():
    """IISAN (iisan.md §1.12): 4,113,877 trainable = SANBs + Linears + heads + fusion +
    gates + the user encoder. The item vectors come from the tower, so the encoder is
    initialised through sequence_from_embeddings and owns no item table."""
    d = 64
    cfg = EncoderConfig(padding="left", **POST_LN)
    model = make_encoder("sasrec", cfg, num_items=20_314)
    x = jax.ShapeDtypeStruct((2, 10, d), jnp.float32)
    valid = jax.ShapeDtypeStruct((2, 10), jnp.bool_)
    got = count(model, x, "sequence_from_embeddings", valid)
    encoder = (10 * d + 2 * d                                    # positions, input LN
               + 2 * (4 * d * d                                  # Q, K, V, O, no bias
                      + (d * 256 + 256) + (256 * d + d)          # FFN 64->256->64
                      + 2 * 2 * d))                              # two LNs
    rest = (21 * (768 * 64 + 64 + 64 * 768 + 768)                # SANBs
            + 3 * (768 * 768 + 768) + 3 * (768 * 64 + 64)        # Linears, heads
            + (192 * 64 + 64) + 21)                              # fusion, gates
    assert got == encoder == 4_113_877 - rest == 100_224


def test_pcrec_sasrec_variant_count():
    """PCRec's SASRec (intent_pcrec.md §2.5): d=256, 2 blocks, 1 head, max_len 100,
    biased Q/K/V without output projection, post-LN, no input LN."""
    d, n = 256, 1000
    cfg = EncoderConfig(embed_dim=d, state_len=100, padding="left", norm_style="post_ln",
                        num_blocks=2, num_heads=1, ffn_dim=d, dropout=0.0, ln_eps=1e-5,
                        attn_bias=True, attn_out_proj=False, input_ln=False)
    got = count(make_encoder("sasrec", cfg, num_items=n),
                jax.ShapeDtypeStruct((2, 100), jnp.int32), None,
                jax.ShapeDtypeStruct((2,), jnp.int32))
    want = (n + 1) * d + 100 * d + 2 * (3 * (d * d + d) + 2 * d + 2 * (d * d + d) + 2 * d)
    assert got == want == 941_824


# ----------------------------------------------------------------- dropout
def test_sasrec_dropout_only_in_training():
    _, params, fn = build("sasrec", "right")                     # reference rate 0.1
    items, lengths = make_batch(HISTORIES, "right")
    ev = states(fn, params, items, lengths)
    # train=False ignores any dropout rng.
    np.testing.assert_array_equal(
        states(fn, params, items, lengths, train=False, rng=jax.random.key(2)), ev)
    tr1 = states(fn, params, items, lengths, train=True, rng=jax.random.key(1))
    tr1b = states(fn, params, items, lengths, train=True, rng=jax.random.key(1))
    tr2 = states(fn, params, items, lengths, train=True, rng=jax.random.key(2))
    np.testing.assert_array_equal(tr1, tr1b)                    # same key, same mask
    assert np.abs(tr1 - tr2).max() > 1e-3 and np.abs(tr1 - ev).max() > 1e-3


def test_caser_dropout_rate_and_scaling():
    items, lengths = make_batch(HISTORIES, "right")
    # Default (SQN/SAC): no dropout, train == eval.
    _, params, fn0 = build("caser", "right")
    np.testing.assert_array_equal(
        states(fn0, params, items, lengths, train=True, rng=jax.random.key(3)),
        states(fn0, params, items, lengths))
    # SA2C: rate 0.1 on the 112-d state; kept entries are scaled by 1/0.9.
    _, params, fn = build("caser", "right", dropout=0.1)
    ev = states(fn, params, items, lengths)
    tr = states(fn, params, items, lengths, train=True, rng=jax.random.key(3))
    kept = tr != 0
    np.testing.assert_allclose(tr[kept], ev[kept] / 0.9, rtol=1e-5)
    dropped = (~kept) & (ev != 0)
    assert 0 < dropped.sum() < 0.3 * (ev != 0).sum()


# ------------------------------------------------------------ config / errors
def test_config_from_configdict_and_make_encoder():
    cd = ConfigDict({"num_items": N, "embed_dim": 32, "filter_heights": [2, 3],
                     "padding": "left", "dropout": 0.1})
    model = make_encoder("caser", cd)
    assert model.num_items == N and model.cfg.filter_heights == (2, 3)
    assert model.state_dim == 16 * 2 + 32 and model.pad_id == 0
    assert hash(model.cfg) == hash(EncoderConfig.from_dict(model.cfg.to_dict()))
    with pytest.raises(ValueError, match="filter_hieghts"):
        EncoderConfig.from_dict({"filter_hieghts": (2,)})
    with pytest.raises(ValueError, match="unknown encoder 'bert4rec'"):
        make_encoder("bert4rec", EncoderConfig(), num_items=N)
    with pytest.raises(ValueError, match="num_items is required"):
        make_encoder("sasrec", {"embed_dim": 64})
    with pytest.raises(ValueError, match="EncoderConfig.padding"):
        EncoderConfig(padding="middle")
    with pytest.raises(ValueError, match="num_heads"):
        EncoderConfig(embed_dim=64, num_heads=3)


def test_bad_inputs_raise_naming_the_tensor():
    items, lengths = make_batch(HISTORIES, "right")
    with pytest.raises(ValueError, match="pad_id=0 does not match padding='right'"):
        ENCODERS["sasrec"](N, EncoderConfig(pad_id=0)).init(jax.random.key(0), items, lengths)
    model, params, _ = build("sasrec", "right")
    bad = items.copy()
    bad[0, 0] = N + 1
    with pytest.raises(ValueError, match="items ids must be in"):
        model.apply({"params": params}, bad, lengths)
    with pytest.raises(ValueError, match="lengths must have shape"):
        model.apply({"params": params}, items, lengths[:2])
    caser, cparams, _ = build("caser", "right")
    with pytest.raises(ValueError, match="state_len"):
        caser.apply({"params": cparams}, items[:, :8], lengths)


# ------------------------------------------------- RecBole-style SASRec options
def ref_recbole_sasrec_state(p, histories, cfg):
    """RecBole's SASRec forward (loss_type='CE'), re-derived in NumPy float64.

    Its own layout, not jaxrec's: ids shifted by one and **right**-padded with 0, position
    j of the array gets P[j] (so the oldest item in the window gets P[0]), pads are fed as
    E[0] + P[j], masked logits get -10000 *added*, every query row is kept, and the state
    is read at len-1. Block: LN(x + O(attn(x))) and LN(h + W2 gelu(W1 h)), biased Linears,
    exact erf GELU.
    """
    from scipy.special import erf
    p = np_(p)
    Hn, D = cfg.num_heads, cfg.embed_dim
    dh = D // Hn
    items = np.zeros((len(histories), L), np.int64)
    lengths = np.array([len(h[-L:]) for h in histories])
    for b, h in enumerate(histories):
        items[b, :lengths[b]] = np.asarray(h[-L:]) + 1
    E, P = p["item_embed"]["embedding"], p["pos_embed"]
    x = np_ln(E[items] + P[None, :L], p["input_ln"], cfg.ln_eps)
    allowed = (items != 0)[:, None, :] & (np.tril(np.ones((L, L))) > 0)[None]
    additive = np.where(allowed, 0.0, -10000.0)
    gelu = lambda z: z * 0.5 * (1.0 + erf(z / np.sqrt(2.0)))
    for i in range(cfg.num_blocks):
        blk = p[f"block_{i}"]
        a = blk["attention"]
        Q, K, V = (x @ a[n]["kernel"] + a[n]["bias"] for n in ("query", "key", "value"))
        heads = []
        for h in range(Hn):
            sl = slice(h * dh, (h + 1) * dh)
            z = Q[..., sl] @ np.swapaxes(K[..., sl], 1, 2) / np.sqrt(dh) + additive
            heads.append(_softmax(z) @ V[..., sl])
        o = np.concatenate(heads, -1) @ a["out"]["kernel"] + a["out"]["bias"]
        x = np_ln(x + o, blk["ln_attn"], cfg.ln_eps)
        ff = blk["ffn"]
        f = gelu(x @ ff["inner"]["kernel"] + ff["inner"]["bias"])
        x = np_ln(x + f @ ff["outer"]["kernel"] + ff["outer"]["bias"], blk["ln_ffn"], cfg.ln_eps)
    return x[np.arange(len(histories)), lengths - 1]


RECBOLE_SMALL = tuple(dict(RECBOLE_SASREC, state_len=L).items())


def test_sasrec_recbole_fields_match_recbole_forward():
    """Left-padded jaxrec with RECBOLE_SASREC == RecBole's right-padded computation."""
    kw = dict(RECBOLE_SMALL)
    padding = kw.pop("padding")
    model, params, fn = build("sasrec", padding, **kw)
    items, lengths = make_batch(HISTORIES, padding)
    got = states(fn, params, items, lengths)
    nonempty = [b for b, h in enumerate(HISTORIES) if h]      # RecBole never sees len 0
    want = ref_recbole_sasrec_state(params, [HISTORIES[b] for b in nonempty], model.cfg)
    np.testing.assert_allclose(got[nonempty], want, atol=1e-4)
    # Each RecBole field matters on these rows: flipping one moves the states.
    for field, value in (("position_ids", "index"), ("activation", "relu"),
                         ("activation", "gelu_tanh"), ("attn_bias", False)):
        _, _, fn2 = build("sasrec", padding, **dict(kw, **{field: value}))
        moved = np.abs(states(fn2, params, items, lengths)[nonempty] - want).max()
        assert moved > 1e-4, (field, value, moved)


def test_position_ids_agree_on_full_windows_and_right_padding():
    """'from_first' only differs from 'index' for left-padded windows shorter than L."""
    for padding in ("left", "right"):
        _, params, fn = build("sasrec", padding)
        _, _, fn_ff = build("sasrec", padding, position_ids="from_first")
        items, lengths = make_batch(HISTORIES, padding)
        a, b = states(fn, params, items, lengths), states(fn_ff, params, items, lengths)
        if padding == "right":
            np.testing.assert_array_equal(a, b)
        else:
            full = lengths == L                                # the exactly-L history
            np.testing.assert_array_equal(a[full], b[full])
            short = (lengths > 0) & (lengths < L)
            assert np.abs(a[short] - b[short]).max(-1).min() > 1e-3


def _ffn_apply(activation, x, seed=0):
    from jaxrec.encoders.sasrec import _FeedForward
    ffn = _FeedForward(8, 16, 0.0, nn.initializers.normal(0.5), activation)
    params = ffn.init(jax.random.key(seed), x, train=False)
    return np_(params["params"]), np.asarray(ffn.apply(params, x, train=False), np.float64)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_ffn_activation_matches_numpy(activation):
    from scipy.special import erf
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, 8)), jnp.float32)
    p, got = _ffn_apply(activation, x)
    z = np.asarray(x, np.float64) @ p["inner"]["kernel"] + p["inner"]["bias"]
    act = {"relu": lambda z: np.maximum(z, 0),
           "gelu": lambda z: 0.5 * z * (1 + erf(z / np.sqrt(2))),
           "gelu_tanh": lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi)
                                                          * (z + 0.044715 * z ** 3)))}
    want = act[activation](z) @ p["outer"]["kernel"] + p["outer"]["bias"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The three non-linearities are distinguishable at these pre-activations (|z| ~ 1):
    # exact and tanh GELU differ by up to ~1e-3, ReLU by O(0.1).
    if activation != "relu":
        assert np.abs(got - _ffn_apply("relu", x)[1]).max() > 1e-2
    if activation == "gelu":
        assert np.abs(got - _ffn_apply("gelu_tanh", x)[1]).max() > 1e-5


def test_gelu_changes_the_encoder_output():
    items, lengths = make_batch(HISTORIES, "left")
    _, params, fn = build("sasrec", "left", **POST_LN)
    _, _, fn_g = build("sasrec", "left", **dict(POST_LN, activation="gelu"))
    has = lengths > 0
    diff = np.abs(states(fn, params, items, lengths) - states(fn_g, params, items, lengths))
    assert diff[has].max(-1).min() > 1e-3


@pytest.mark.parametrize("style", [(), tuple(POST_LN.items())])
def test_new_fields_at_their_defaults_are_bit_identical(style):
    """Spelling out today's behaviour (ReLU, attention rate = hidden rate, dropout inside
    the FFN, style initialisers, array-index positions) changes no bit: not the states,
    not the training-mode dropout masks, not the initial parameters."""
    style = dict(style)
    explicit = dict(style, activation="relu", attn_dropout=0.1, ffn_internal_dropout=True,
                    init_std=None, position_ids="index")
    items, lengths = make_batch(HISTORIES, "left")
    m0, p0, fn0 = build("sasrec", "left", **style)
    m1, _, fn1 = build("sasrec", "left", **explicit)
    for kw in ({}, {"train": True, "rng": jax.random.key(4)}):
        np.testing.assert_array_equal(states(fn0, p0, items, lengths, **kw),
                                      states(fn1, p0, items, lengths, **kw))
    init = lambda m: m.init(jax.random.key(0), items, lengths, train=False)
    chex.assert_trees_all_equal(init(m0), init(m1))


def _count_dropouts(model, items):
    """Dropout layers applied in one training forward pass (random_bits in the jaxpr)."""
    params = jax.eval_shape(lambda k: model.init(k, items, None, train=False),
                            jax.random.key(0))
    jaxpr = jax.make_jaxpr(lambda p, k: model.apply(p, items, None, train=True,
                                                    rngs={"dropout": k}))(
        params, jax.random.key(1))

    def count(jx):
        n = 0
        for eqn in jx.eqns:
            n += eqn.primitive.name == "random_bits"
            for v in eqn.params.values():
                sub = getattr(v, "jaxpr", None)
                if sub is not None:
                    n += count(getattr(sub, "jaxpr", sub))
        return n
    return count(jaxpr.jaxpr)


def test_dropout_placement_counts():
    """post_ln, 2 blocks. Default: input + per block (attention weights, attention output,
    after the activation, after the FFN's output Dense, FFN sublayer output) = 1 + 2*5.
    RecBole: input + per block (attention weights, attention output, FFN output) = 1 + 2*3.
    A rate of 0 removes the layer."""
    items = jnp.ones((2, L), jnp.int32)
    cfg = lambda **kw: make_encoder("sasrec", EncoderConfig(padding="left", **dict(
        POST_LN, **kw)), num_items=N)
    assert _count_dropouts(cfg(), items) == 11
    assert _count_dropouts(cfg(ffn_internal_dropout=False), items) == 7
    assert _count_dropouts(cfg(ffn_internal_dropout=False, attn_dropout=0.0), items) == 5
    assert _count_dropouts(cfg(dropout=0.0, attn_dropout=0.5), items) == 2
    assert _count_dropouts(cfg(dropout=0.0), items) == 0
    assert _count_dropouts(make_encoder("sasrec", EncoderConfig(**dict(
        RECBOLE_SMALL)), num_items=N), items) == 7


def test_recbole_initialisers_and_parameter_count():
    """init_std=0.02: N(0, 0.02) item/position tables and every Dense kernel, zero
    biases, LN 1/0 (RecBole ``_init_weights``). Count at RecBole's ML-100K setting: 1,682
    items + pad, L = 50, d = 64, 2 blocks, 2 heads, FFN 256, biased Q/K/V/O."""
    model = make_encoder("sasrec", EncoderConfig(**RECBOLE_SASREC), num_items=1682)
    items = jnp.ones((2, 50), jnp.int32)
    p = np_(jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), items, None)["params"])
    assert 0.0195 < p["item_embed"]["embedding"].std() < 0.0205       # 107,712 draws
    assert 0.0185 < p["pos_embed"].std() < 0.0215                    # 3,200 draws
    for i in range(2):
        blk = p[f"block_{i}"]
        for layer in (*(blk["attention"][n] for n in ("query", "key", "value", "out")),
                      blk["ffn"]["inner"], blk["ffn"]["outer"]):
            assert 0.018 < layer["kernel"].std() < 0.022 and np.all(layer["bias"] == 0)
        assert np.all(blk["ln_attn"]["scale"] == 1) and np.all(blk["ln_ffn"]["bias"] == 0)
    d = 64
    want = (1683 * d + 50 * d + 2 * d
            + 2 * (4 * (d * d + d) + 2 * d + (d * 256 + 256) + (256 * d + d) + 2 * d))
    assert sum(x.size for x in jax.tree.leaves(p)) == want == 211_008


def test_sasrec_left_item_embeddings_tie_the_output_layer():
    """Left padding: item_embeddings() = table rows 1..N, so scores = h @ E[1:].T has item
    i (shifted id i+1) in column i and never scores the pad row 0."""
    model, params, fn = build("sasrec", "left")
    items, lengths = make_batch(HISTORIES, "left")
    table = np.asarray(params["item_embed"]["embedding"])
    E = np.asarray(model.apply({"params": params}, method=model.item_embeddings))
    assert E.shape == (N, 64)
    np.testing.assert_array_equal(E, table[1:])
    h = states(fn, params, items, lengths).astype(np.float64)
    scores = h @ E.T.astype(np.float64)                              # [B, N]
    targets = np.array([7, 14, 19, 29, 0, 8]) + 1                    # shifted ids
    np.testing.assert_allclose(scores[np.arange(B), targets - 1],
                               (h * table[targets]).sum(-1), rtol=1e-12)
    moved = dict(params, item_embed={"embedding": params["item_embed"]["embedding"]
                                     .at[0].set(100.0)})
    np.testing.assert_array_equal(
        model.apply({"params": moved}, method=model.item_embeddings), E)


def test_new_field_errors():
    for kw, field in (({"activation": "swish"}, "activation"),
                      ({"position_ids": "end"}, "position_ids"),
                      ({"attn_dropout": 1.0}, "attn_dropout"),
                      ({"init_std": 0.0}, "init_std")):
        with pytest.raises(ValueError, match=f"EncoderConfig.{field}: expected"):
            EncoderConfig(**kw)
    with pytest.raises(ValueError, match="'gelu_tanh'"):
        EncoderConfig(activation="GELU")


def test_from_first_positions_make_window_outputs_equal_prefix_states():
    """With position_ids='from_first' the output of a left-padded window at the position
    of its t-th item equals the state of the prefix example holding its first t items
    (so 'windows' and 'prefixes' training see the same function); with 'index' they
    differ, the prefix's items sitting at other positions."""
    hist = [3, 14, 3, 25, 9, 1, 17]                                   # 7 of L = 10
    window, _ = make_batch([hist], "left")
    prefixes, _ = make_batch([hist[:t] for t in range(1, len(hist) + 1)], "left")
    for position_ids, same in (("from_first", True), ("index", False)):
        model, params, fn = build("sasrec", "left", **dict(POST_LN, position_ids=position_ids))
        seq = np.asarray(fn(params, window, None)[1])[0, L - len(hist):]   # [7, D]
        got = states(fn, params, prefixes, None)                           # [7, D]
        if same:
            np.testing.assert_allclose(got, seq, atol=1e-5)
        else:
            assert np.abs(got[:-1] - seq[:-1]).max(-1).min() > 1e-3
            np.testing.assert_allclose(got[-1], seq[-1], atol=1e-5)   # the full window
