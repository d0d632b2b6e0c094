"""A method defined outside jaxrec, named by dotted path: it proves a new method needs no
edit to the core. It has frozen consts (a log-popularity prior built from the task), a
per-evaluation precomputation (``eval_consts``) and an evaluator of its own.

Model: scores = w + prior, w [N] trained with softmax cross-entropy on the next item.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct


@struct.dataclass
class State:
    step: jnp.ndarray
    w: jnp.ndarray             # [N] learned item biases
    opt: object
    tx: object = struct.field(pytree_node=False)


def make_consts(config, task):
    return {"prior": jnp.asarray(np.log1p(task.item_freq), jnp.float32)}


def init(rng, task, config):
    del rng
    tx = optax.sgd(float(config.optim.lr))
    w = jnp.zeros((task.num_items,), jnp.float32)
    return State(step=jnp.zeros((), jnp.int32), w=w, opt=tx.init(w), tx=tx)


def train_step(state, batch, rng, consts):
    del rng

    def loss_fn(w):
        logits = jnp.broadcast_to(w + consts["prior"], (batch["action"].shape[0], w.shape[0]))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["action"]).mean()

    loss, g = jax.value_and_grad(loss_fn)(state.w)
    upd, opt = state.tx.update(g, state.opt, state.w)
    return state.replace(step=state.step + 1, w=optax.apply_updates(state.w, upd),
                         opt=opt), {"loss": loss}


def eval_consts(state, consts):
    """Once per evaluation: the item scores, shared by every batch."""
    return {**consts, "item_scores": state.w + consts["prior"]}


def predict(state, batch, consts):
    b = batch["state"].shape[0]
    return jnp.broadcast_to(consts["item_scores"], (b, consts["item_scores"].shape[0]))


class PriorEvaluator:
    """Reports what it received, so the test can check the consts reached it."""

    lower_is_better = ("prior_gap",)

    def __init__(self, method, task, config, options):
        self.options, self.task = options, task

    def run(self, state, consts, split):
        top = int(jnp.argmax(state.w + consts["prior"]))
        return {"prior_sum": float(consts["prior"].sum()),
                "top_is_most_frequent": float(top == int(np.argmax(self.task.item_freq))),
                "prior_gap": float(jnp.abs(state.w).mean()),
                "queries": self.task.split(split).size}


EVALUATORS = {"prior": PriorEvaluator}
