"""Freezing by path patterns: labels, analytic trainable-parameter counts at BERT-base /
ViT-base/16 shapes (IISAN spec §1.12), and optimizer masks that keep frozen leaves frozen."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jaxrec.backbones import bert, vit
from jaxrec.backbones.llama import LlamaConfig, LlamaModel
from jaxrec.peft import (
    PRESETS,
    count_params,
    group_labels,
    lora_patterns,
    masked_optimizer,
    merge,
    param_labels,
    path_str,
    split_trainable,
)


def _tree():
    z = jnp.zeros
    return {
        "enc": {"q": {"kernel": z((4, 4)), "bias": z(4), "lora_a": z((4, 2)), "lora_b": z((2, 4))},
                "ln": {"scale": z(4), "bias": z(4)}},
        "head": {"kernel": z((4, 3)), "bias": z(3)},
    }


def _trainable_paths(labels):
    return sorted(path_str(p) for p, v in traverse_util.flatten_dict(labels).items() if v == "trainable")


def test_path_str_for_both_path_kinds():
    assert path_str(("a", "b", "kernel")) == "a/b/kernel"
    (path, _), = jax.tree_util.tree_flatten_with_path({"a": {"b": [jnp.zeros(1)]}})[0]
    assert path_str(path) == "a/b/0"


def test_presets_on_a_hand_tree():
    t = _tree()
    assert _trainable_paths(param_labels(t, PRESETS["bitfit"])) == ["enc/ln/bias", "enc/q/bias", "head/bias"]
    assert _trainable_paths(param_labels(t, PRESETS["lora"])) == ["enc/q/lora_a", "enc/q/lora_b"]
    assert _trainable_paths(param_labels(t, lora_patterns(bias_of=("q",)))) == [
        "enc/q/bias", "enc/q/lora_a", "enc/q/lora_b"]
    assert len(_trainable_paths(param_labels(t, PRESETS["full"]))) == 8
    # Frozen patterns win over trainable ones.
    assert _trainable_paths(param_labels(t, PRESETS["full"], frozen=(r"^enc/",))) == ["head/bias", "head/kernel"]
    # count_params: 4*4 + 4 + 4*2 + 2*4 + 4 + 4 + 4*3 + 3 = 59 scalars; the 3 biases are 4 + 4 + 3.
    assert count_params(t) == (59, 59)
    assert count_params(t, param_labels(t, PRESETS["bitfit"])) == (11, 59)


def test_pattern_matching_nothing_raises():
    t = _tree()
    with pytest.raises(ValueError, match=r"trainable 'lora_c'"):
        param_labels(t, ("lora_c",))
    with pytest.raises(ValueError, match=r"frozen '\^decoder/'"):
        param_labels(t, PRESETS["full"], frozen=("^decoder/",))
    with pytest.raises(ValueError, match="adapter_"):  # no adapters built (adapter_size=0)
        masked_optimizer(optax.adam(1e-3), t, PRESETS["houlsby"])
    with pytest.raises(TypeError, match="string"):
        param_labels(t, "bias")
    with pytest.raises(ValueError, match="not a valid regex"):
        param_labels(t, ("bias(",))


def test_group_labels_first_match_default_and_errors():
    t = _tree()
    labels = group_labels(t, {"lora": (r"lora_",), "enc": (r"^enc/",)}, default="head")
    flat = {path_str(p): v for p, v in traverse_util.flatten_dict(labels).items()}
    assert flat["enc/q/lora_a"] == "lora" and flat["enc/q/kernel"] == "enc" and flat["head/bias"] == "head"
    with pytest.raises(ValueError, match="match no group"):
        group_labels(t, {"enc": (r"^enc/",)})
    with pytest.raises(ValueError, match=r"'\^vit/' \(group 'vit'\)"):
        group_labels(t, {"enc": (r"^enc/",), "vit": (r"^vit/",)}, default="head")


# ---------------------------------------------------------------------------------------------
# Analytic counts at bert-base-uncased and google/vit-base-patch16-224 shapes.
# ---------------------------------------------------------------------------------------------

D, F, L, R, BOTTLENECK = 768, 3072, 12, 8, 64
DENSE_DD = D * D + D  # a D -> D projection with bias
LAYER = 4 * DENSE_DD + (D * F + F) + (F * D + D) + 2 * (2 * D)  # q,k,v,o + FFN + 2 LayerNorms
BERT_EMB = 30522 * D + 512 * D + 2 * D + 2 * D  # word, position, token type, LayerNorm
BERT_TOTAL = BERT_EMB + L * LAYER  # no pooler (IISAN never uses it)
N_PATCHES = (224 // 16) ** 2
VIT_EMB = D + (1 + N_PATCHES) * D + (16 * 16 * 3 * D + D)  # [CLS], positions, patch conv
VIT_TOTAL = VIT_EMB + L * LAYER + 2 * D  # + final LayerNorm
LORA = L * 2 * (D * R + R * D)  # rank 8 on query and value
HOULSBY = L * 2 * (D * BOTTLENECK + BOTTLENECK + BOTTLENECK * D + D)  # 2 adapters per layer
LAYER_BIASES = 4 * D + F + D + 2 * D  # q,k,v,o, FFN in/out, 2 LayerNorm betas
BERT_BITFIT = D + L * LAYER_BIASES  # + embedding LayerNorm beta
VIT_BITFIT = D + L * LAYER_BIASES + D  # + patch-conv bias and final LayerNorm beta


def test_reference_totals_are_the_known_model_sizes():
    # bert-base-uncased is 109,482,240 with its 768x768 pooler; ViT-B/16 86,389,248 likewise.
    assert BERT_TOTAL + DENSE_DD == 109_482_240
    assert VIT_TOTAL + DENSE_DD == 86_389_248
    assert HOULSBY // (2 * L) == 99_136  # IISAN spec §1.3: parameters per bottleneck block


@pytest.fixture(scope="module")
def base_shapes():
    bert_cfg = bert.BertConfig(vocab_size=30522, hidden_size=D, num_layers=L, num_heads=12,
                               intermediate_size=F, max_position_embeddings=512, type_vocab_size=2)
    vit_cfg = vit.ViTConfig(image_size=224, patch_size=16, hidden_size=D, num_layers=L, num_heads=12,
                            intermediate_size=F)

    def shapes(**peft):
        return (bert.init_params(dataclasses.replace(bert_cfg, **peft), abstract=True),
                vit.init_params(dataclasses.replace(vit_cfg, **peft), abstract=True))

    return shapes


@pytest.mark.parametrize("regime, peft, patterns, bert_trainable, vit_trainable, extra", [
    ("full", {}, PRESETS["full"], BERT_TOTAL, VIT_TOTAL, 0),
    ("lora", {"lora_rank": R}, PRESETS["lora"], LORA, LORA, LORA),
    ("lora+bias", {"lora_rank": R}, lora_patterns(("query", "value")), LORA + L * 2 * D, LORA + L * 2 * D, LORA),
    ("houlsby", {"adapter_size": BOTTLENECK}, PRESETS["houlsby"], HOULSBY, HOULSBY, HOULSBY),
    ("bitfit", {}, PRESETS["bitfit"], BERT_BITFIT, VIT_BITFIT, 0),
])
def test_trainable_counts_at_base_shapes(base_shapes, regime, peft, patterns, bert_trainable, vit_trainable, extra):
    bert_p, vit_p = base_shapes(**peft)
    assert count_params(bert_p, param_labels(bert_p, patterns)) == (bert_trainable, BERT_TOTAL + extra)
    assert count_params(vit_p, param_labels(vit_p, patterns)) == (vit_trainable, VIT_TOTAL + extra)


def test_iisan_lora_baseline_total():
    # Spec §1.12: LoRA baseline ~0.83M with heads and user encoder; the two encoders' share is
    # 2 * (LoRA factors + q/v biases) = 626,688.
    assert 2 * (LORA + L * 2 * D) == 626_688


# ---------------------------------------------------------------------------------------------
# Optimizer masks on a tiny Llama with LoRA + Houlsby adapters.
# ---------------------------------------------------------------------------------------------

TINY = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2,
                   max_position_embeddings=16, lora_rank=2, adapter_size=4)
TRAIN = PRESETS["lora"] + PRESETS["houlsby"]


@pytest.fixture(scope="module")
def tiny():
    model = LlamaModel(TINY)
    ids = jax.random.randint(jax.random.key(0), (4, 8), 0, TINY.vocab_size)
    mask = jnp.ones_like(ids)
    params = jax.jit(model.init)(jax.random.key(1), ids, mask)["params"]

    def loss(p):
        logits = model.apply({"params": p}, ids, mask).logits[:, :-1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

    return params, loss


def test_bitfit_on_llama_trains_only_adapter_biases_and_raises_without_them(tiny):
    # With adapters the only biases are the adapters' (2 layers x 2 adapters x (4 + 16)).
    assert count_params(tiny[0], param_labels(tiny[0], PRESETS["bitfit"]))[0] == 2 * 2 * (4 + 16)
    plain = jax.eval_shape(LlamaModel(dataclasses.replace(TINY, adapter_size=0)).init,
                           jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    with pytest.raises(ValueError, match="bias"):
        param_labels(plain, PRESETS["bitfit"])


def test_frozen_leaves_get_no_state_no_update_and_stay_identical(tiny):
    params, loss = tiny
    labels = param_labels(params, TRAIN)
    n_train, n_total = count_params(params, labels)
    # 2 layers x (q, v LoRA: 2 * (16*2 + 2*16)) + 2 layers x 2 adapters x (2*16*4 + 4 + 16)
    assert n_train == 2 * 2 * (16 * 2 + 2 * 16) + 2 * 2 * (2 * 16 * 4 + 4 + 16)

    tx = masked_optimizer(optax.adam(1e-2), params, TRAIN)
    state = tx.init(params)
    adam = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
    assert len(adam) == 1
    for moments in (adam[0].mu, adam[0].nu):
        paths = sorted(path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(moments)[0])
        assert paths == _trainable_paths(labels)
    # Every array in the optimizer state: the two moments of trainable leaves + Adam's count.
    assert sum(x.size for x in jax.tree.leaves(state)) == 2 * n_train + 1

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, u

    p, s = params, state
    for i in range(3):
        p, s, updates = step(p, s)
        if i == 0:
            for path, u in traverse_util.flatten_dict(updates).items():
                if traverse_util.flatten_dict(labels)[path] == "frozen":
                    assert not np.any(np.asarray(u)), path_str(path)
    flat0, flat3 = traverse_util.flatten_dict(params), traverse_util.flatten_dict(p)
    flat_l = traverse_util.flatten_dict(labels)
    for path, v0 in flat0.items():
        changed = not np.array_equal(np.asarray(v0), np.asarray(flat3[path]))
        assert changed == (flat_l[path] == "trainable"), path_str(path)


def test_split_trainable_gradients_only_for_trainable_leaves(tiny):
    params, loss = tiny
    labels = param_labels(params, TRAIN)
    train, frozen = split_trainable(params, labels)
    assert merge(train, frozen).keys() == params.keys()
    for a, b in zip(jax.tree.leaves(merge(train, frozen)), jax.tree.leaves(params)):
        assert a is b
    g_split = jax.jit(jax.grad(lambda t: loss(merge(t, frozen))))(train)
    assert sorted(path_str(p) for p in traverse_util.flatten_dict(g_split)) == _trainable_paths(labels)
    g_full = traverse_util.flatten_dict(jax.jit(jax.grad(loss))(params))
    for path, g in traverse_util.flatten_dict(g_split).items():
        # Two separately compiled programs: equal up to float reassociation.
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_full[path]), rtol=1e-5, atol=1e-7)
    # The adapters' gradients are non-zero at init (their weights are), so the check has teeth.
    assert float(jnp.abs(g_split["layers_0"]["adapter_ffn"]["up"]["kernel"]).max()) > 0
    with pytest.raises(ValueError, match="both"):
        merge(train, train)
