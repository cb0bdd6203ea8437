"""kfac-jax on the installed JAX (hpcwf.training.kfac_adapter): its equation evaluator, its
replication of pytrees over devices and a whole K-FAC step. Without the adapter they fail with
kfac-jax 0.0.8 on jax >= 0.9.2 (`ValueError: too many values to unpack`) and on jax >= 0.10
(`jax.device_put_replicated` is gone). Cost: ~5 s."""

import jax
import jax.numpy as jnp
import numpy as np

from hpcwf.training.kfac_adapter import kfac_jax


def _interpret(closed_jaxpr, *args):
    """Evaluates a jaxpr equation by equation with kfac-jax's own evaluator, as its tracer
    does when it re-runs the loss function to collect layer statistics."""
    from kfac_jax._src import tag_graph_matcher as tgm

    env = dict(zip(closed_jaxpr.jaxpr.constvars, closed_jaxpr.consts, strict=True))
    env.update(zip(closed_jaxpr.jaxpr.invars, args, strict=True))

    def read(v):
        return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

    for eqn in closed_jaxpr.jaxpr.eqns:
        outs = tgm.eval_jaxpr_eqn(eqn, [read(v) for v in eqn.invars])
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in closed_jaxpr.jaxpr.outvars]


def test_kfac_jax_evaluates_call_primitives_like_jax():
    """Plain, jit (pjit), custom_jvp and custom_vjp equations, evaluated by kfac-jax's
    evaluator, give what the function itself gives (values and, through the evaluator, grads):
    on jax >= 0.9.2 the sub-functions of call primitives come inside the bind parameters."""

    @jax.custom_vjp
    def clip_grad(x):
        return jnp.sin(x)

    clip_grad.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (jnp.clip(g * jnp.cos(x), -0.5, 0.5),))

    @jax.jit
    def inner(x, y):
        return jnp.tanh(x @ y) + 1.0

    def f(x, y):
        z = inner(x, y)
        return jnp.sum(jax.nn.softplus(z) * clip_grad(z)) + jax.nn.logsumexp(x)

    x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    y = jnp.cos(jnp.arange(8.0)).reshape(4, 2)
    closed = jax.make_jaxpr(f)(x, y)
    names = {eqn.primitive.name for eqn in closed.jaxpr.eqns}
    assert {"pjit", "custom_jvp_call", "custom_vjp_call"} <= names or {"jit"} <= names, names
    (value,) = _interpret(closed, x, y)
    np.testing.assert_allclose(value, f(x, y), rtol=1e-6)
    grads = jax.grad(lambda x, y: _interpret(closed, x, y)[0], argnums=(0, 1))(x, y)
    expected = jax.grad(f, argnums=(0, 1))(x, y)
    for g, e in zip(grads, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_kfac_step_solves_linear_least_squares():
    """One K-FAC step (learning rate 1, no momentum, ~zero damping) on a dense layer with a
    normal predictive distribution is the Gauss-Newton step, which is exact for linear least
    squares: it lands on the true weights (Martens & Grosse 2015: the Kronecker factors of
    one dense layer with an output-independent Fisher factor are exact)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 3)), jnp.float32)
    w_true = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
    b_true = jnp.asarray([0.5, -1.0], jnp.float32)
    batch = (x, x @ w_true + b_true)

    def loss(params, batch):
        x, target = batch
        y = x @ params["w"] + params["b"]
        kfac_jax.register_normal_predictive_distribution(y, target)  # variance 1/2
        return jnp.mean(jnp.sum((y - target) ** 2, axis=-1))  # its negative log-likelihood

    opt = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss),
        l2_reg=0.0,
        learning_rate_schedule=lambda t: 1.0,
        momentum_schedule=lambda t: 0.0,
        damping_schedule=lambda t: 1e-10,
        min_damping=1e-12,
        estimation_mode="fisher_exact",
        curvature_ema=0.0,
        inverse_update_period=1,
        num_burnin_steps=0,
        multi_device=False,
    )
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    key = jax.random.PRNGKey(0)
    state = opt.init(params, key, batch)
    params, state, _ = opt.step(params, state, key, batch=batch, global_step_int=0)
    assert [type(b).__name__ for b in opt._estimator.blocks] == ["DenseTwoKroneckerFactored"]
    np.testing.assert_allclose(params["w"], w_true, atol=2e-4)
    np.testing.assert_allclose(params["b"], b_true, atol=2e-4)
    assert float(loss(params, batch)) < 1e-6


def test_kfac_jax_replicates_over_local_devices():
    """kfac_jax.utils.replicate_all_local_devices (used by kfac-jax's multi-device methods and
    to set up `Optimizer.step` under pmap): one copy per local device, stacked."""
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "k": jax.random.PRNGKey(1)}
    n = jax.local_device_count()
    out = kfac_jax.utils.replicate_all_local_devices(tree)
    assert out["w"].shape == (n, 2, 3) and out["k"].shape == (n, 2)
    for leaf, orig in ((out["w"], tree["w"]), (out["k"], tree["k"])):
        assert {s.device for s in leaf.addressable_shards} == set(jax.local_devices())
        for s in leaf.addressable_shards:
            np.testing.assert_array_equal(np.asarray(s.data)[0], orig)
