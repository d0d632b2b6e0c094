"""Loading Hugging Face checkpoints (safetensors + config.json) into linen parameter trees.

Paper context: IISAN (Fu et al., SIGIR 2024) — the frozen backbones are the public Hugging Face
checkpoints (`bert-base-uncased`, `google/vit-base-patch16-224`, ...); IISAN-Versa
(arXiv 2411.02992) adds decoder LLMs (Llama, Gemma, Mistral). jaxrec writes those backbones
itself in linen and reads the checkpoint files directly, without torch.

What a hub checkpoint looks like on disk (this is what the functions below expect):

* ``config.json`` — the model configuration (read by :func:`read_config`);
* either one ``model.safetensors`` file, or several shards named in
  ``model.safetensors.index.json`` whose ``weight_map`` maps each tensor name to its shard
  (read by :func:`read_safetensors`);
* tensors use PyTorch names and layouts: a ``torch.nn.Linear`` weight is ``[out, in]`` (so a
  linen ``Dense`` kernel ``[in, out]`` is its transpose, :func:`linear_kernel`), a
  ``torch.nn.Conv2d`` weight is ``[out, in, kh, kw]`` (linen ``Conv`` wants
  ``[kh, kw, in, out]``, :func:`conv_kernel`), and an ``Embedding`` weight is
  ``[vocab, dim]`` exactly as ``nn.Embed``'s ``embedding``.

:func:`assign_params` then fills a linen parameter template from those tensors through an
explicit mapping and reports every problem at once in one :class:`CheckpointError`, so a user
sees the whole picture (e.g. "wrong architecture": dozens of missing and unexpected names)
rather than fixing one tensor per run.

:func:`load_backbone` is the whole loading path shared by ``load_bert`` / ``load_vit`` /
``load_llama``: open the files (:class:`CheckpointTensors`: headers only), build a template
whose PEFT leaves alone are initialised (:func:`template_params`, optionally retyped by
:func:`with_weights_dtype`), check every name and shape, then read, convert and place one
tensor at a time, and return a :class:`LoadedBackbone` ``(config, params)``. Peak host memory
is then about one tensor beyond the loaded parameters, whatever the checkpoint's size.

This module is shared by every backbone (BERT, ViT, Llama-family); its public API is kept stable.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import traverse_util

__all__ = [
    "CheckpointError",
    "SAFETENSORS_FILE",
    "SAFETENSORS_INDEX_FILE",
    "CONFIG_FILE",
    "read_config",
    "read_safetensors",
    "safetensors_names",
    "assign_params",
    "linear_kernel",
    "conv_kernel",
    "path_str",
    "find_prefix",
    "dense_entries",
    "layer_norm_entries",
    "template_params",
    "with_weights_dtype",
    "CheckpointTensors",
    "LoadedBackbone",
    "load_backbone",
]

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

ParamPath = tuple[str, ...]
Transform = Callable[[np.ndarray], np.ndarray]
# our parameter path -> (checkpoint tensor name, transform applied to the stored array or None)
ParamMapping = Mapping[ParamPath, tuple[str, Transform | None]]


class CheckpointError(ValueError):
    """A checkpoint directory cannot be read or does not fit the model.

    Attributes (all lists are sorted; empty when that kind of problem did not occur):
      ckpt_dir: the checkpoint directory.
      missing: checkpoint tensor names the model needs but the files do not contain.
      unexpected: tensor names in the files that nothing consumed and that are not ignorable.
      mismatched: ``(tensor name, expected shape, found shape)``; the found shape is after the
        layout transform (e.g. transposition), the expected one is the model's parameter shape.
      unmapped: our parameter paths ('/'-joined) that have no checkpoint source.
    """

    def __init__(
        self,
        message: str,
        ckpt_dir: str | os.PathLike | None = None,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
        unmapped: Sequence[str] = (),
    ):
        super().__init__(message)
        self.ckpt_dir = None if ckpt_dir is None else str(ckpt_dir)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.unmapped = list(unmapped)


# --------------------------------------------------------------------------------------------
# Layout transforms (PyTorch layout -> linen layout)
# --------------------------------------------------------------------------------------------


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """``torch.nn.Linear.weight`` ``[out, in]`` -> linen ``Dense`` kernel ``[in, out]``."""
    if w.ndim != 2:
        raise ValueError(f"linear_kernel expects a 2-D [out, in] weight, got shape {w.shape}")
    return np.ascontiguousarray(w.T)


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """``torch.nn.Conv2d.weight`` ``[out, in, kh, kw]`` -> linen ``Conv`` kernel ``[kh, kw, in, out]``."""
    if w.ndim != 4:
        raise ValueError(f"conv_kernel expects a 4-D [out, in, kh, kw] weight, got shape {w.shape}")
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def find_prefix(names: Iterable[str], anchor: str, candidates: Sequence[str] = ()) -> str:
    """The prefix under which ``anchor`` is stored in a checkpoint ('' or e.g. ``'bert.'``).

    Task-head checkpoints nest the backbone under a prefix (``BertForPreTraining`` ->
    ``bert.``, ``ViTForImageClassification`` -> ``vit.``, ``LlamaForCausalLM`` -> ``model.``).
    ``candidates`` are tried first (after ''); otherwise any name ending in ``anchor`` decides.
    Returns '' when nothing matches, so the caller's error then lists the unprefixed names.
    """
    names = set(names)
    for p in ("",) + tuple(candidates):
        if p + anchor in names:
            return p
    found = sorted(n[: -len(anchor)] for n in names if n.endswith(anchor))
    return found[0] if found else ""


def dense_entries(ours: ParamPath, theirs: str, bias: bool = True) -> dict:
    """Mapping entries for a ``torch.nn.Linear`` named ``theirs`` read into a linen Dense at ``ours``.

    ``ours/kernel [in, out]`` <- ``{theirs}.weight`` transposed, ``ours/bias`` <- ``{theirs}.bias``
    (when ``bias``).
    """
    m = {tuple(ours) + ("kernel",): (f"{theirs}.weight", linear_kernel)}
    if bias:
        m[tuple(ours) + ("bias",)] = (f"{theirs}.bias", None)
    return m


def layer_norm_entries(ours: ParamPath, theirs: str, names: tuple[str, str] = ("weight", "bias")) -> dict:
    """Mapping entries for a ``torch.nn.LayerNorm`` named ``theirs`` read into a linen LayerNorm.

    ``ours/scale`` <- ``{theirs}.{names[0]}``, ``ours/bias`` <- ``{theirs}.{names[1]}``; old BERT
    conversions store ``("gamma", "beta")``.
    """
    return {tuple(ours) + ("scale",): (f"{theirs}.{names[0]}", None),
            tuple(ours) + ("bias",): (f"{theirs}.{names[1]}", None)}


def path_str(path: Iterable[Any]) -> str:
    """Joins a parameter path with '/', the convention used by freezing/learning-rate patterns."""
    return "/".join(str(p) for p in path)


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _dir(ckpt_dir: str | os.PathLike) -> Path:
    path = Path(ckpt_dir)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist or is not a directory", path)
    return path


def read_config(ckpt_dir: str | os.PathLike) -> dict:
    """Reads ``<ckpt_dir>/config.json`` into a dict.

    Raises:
      CheckpointError: the directory or file is missing, or the file is not a JSON object
        (the message names the file and the JSON error position).
    """
    path = _dir(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} not found: a Hugging Face checkpoint needs its config.json", ckpt_dir)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{str(path)!r} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}", ckpt_dir
        ) from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object, found {type(config).__name__}", ckpt_dir)
    return config


def _shard_plan(ckpt_dir: str | os.PathLike) -> dict[Path, list[str] | None]:
    """Which files to open and which tensors to take from each (None: all of them)."""
    root = _dir(ckpt_dir)
    index = root / SAFETENSORS_INDEX_FILE
    single = root / SAFETENSORS_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{str(index)!r} is not valid JSON: {e.msg} at line {e.lineno}", ckpt_dir) from e
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{str(index)!r} has no 'weight_map' object", ckpt_dir) from e
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{str(index)!r}: 'weight_map' must map tensor names to file names", ckpt_dir)
        plan: dict[Path, list[str]] = {}
        for name, fname in weight_map.items():
            plan.setdefault(root / fname, []).append(name)
        absent = sorted(str(p.name) for p in plan if not p.is_file())
        if absent:
            raise CheckpointError(f"{str(index)!r} names shard files that are not in {str(root)!r}: {absent}", ckpt_dir)
        return dict(plan)
    if single.is_file():
        return {single: None}
    present = sorted(p.name for p in root.iterdir())
    hint = ""
    if any(n.endswith((".bin", ".pt", ".pth", ".h5", ".msgpack")) for n in present):
        hint = (" Only safetensors are read (no torch/TF at run time); convert the weights to "
                "model.safetensors first.")
    raise CheckpointError(
        f"no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE} in {str(root)!r} (found {present}).{hint}",
        ckpt_dir,
    )


def _open_safetensors(file: Path, ckpt_dir: str | os.PathLike):
    """``safe_open`` on one file; a truncated or corrupt file becomes a CheckpointError naming it."""
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="np")
    except Exception as e:  # safetensors raises its own SafetensorError (not a ValueError)
        raise CheckpointError(
            f"{str(file)!r} in checkpoint {str(ckpt_dir)!r} is not a readable safetensors file "
            f"(truncated or corrupt?): {e}",
            ckpt_dir,
        ) from e


class CheckpointTensors(Mapping):
    """The tensors of a (possibly sharded) safetensors checkpoint, read one at a time on access.

    Opening reads only the file headers (names, shapes, dtypes); ``tensors[name]`` reads that
    one tensor's data. Loaders convert and place each tensor before reading the next, so the
    host never holds the whole checkpoint in its stored dtype next to its converted copy.
    Usable as a context manager (closes the files) and wherever a ``{name: array}`` mapping is
    expected (:func:`assign_params`).

    Raises (on construction):
      CheckpointError: a missing directory / file, a bad index, a shard the index names but
        that is absent, a tensor the index places in a file that lacks it, or a truncated /
        corrupt safetensors file (the message names the directory and the file).
    """

    def __init__(self, ckpt_dir: str | os.PathLike):
        self.ckpt_dir = ckpt_dir
        self._files: dict[Path, Any] = {}
        self._where: dict[str, Path] = {}
        self._meta: dict[str, tuple[tuple[int, ...], str]] = {}
        try:
            for file, names in _shard_plan(ckpt_dir).items():
                f = self._files[file] = _open_safetensors(file, ckpt_dir)
                keys = set(f.keys())
                for name in sorted(keys) if names is None else names:
                    if name not in keys:
                        raise CheckpointError(
                            f"{SAFETENSORS_INDEX_FILE} in {str(ckpt_dir)!r} places tensor {name!r} in "
                            f"{file.name!r}, but that file does not contain it",
                            ckpt_dir,
                        )
                    sl = f.get_slice(name)
                    self._where[name] = file
                    self._meta[name] = (tuple(int(d) for d in sl.get_shape()), str(sl.get_dtype()))
        except BaseException:
            self.close()
            raise

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of ``name``, from the header (no data read)."""
        return self._meta[name][0]

    def dtype_str(self, name: str) -> str:
        """The safetensors dtype string of ``name`` (``"F32"``, ``"BF16"``...)."""
        return self._meta[name][1]

    def __getitem__(self, name: str) -> np.ndarray:
        file = self._where[name]
        try:
            return self._files[file].get_tensor(name)
        except Exception as e:
            raise CheckpointError(
                f"cannot read tensor {name!r} from {str(file)!r} in checkpoint {str(self.ckpt_dir)!r}: {e}",
                self.ckpt_dir,
            ) from e

    def __iter__(self):
        return iter(self._meta)

    def __len__(self) -> int:
        return len(self._meta)

    def __contains__(self, name: object) -> bool:
        return name in self._meta

    def close(self) -> None:
        """Releases the open files (the mapping is unusable afterwards)."""
        self._files.clear()

    def __enter__(self) -> "CheckpointTensors":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def safetensors_names(ckpt_dir: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """Lists the tensors of a checkpoint without reading their data.

    Returns:
      ``{tensor name: (shape, safetensors dtype string such as "F32" or "BF16")}``.
    """
    with CheckpointTensors(ckpt_dir) as t:
        return {name: (t.shape(name), t.dtype_str(name)) for name in t}


def read_safetensors(ckpt_dir: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Reads the tensors of a (possibly sharded) safetensors checkpoint into NumPy arrays.

    Handles a single ``model.safetensors`` or shards listed in ``model.safetensors.index.json``
    (the index's ``weight_map`` decides which shard each tensor is read from). bfloat16 tensors
    come back as ``ml_dtypes.bfloat16`` arrays (the dtype JAX uses), no torch involved. To load
    a large model, prefer :class:`CheckpointTensors` (one tensor in memory at a time).

    Args:
      ckpt_dir: the checkpoint directory.
      names: if given, only these tensors are read (saves host memory for large models);
        a name that the checkpoint lacks raises CheckpointError.

    Returns:
      ``{tensor name: array}`` with the stored (PyTorch) names, shapes and dtypes.
    """
    with CheckpointTensors(ckpt_dir) as t:
        wanted = list(t) if names is None else list(names)
        absent = sorted(set(wanted) - set(t))
        if absent:
            raise CheckpointError(
                f"tensors not found in checkpoint {str(ckpt_dir)!r}: {absent}", ckpt_dir, missing=absent
            )
        return {name: t[name] for name in wanted}


# --------------------------------------------------------------------------------------------
# Filling a parameter template
# --------------------------------------------------------------------------------------------


def _matches(patterns: Sequence[str], name: str) -> bool:
    return any(re.search(p, name) for p in patterns)


def _stored_shape(tensors: Mapping[str, Any], name: str) -> tuple[int, ...]:
    """A tensor's stored shape without reading its data when ``tensors`` is lazy."""
    if isinstance(tensors, CheckpointTensors):
        return tensors.shape(name)
    return tuple(np.shape(tensors[name]))


# Shape of a layout transform's output from its input shape (None: the transform rejects that
# rank), so shapes are checked from the file headers before any data is read.
_TRANSFORM_SHAPES: dict[Any, Callable[[tuple[int, ...]], tuple[int, ...] | None]] = {
    linear_kernel: lambda s: (s[1], s[0]) if len(s) == 2 else None,
    conv_kernel: lambda s: (s[2], s[3], s[1], s[0]) if len(s) == 4 else None,
}


def _check_shape(name, transform, stored, expected, mismatched) -> bool:
    """Appends ``(name, expected, found)`` to ``mismatched`` unless the transformed shape fits.

    ``found`` is the transformed shape, or the stored one when the transform rejects its rank.
    Transforms without a shape rule are checked after reading (returns True here).
    """
    if transform is None:
        found = stored
    elif transform in _TRANSFORM_SHAPES:
        found = _TRANSFORM_SHAPES[transform](stored)
        found = stored if found is None else found
    else:
        return True
    if tuple(found) != tuple(expected):
        mismatched.append((name, tuple(expected), tuple(found)))
        return False
    return True


def assign_params(
    template_params: Mapping,
    mapping: ParamMapping,
    tensors: Mapping[str, np.ndarray],
    ckpt_dir: str | os.PathLike,
    *,
    ignorable: Sequence[str] = (),
    keep: Sequence[str] = (),
    put: Callable[[np.ndarray], Any] | None = None,
) -> dict:
    """Builds a parameter tree shaped like ``template_params`` from checkpoint tensors.

    Every leaf of the template is either (a) filled from the checkpoint through ``mapping``, or
    (b) kept from the template because its '/'-joined path matches a ``keep`` regex — this is
    how freshly initialised PEFT parameters (LoRA factors, adapters) that no checkpoint holds
    survive loading. Any other leaf is an error, as is any tensor in ``tensors`` that was not
    consumed unless its name matches an ``ignorable`` regex (e.g. task heads, ``position_ids``
    buffers, a pooler that the model does not build).

    Names and shapes are checked first (from the headers when ``tensors`` is a
    :class:`CheckpointTensors`), so a checkpoint that does not fit fails before any data is
    read. Then each tensor is read, cast to its template leaf's dtype, put into its layout and
    handed to ``put`` before the next one is read: host memory holds the converted leaves plus
    one tensor in flight.

    Args:
      template_params: nested dict of arrays or ``jax.ShapeDtypeStruct`` (``jax.eval_shape``
        of ``init`` avoids materialising random weights for big models). Only shapes and dtypes
        are read, except for ``keep`` leaves, which must be concrete arrays.
      mapping: ``{our path tuple: (checkpoint tensor name, transform or None)}``; the transform
        turns the stored PyTorch-layout array into our layout (:func:`linear_kernel`, ...).
      tensors: ``{name: array}`` as returned by :func:`read_safetensors`, or a lazy
        :class:`CheckpointTensors`.
      ckpt_dir: named in error messages.
      ignorable: regexes (``re.search``) over tensor names that may stay unused.
      keep: regexes over our '/'-joined parameter paths whose template values are kept.
      put: applied to each converted leaf (e.g. ``jax.device_put``); default: keep the NumPy
        array.

    Returns:
      A nested dict with the template's structure whose leaves are ``put(array)`` (host NumPy
      arrays by default) in the template leaf dtype: float32 parameters stay float32 even
      when the file is bf16, bf16 ones are rounded from a float32 file.

    Raises:
      CheckpointError: listing, in one message, every missing tensor, every unexpected tensor,
        every shape mismatch (expected vs found) and every parameter without a source.
      ValueError: ``mapping`` names a path that is not in the template (a loader bug, not a
        checkpoint problem).
    """
    flat_template = traverse_util.flatten_dict(dict(template_params))
    unknown = sorted(path_str(p) for p in mapping if tuple(p) not in flat_template)
    if unknown:
        raise ValueError(f"parameter mapping names paths that the model does not have: {unknown}")

    missing: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    unmapped: list[str] = []
    used: set[str] = set()
    to_read: list[ParamPath] = []
    flat_out: dict[ParamPath, Any] = {}

    # Pass 1: names and shapes only.
    for path, leaf in flat_template.items():
        if path in mapping:
            name, transform = mapping[path]
            if name not in tensors:
                missing.append(name)
                continue
            used.add(name)
            if _check_shape(name, transform, _stored_shape(tensors, name), leaf.shape, mismatched):
                to_read.append(path)
        elif _matches(keep, path_str(path)):
            if not hasattr(leaf, "__array__"):
                raise ValueError(
                    f"parameter {path_str(path)!r} is kept from the template but the template leaf is abstract "
                    f"({type(leaf).__name__}); pass concrete initial values for parameters not in the checkpoint"
                )
            flat_out[path] = leaf
        else:
            unmapped.append(path_str(path))
    unexpected = sorted(n for n in tensors if n not in used and not _matches(ignorable, n))

    def fail():
        lines = [f"checkpoint {str(ckpt_dir)!r} does not fit the model:"]
        if missing:
            lines.append(f"  missing tensors ({len(missing)}):")
            lines += [f"    {n}" for n in sorted(missing)]
        if unexpected:
            lines.append(f"  unexpected tensors ({len(unexpected)}), not used by the model:")
            lines += [f"    {n} {_stored_shape(tensors, n)}" for n in unexpected]
        if mismatched:
            lines.append(f"  mis-shaped tensors ({len(mismatched)}), expected vs found (after layout transform):")
            lines += [f"    {n}: expected {e}, found {f}" for n, e, f in sorted(mismatched)]
        if unmapped:
            lines.append(f"  model parameters with no checkpoint source ({len(unmapped)}):")
            lines += [f"    {p}" for p in sorted(unmapped)]
        return CheckpointError(
            "\n".join(lines),
            ckpt_dir,
            missing=sorted(missing),
            unexpected=unexpected,
            mismatched=sorted(mismatched),
            unmapped=sorted(unmapped),
        )

    if missing or unexpected or mismatched or unmapped:
        raise fail()
    # Pass 2: read, cast, transform and place one tensor at a time.
    for path in to_read:
        leaf = flat_template[path]
        name, transform = mapping[path]
        # Cast first: a float32 file read into bf16 leaves never holds a float32 copy twice.
        value = np.asarray(tensors[name]).astype(leaf.dtype, copy=False)
        if transform is not None:
            try:
                value = transform(value)
            except ValueError:
                value = None  # the transform rejects the rank
            if value is None or tuple(value.shape) != tuple(leaf.shape):
                mismatched.append((name, tuple(leaf.shape), _stored_shape(tensors, name) if value is None
                                   else tuple(value.shape)))
                continue
        flat_out[path] = value if put is None else put(value)
        del value
    if mismatched:
        raise fail()
    return traverse_util.unflatten_dict(flat_out)


# --------------------------------------------------------------------------------------------
# The loading path shared by the backbones
# --------------------------------------------------------------------------------------------


def template_params(module: Any, inputs: Sequence[Any], rng: jax.Array | None = None, *,
                    concrete: bool | Sequence[str] = True) -> dict:
    """Initial ``'params'`` of ``module.init(rng, *inputs)``, fully or partly materialised.

    Args:
      module: a linen module.
      inputs: example positional inputs for ``init`` (shapes only matter; batch 1 is enough).
      rng: init key (default ``jax.random.key(0)``). Flax derives each parameter's key from its
        path, so a leaf gets the same value whichever other leaves are materialised.
      concrete: True: every leaf is an array (jitted ``init``). False: every leaf is a
        ``jax.ShapeDtypeStruct`` (``jax.eval_shape``, nothing computed). A sequence of regexes
        over '/'-joined paths: only matching leaves are arrays — the template
        :func:`assign_params` wants, with fresh PEFT leaves and abstract pretrained ones. Under
        ``jit`` XLA then drops the random init of the (possibly billions of) pretrained weights
        as dead code; with no matching leaf nothing is computed at all.

    Returns:
      The nested ``params`` dict.
    """
    rng = jax.random.key(0) if rng is None else rng

    def init(r):
        return module.init(r, *inputs)["params"]

    if concrete is True:
        return jax.jit(init)(rng)
    abstract = jax.eval_shape(init, rng)
    if concrete is False:
        return abstract
    flat = traverse_util.flatten_dict(dict(abstract))
    fresh_paths = [p for p in flat if _matches(concrete, path_str(p))]
    if fresh_paths:
        fresh = jax.jit(lambda r: [traverse_util.flatten_dict(init(r))[p] for p in fresh_paths])(rng)
        flat.update(zip(fresh_paths, fresh))
    return traverse_util.unflatten_dict(flat)


def with_weights_dtype(params: Mapping, dtype: Any, keep: Sequence[str] = ()) -> dict:
    """``params`` with every leaf whose path matches no ``keep`` regex retyped to ``dtype``.

    The pretrained (checkpoint) leaves of a frozen backbone can so be stored in bfloat16 while
    the PEFT leaves (``keep``: LoRA factors, adapters) stay in their own (float32) dtype.
    Abstract leaves (``jax.ShapeDtypeStruct``) get the new dtype; concrete ones are cast.
    ``dtype=None`` returns ``params`` unchanged.
    """
    if dtype is None:
        return params
    dtype = np.dtype(jax.numpy.dtype(dtype))

    def retype(path, leaf):
        if _matches(keep, path_str(path)):
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=leaf.sharding)
        return leaf.astype(dtype)

    flat = traverse_util.flatten_dict(dict(params))
    return traverse_util.unflatten_dict({p: retype(p, v) for p, v in flat.items()})


class LoadedBackbone(NamedTuple):
    """What every ``load_*`` backbone loader returns; unpacks as ``config, params = load_...``.

    Attributes:
      config: the backbone config parsed from ``config.json`` plus the caller's overrides; the
        module is ``<Module>(config)`` (``BertEncoder``, ``ViTEncoder``, ``LlamaModel``).
      params: the ``'params'`` collection (device arrays), pretrained leaves from the checkpoint
        and fresh PEFT leaves (LoRA factors, adapters) from ``init``.
    """

    config: Any
    params: dict


def load_backbone(
    ckpt_dir: str | os.PathLike,
    config: Any,
    module: Any,
    inputs: Sequence[Any],
    param_mapping: Callable[[Any, Sequence[str]], tuple[ParamMapping, Sequence[str]]],
    *,
    keep: Sequence[str] = (),
    rng: jax.Array | None = None,
    weights_dtype: Any = None,
) -> LoadedBackbone:
    """Reads a checkpoint's tensors into ``module``'s parameters.

    The template comes from ``jax.eval_shape`` (only the ``keep`` leaves are computed), and each
    tensor is read, converted to its leaf dtype and put on the device before the next one is
    read (:class:`CheckpointTensors`, :func:`assign_params`): peak host memory is about one
    tensor, plus, on a CPU backend, the loaded parameters themselves.

    Args:
      ckpt_dir: checkpoint directory (safetensors, single or sharded).
      config: the module's config, returned as is.
      module: the linen module built from ``config``.
      inputs: example inputs for ``module.init`` (see :func:`template_params`).
      param_mapping: ``(config, tensor names) -> (mapping, ignorable)`` for :func:`assign_params`.
      keep: regexes of parameter paths no checkpoint holds (PEFT leaves); they are initialised
        from ``rng``, and only they.
      rng: init key for the ``keep`` leaves (default ``jax.random.key(0)``).
      weights_dtype: dtype of the leaves read from the checkpoint (e.g. ``jnp.bfloat16`` for a
        frozen backbone); None: the module's parameter dtype. ``keep`` leaves keep theirs.

    Returns:
      :class:`LoadedBackbone` ``(config, params)`` with ``params`` on the default device.

    Raises:
      CheckpointError: unreadable files, or every missing / unexpected / mis-shaped tensor at once.
    """
    with CheckpointTensors(ckpt_dir) as tensors:
        mapping, ignorable = param_mapping(config, list(tensors))
        template = with_weights_dtype(template_params(module, inputs, rng, concrete=keep), weights_dtype, keep)
        params = assign_params(template, mapping, tensors, ckpt_dir, ignorable=ignorable, keep=keep,
                               put=jax.device_put)
    return LoadedBackbone(config, params)
