"""IISAN options (configs/iisan.py): the live towers' memory options (bf16 activations,
per-block rematerialisation) measured on XLA's compiled memory, the head initialisation
styles by their weight statistics, and the text-only model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.backbones import bert as bert_lib
from jaxrec.methods import iisan
from jaxrec.peft import freeze
from jaxrec.peft.side_adapters import IISANItemTower, SideConfig
from jaxrec.train.memory import step_cost

from tests.numerics import assert_trees_close
from tests.train.helpers import get_config


# ------------------------------------------------------------------ tower memory options
def _adapter_grad_temps(**options) -> tuple[int, float]:
    """(temporary bytes, FLOPs) of the gradient w.r.t. the Houlsby adapters only, through a
    4-block BERT (width 64, FFN 256) on 32 sequences of 64 tokens: what the Adapter baseline
    backpropagates through in every step."""
    cfg = bert_lib.BertConfig(vocab_size=512, hidden_size=64, num_layers=4, num_heads=4,
                              intermediate_size=256, max_position_embeddings=64,
                              adapter_size=8, **options)
    params = bert_lib.init_params(cfg, jax.random.key(0), abstract=True)
    train, frozen = freeze.split_trainable(params, freeze.param_labels(params, (r"adapter_",)))
    model = bert_lib.BertEncoder(cfg)

    def loss(train, frozen, ids):
        out = model.apply({"params": freeze.merge(train, frozen)}, ids)
        return jnp.sum(out.last_hidden_state.astype(jnp.float32) ** 2)

    ids = jax.ShapeDtypeStruct((32, 64), jnp.int32)
    cost = step_cost(jax.grad(loss), train, frozen, ids)
    return cost.temp_bytes, cost.flops


def test_bf16_and_remat_shrink_the_backward_temporaries():
    """Measured on this shape (XLA CPU): float32 63.1 MB of temporaries; bf16 activations
    51.6 MB (1.22x: LayerNorm statistics, softmax and the loss stay float32); per-block
    remat 22.8 MB (2.77x: the block inputs are kept, one block's activations are live at a
    time) at 1.5x the FLOPs (one more forward); both 17.8 MB (3.54x)."""
    base, f_base = _adapter_grad_temps()
    bf16, _ = _adapter_grad_temps(dtype="bfloat16")
    remat, f_remat = _adapter_grad_temps(remat=True)
    both, _ = _adapter_grad_temps(dtype="bfloat16", remat=True)
    assert base / bf16 > 1.15, (base, bf16)
    assert base / remat > 2.5, (base, remat)
    assert base / both > 3.3, (base, both)
    assert 1.3 < f_remat / f_base < 1.7, (f_base, f_remat)


def test_memory_options_reach_the_live_towers_only():
    c = get_config("iisan.py", "variant=lora,tower_dtype=bfloat16,remat")
    spec = iisan.build_spec(c, 50)
    assert spec.net.text_cfg.dtype == "bfloat16" and spec.net.text_cfg.remat
    assert spec.net.image_cfg.dtype == "bfloat16" and spec.net.image_cfg.remat
    assert spec.net.side_cfg is None
    plain = iisan.build_spec(get_config("iisan.py", "variant=lora"), 50)
    assert plain.net.text_cfg.dtype == "float32" and not plain.net.text_cfg.remat
    # Same parameters either way (remat and dtype change the computation, not the tree).
    shapes = lambda s: jax.tree.map(lambda x: x.shape, iisan.init_params(s, jax.random.key(0), abstract=True))
    assert shapes(spec) == shapes(plain)
    with pytest.raises(ValueError, match="tower_dtype"):
        c.iisan.tower_dtype = "float16"
        iisan.build_spec(c, 50)


def test_remat_gives_the_same_gradients():
    """Rematerialisation recomputes, it does not approximate: the same gradients (float32)."""
    cfg = bert_lib.BertConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=2,
                              intermediate_size=64, max_position_embeddings=16, adapter_size=4)
    params = bert_lib.init_params(cfg, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (3, 16), 1, 128)

    def grads(c):
        m = bert_lib.BertEncoder(c)
        return jax.jit(jax.grad(lambda p: jnp.sum(m.apply({"params": p}, ids).last_hidden_state ** 2)))(params)

    g0, g1 = grads(cfg), grads(dataclasses.replace(cfg, remat=True))
    # Recomputation reorders float32 sums: equal up to rounding (relative to the largest
    # gradient; some leaves are ~0 up to rounding in both).
    assert_trees_close(g1, g0, rtol=1e-4, tree_rtol=1e-4)


# ------------------------------------------------------------------ head initialisation
@pytest.mark.parametrize("style", ["iisan", "xavier", "torch"])
def test_head_init_statistics(style):
    """Kernel standard deviations of the image head (256 -> 64) and the fusion (192 -> 64)
    against each style's formula, within 5 %; biases zero except for 'torch'."""
    cfg = SideConfig(text_taps=2, image_taps=2, text_dim=256, image_dim=256, text_bottleneck=8,
                     image_bottleneck=8, inter_bottleneck=8, embed_dim=64, head_init=style)
    t, v = jnp.ones((2, 2, 256)), jnp.ones((2, 2, 256))
    p = IISANItemTower(cfg).init(jax.random.key(0), t, v)["params"]
    xavier = lambda i, o: np.sqrt(2.0 / (i + o))
    expected = {
        # Xavier on the d-wide heads, flax's LeCun-normal (1/sqrt(fan_in)) on the fusion.
        "iisan": {"image_head": xavier(256, 64), "fusion": 1 / np.sqrt(192)},
        "xavier": {"image_head": xavier(256, 64), "fusion": xavier(192, 64)},
        # U(+-1/sqrt(fan_in)): std = 1 / sqrt(3 fan_in).
        "torch": {"image_head": 1 / np.sqrt(3 * 256), "fusion": 1 / np.sqrt(3 * 192)},
    }[style]
    for name, std in expected.items():
        k = np.asarray(p[name]["kernel"])
        assert abs(k.std() / std - 1) < 0.05, (name, k.std(), std)
        b = np.asarray(p[name]["bias"])
        if style == "torch":
            fan_in = k.shape[0]
            assert np.abs(b).max() <= 1 / np.sqrt(fan_in) and np.abs(b).max() > 0.5 / np.sqrt(fan_in)
        else:
            assert not b.any()
    if style == "torch":
        assert np.abs(np.asarray(p["image_proj"]["kernel"])).max() <= 1 / np.sqrt(256)
    with pytest.raises(ValueError, match="head_init"):
        SideConfig(head_init="he")


def test_head_init_from_the_config():
    c = get_config("iisan.py", "")
    c.iisan.head_init = "torch"
    assert iisan.build_spec(c, 50).net.side_cfg.head_init == "torch"


# ------------------------------------------------------------------ text only
def test_text_only_model_has_no_image_tower():
    """modality=text (ML-100K's default): no image tower, the text side network alone."""
    for arg in ("modality=text", "dataset=ml100k_recbole"):
        c = get_config("iisan.py", arg)
        spec = iisan.build_spec(c, 50)
        assert spec.net.image_cfg is None and spec.net.image_taps == ()
        assert spec.net.side_cfg.modality == "text"
        params = iisan.init_params(spec, jax.random.key(0), abstract=True)
        assert set(params["tower"]) == {"text_side", "text_proj", "text_head", "fusion"}
    with pytest.raises(ValueError, match="modality"):
        get_config("iisan.py", "modality=audio")
