"""kfac-jax as hpcwf uses it, made to work with every JAX release hpcwf supports.

Import `kfac_jax` from here, never directly, in code that builds a K-FAC optimizer:

    from hpcwf.training.kfac_adapter import kfac_jax

Importing this module (no JAX backend is started, so `jax.distributed.initialize` may still
follow) does, in this one place:

1. Checks the installed versions: jax must be at least `SUPPORTED_JAX[0]` (a newer one than
   `SUPPORTED_JAX[1]`, the newest tested, is used with a warning), and `kfac_jax.Optimizer` must
   have every private method that the step functions below call (`KFAC_PRIVATE_METHODS`).
   A kfac-jax without one of them raises ImportError naming the method.
2. Works around the incompatibility of kfac-jax <= 0.0.8 with jax >= 0.9.2. From JAX 0.9.2
   on, `Primitive.get_bind_params(params)` returns the bind parameters as one dict (the
   sub-functions of call-like primitives such as `jit`/`custom_jvp_call` ride in it under
   "subfuns", and `bind` takes them from there); before, it returned a pair
   `(subfuns, params)`. kfac-jax 0.0.8's `tag_graph_matcher.eval_jaxpr_eqn`, which its
   tracer uses to re-evaluate the loss function equation by equation, unpacks a pair, so every
   K-FAC curvature update fails with `ValueError: too many values to unpack (expected 2)`.
   `eval_jaxpr_eqn` here accepts both forms (the same change as kfac-jax's unreleased fix
   upstream and as folx 0.2.30's `_split_bind_params`) and replaces kfac-jax's function when
   the installed JAX has the dict form and kfac-jax lacks the fix.
3. Works around the removal of `jax.device_put_replicated` in JAX 0.10 (JAX's pmap migration
   guide gives `jax.device_put` of the stacked copies as its replacement). kfac-jax 0.0.8's
   `utils.replicate_all_local_devices` calls it when no axis name is given (as in its staged
   multi-device methods and in user code replicating parameters for `Optimizer.step`);
   `replicate_all_local_devices` here passes an axis name instead, which takes kfac-jax's own
   `jax.device_put` path (a pmap over any axis name accepts the result).
4. Exposes what was found: `JAX_VERSION`, `KFAC_JAX_VERSION`, `BIND_PARAMS_IS_DICT`,
   `PATCHED` (the names of the kfac-jax functions that were replaced; empty if none).
5. Holds every use of kfac-jax's private members: `hpcwf.training.optimizer` splits
   `kfac_jax.Optimizer`'s step into a local and a global part (see `KFACOptimizer` there) from
   the pieces kfac-jax's own `_step` is made of, and gets each piece from one function here:
   `init_state`, `schedules`, `local_curvature_loss_and_grads`, `mark_synced`,
   `update_inverses`, `precondition`, `apply_norm_constraint`, `momentum_step` (and
   `curvature_block_types`, which block holds which parameter). They take the
   `kfac_jax.Optimizer` and must be called inside its `staging_context()` (kfac-jax's public
   way to say "inside a staged computation"), as kfac-jax's own staged methods are.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from typing import Any

import jax
import jax.extend as jex
import jax.numpy as jnp
import kfac_jax
from kfac_jax._src import tag_graph_matcher as _tgm
from kfac_jax._src import utils as _kfac_utils
from kfac_jax._src.utils import parallel as _kfac_parallel

# The JAX releases the K-FAC tests have been run with (both ends are tested).
SUPPORTED_JAX = ("0.9.0", "0.10.2")
# The last kfac-jax release whose graph evaluator only knows the (subfuns, params) form.
_KFAC_JAX_WITHOUT_DICT_BIND_PARAMS = "0.0.8"

# kfac_jax.Optimizer's private methods that the step functions of this module call.
KFAC_PRIVATE_METHODS = (
    "_setup_state_and_schedules",
    "_init",
    "_setup_func_args_and_rng",
    "_update_estimator_curvature",
    "_compute_loss_and_grads",
    "_maybe_update_inverse_cache",
    "_compute_preconditioned_gradient",
    "_maybe_apply_norm_constraint",
    "_coefficients_and_quad_change",
    "_weighted_sum_of_objects",
    "staging_context",
    "finalize",
)


def _version_tuple(version: str) -> tuple[int, ...]:
    """'0.9.0.1' -> (0, 9, 0, 1); a suffix such as 'rc1' or '.dev...' ends the number."""
    parts = []
    for part in version.split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(part):
            break
    return tuple(parts)


def _installed(dist: str, module: Any = None) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return getattr(module, "__version__", "0")


JAX_VERSION = _installed("jax", jax)
KFAC_JAX_VERSION = _installed("kfac-jax", kfac_jax)


def bind_params_is_dict() -> bool:
    """True when this JAX's `Primitive.get_bind_params` returns one dict (jax >= 0.9.2),
    False when it returns `(subfuns, params)`. Pure Python: starts no backend."""
    return isinstance(jex.core.Primitive("hpcwf_bind_params_probe").get_bind_params({}), dict)


def eval_jaxpr_eqn(eqn: Any, in_values: list) -> list:
    """Outputs of one jaxpr equation applied to `in_values` (a list of arrays or tracers), as a
    list; a drop-in for kfac_jax's `tag_graph_matcher.eval_jaxpr_eqn` that accepts both forms
    of `Primitive.get_bind_params` (see the module docstring)."""
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(bind_params, dict):  # jax >= 0.9.2: subfuns, if any, are in the dict
        subfuns, params = (), bind_params
    else:
        subfuns, params = bind_params
    with jex.source_info_util.user_context(eqn.source_info.traceback):
        output = eqn.primitive.bind(*subfuns, *in_values, **params)
    return list(output) if eqn.primitive.multiple_results else [output]


def _check_versions() -> None:
    low, high = (_version_tuple(v) for v in SUPPORTED_JAX)
    if _version_tuple(JAX_VERSION) < low:
        raise ImportError(f"jax {JAX_VERSION} is older than {SUPPORTED_JAX[0]}, the oldest hpcwf supports")
    if _version_tuple(JAX_VERSION) > high:
        warnings.warn(
            f"jax {JAX_VERSION} is newer than {SUPPORTED_JAX[1]}, the newest hpcwf's K-FAC was tested with",
            stacklevel=2,
        )
    missing = [m for m in KFAC_PRIVATE_METHODS if not hasattr(kfac_jax.Optimizer, m)]
    if missing:
        raise ImportError(
            f"kfac-jax {KFAC_JAX_VERSION}: kfac_jax.Optimizer lacks {', '.join(missing)}, which "
            "hpcwf.training.optimizer needs; install kfac-jax 0.0.8 (constraints.txt)"
        )


_original_replicate = _kfac_parallel.replicate_all_local_devices


def replicate_all_local_devices(obj: Any, axis_name: str | None = None) -> Any:
    """kfac_jax.utils.replicate_all_local_devices for JAX without `device_put_replicated`:
    every leaf of `obj` stacked once per local device along a new leading axis, one copy on
    each device. Same result and sharding as kfac-jax's own path for a given axis name."""
    return _original_replicate(obj, axis_name=axis_name or "kfac_axis")


def _has_device_put_replicated() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hasattr(jax, "device_put_replicated")


def _patch() -> tuple[str, ...]:
    """Replaces the kfac-jax functions this JAX needs replaced; returns their names."""
    patched = []
    # A kfac-jax release after 0.0.8 carries both fixes itself.
    old_kfac = _version_tuple(KFAC_JAX_VERSION) <= _version_tuple(_KFAC_JAX_WITHOUT_DICT_BIND_PARAMS)
    if old_kfac and BIND_PARAMS_IS_DICT:
        # kfac_jax's tracer calls it as `tgm.eval_jaxpr_eqn`: replacing the module attribute
        # reaches every call site.
        _tgm.eval_jaxpr_eqn = eval_jaxpr_eqn
        patched.append("tag_graph_matcher.eval_jaxpr_eqn")
    if old_kfac and not _has_device_put_replicated():
        # Called as `parallel.replicate_all_local_devices` inside kfac-jax and as
        # `kfac_jax.utils.replicate_all_local_devices` (a re-export) outside.
        _kfac_parallel.replicate_all_local_devices = replicate_all_local_devices
        _kfac_utils.replicate_all_local_devices = replicate_all_local_devices
        patched.append("utils.replicate_all_local_devices")
    return tuple(patched)


# ---- kfac_jax.Optimizer's step in pieces (call inside `opt.staging_context()`) -------------


def init_state(opt: kfac_jax.Optimizer, params: Any, key: jax.Array, batch: Any) -> Any:
    """kfac_jax.Optimizer.State for `params` (kfac-jax's `init` without its pmap wrapper, so
    it can be jitted for one device); `opt` must be finalized (`opt.finalize`)."""
    return opt._init(params, key, batch)


def schedules(opt: kfac_jax.Optimizer, state: Any) -> tuple[Any, Any, Any, Any]:
    """(learning rate, momentum, damping, preconditioner damping) at `state`'s step, from the
    schedules `opt` was built with."""
    return opt._setup_state_and_schedules(None, 0.0, None, state.step_counter, state.data_seen)


def local_curvature_loss_and_grads(
    opt: kfac_jax.Optimizer,
    params: Any,
    state: Any,
    key: jax.Array,
    batch: Any,
    precon_damping: Any,
    ema_old: float,
) -> tuple[Any, Any, Any]:
    """(loss, gradients, curvature estimate) of this device's `batch` alone: the estimator
    state of `state` with the batch's statistics entered into its moving average with weights
    (ema_old, 1), not averaged over devices (`sync=False`: no collective)."""
    func_args, rng = opt._setup_func_args_and_rng(params, key, batch, None)
    curvature = opt._update_estimator_curvature(
        state.estimator_state,
        func_args,
        rng,
        ema_old=ema_old,
        ema_new=1.0,
        precon_damping=precon_damping,
        sync=False,
    )
    loss, grads, _, _ = opt._compute_loss_and_grads(func_args)
    return loss, grads, curvature


def with_synced_curvature(state: Any, curvature: Any) -> Any:
    """A copy of kfac_jax.Optimizer.State `state` holding the curvature estimator state
    `curvature` (already averaged over ranks), marked as synced so that kfac-jax does not
    average it again."""
    state = state.copy()
    state.estimator_state = type(curvature)(synced=jnp.asarray(True), blocks_states=curvature.blocks_states)
    return state


def advance(state: Any, delta: Any, n_samples: int) -> Any:
    """`state` after the parameter change `delta` computed from `n_samples` samples (over all
    ranks): kfac-jax's step bookkeeping (velocities, data_seen, step_counter)."""
    state = state.copy()
    state.velocities = delta
    state.data_seen = state.data_seen + n_samples
    state.step_counter = state.step_counter + 1
    return state


def update_inverses(opt: kfac_jax.Optimizer, state: Any, precon_damping: Any) -> Any:
    """`state` with the inverse cache of its curvature blocks updated where due."""
    return opt._maybe_update_inverse_cache(state, precon_damping)


def precondition(opt: kfac_jax.Optimizer, state: Any, grads: Any, precon_damping: Any) -> Any:
    """F^-1 g: the gradients multiplied by the damped inverse curvature of `state`."""
    return opt._compute_preconditioned_gradient(state, grads, precon_damping)


def apply_norm_constraint(opt: kfac_jax.Optimizer, grads: Any, precon: Any, scale: Any) -> Any:
    """`precon` scaled down until scale^2 g.precon <= opt's norm constraint (unchanged without
    one)."""
    precon, _ = opt._maybe_apply_norm_constraint(grads, precon, scale)
    return precon


def momentum_step(
    opt: kfac_jax.Optimizer, state: Any, precon: Any, grads: Any, lr: Any, momentum: Any, damping: Any
) -> tuple[Any, Any]:
    """(delta, coefficients): the parameter change coefficients[0] * precon + coefficients[1] *
    state.velocities, with coefficients (-lr, momentum) for fixed schedules."""
    vectors = (precon, state.velocities)
    coefficients, _ = opt._coefficients_and_quad_change(
        state, vectors, grads, lr, momentum, damping, None, False
    )
    return opt._weighted_sum_of_objects(vectors, coefficients), coefficients


def curvature_block_types(opt: kfac_jax.Optimizer) -> dict[str, str]:
    """{parameter path ('embedding/one_0/kernel', ...): class name of the curvature block that
    holds it ('RepeatedDenseBlock', 'NaiveDiagonal', ...)} of a finalized optimizer.

    A parameter that kfac-jax's graph matcher did not recognise as part of a dense layer ends
    in a 'NaiveDiagonal' block, whose curvature is the square of the walker-summed gradient
    (see hpcwf.model.layers); tests use this to keep that from happening unnoticed."""
    estimator = opt._estimator
    types = {}
    for path, index in jax.tree_util.tree_flatten_with_path(estimator.params_block_index)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path).removeprefix("params/")
        types[name] = type(estimator.blocks[index]).__name__
    return types


BIND_PARAMS_IS_DICT = bind_params_is_dict()
_check_versions()
PATCHED = _patch()


__all__ = [
    "BIND_PARAMS_IS_DICT",
    "JAX_VERSION",
    "KFAC_JAX_VERSION",
    "KFAC_PRIVATE_METHODS",
    "PATCHED",
    "SUPPORTED_JAX",
    "apply_norm_constraint",
    "curvature_block_types",
    "eval_jaxpr_eqn",
    "init_state",
    "kfac_jax",
    "advance",
    "local_curvature_loss_and_grads",
    "momentum_step",
    "precondition",
    "replicate_all_local_devices",
    "schedules",
    "update_inverses",
    "with_synced_curvature",
]
