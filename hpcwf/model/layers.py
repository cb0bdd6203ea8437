"""The network's dense layer, written so that K-FAC sees every use of it.

kfac-jax builds its curvature blocks by matching the traced loss against patterns of dense
layers (`kfac_jax` tag_graph_matcher: `x @ W + b` with the walker axis first and at most two
axes repeated in between). A parameter it does not match falls back to a `NaiveDiagonal`
block, whose curvature under `estimation_mode="fisher_exact"` is the square of the
walker-SUMMED score divided by the walker count, (sum_i d log|psi_i|/d theta)^2 / N, instead
of the mean of the per-walker squares: up to N times too large when the mean score is not
zero (the parameter then hardly moves) and pure noise when it is. Two forms in our model
were missed, measured on model S (42 of 60 parameter arrays were NaiveDiagonal):

* flax's `nn.Dense` adds its bias as `y + b.reshape((1,) * (y.ndim - 1) + b.shape)`; under
  `jax.vmap` over walkers that reshape no longer has the rank the pattern expects, so every
  bias was unmatched;
* a layer applied twice with the same weights (the odd functions G(c) - G(-c) of the
  context GNN and of f) matches no pattern at all, kernel included.

`Dense` below flattens all leading axes into one repeat axis and adds its bias by plain
broadcasting, which matches kfac-jax's `repeated[1]_dense_with_bias`; callers evaluate an odd
function once on the stacked inputs [c, -c] instead of twice (hpcwf.model.orbitals). `Embed`
looks its table up by a one-hot product, a dense layer to kfac-jax, where flax's gather is not.
Parameter names, shapes and initialisers are those of `flax.linen.Dense` and `flax.linen.Embed`,
so replacing flax's layers by these changed neither the parameter layout nor the initial
values (the embedding's later electron-nucleus stream did change the layout). Only the
electron-electron Jastrow's two scales (and backflow's per-orbital envelope arrays) stay in
diagonal blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn


class Dense(nn.Module):
    """y = x W + b for x [..., d_in] -> [..., features]; any number of leading axes.

    Attributes:
        features: output width.
        use_bias: add b (zeros at initialisation).
        kernel_init: initialiser of W [d_in, features] (LeCun normal, as flax's Dense).
    """

    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    param_dtype: jnp.dtype = jnp.float32  # as flax's: float32 parameters also under x64

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        leading = x.shape[:-1]
        y = jnp.dot(x.reshape(math.prod(leading), x.shape[-1]), kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return y.reshape(*leading, self.features)


class Embed(nn.Module):
    """A learned vector per integer label (as `flax.linen.Embed`: parameter `embedding`
    [num_embeddings, features], same initialiser), looked up as one-hot(label) @ table so
    that K-FAC sees a dense layer rather than a gather, which it would give a NaiveDiagonal
    block. Labels [...] (int) -> [..., features]; labels outside [0, num_embeddings) give a
    zero vector (flax's gather gave NaN): callers clip them."""

    num_embeddings: int
    features: int
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, labels: jnp.ndarray) -> jnp.ndarray:
        shape = (self.num_embeddings, self.features)
        table = self.param("embedding", nn.linear.default_embed_init, shape, self.param_dtype)
        one_hot = jax.nn.one_hot(labels, self.num_embeddings, dtype=table.dtype)
        leading = one_hot.shape[:-1]
        y = jnp.dot(one_hot.reshape(math.prod(leading), self.num_embeddings), table)
        return y.reshape(*leading, self.features)
