"""Orbital maps: from HF orbital descriptors (TAO) or fixed per-orbital weights (backflow).

Both implement hpcwf.types.OrbitalMap, `(h [n_el, d_emb], electrons [n_el, 3], geometry) ->
Slater matrices Phi [n_det, n_el, n_el]`: rows are electrons (up first), columns orbitals (up
orbitals first). Full determinants: up electrons also fill down-orbital columns ("other spin"
block) and vice versa. Each is built by its classmethod `create` and registered by name in
hpcwf.model.registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import linen as nn

from hpcwf.model.embedding import safe_distances
from hpcwf.model.envelopes import cusp_free_distance, envelope_exponent_prior
from hpcwf.model.geometry import GeometryData
from hpcwf.model.layers import Dense

if TYPE_CHECKING:
    from hpcwf.model.wavefunction import ModelHyperparameters


class MLP(nn.Module):
    """Dense layers with tanh between them (and after the last when `activate_last`)."""

    widths: Sequence[int]
    activate_last: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for i, w in enumerate(self.widths):
            x = Dense(w, name=f"dense_{i}")(x)
            if self.activate_last or i < len(self.widths) - 1:
                x = nn.tanh(x)
        return x


class ContextGNN(nn.Module):
    """Message passing over the atoms of each orbital's descriptor; odd in the descriptor.

    The graph is fully connected over atoms; orbitals are independent graphs sharing weights.
    Oddness, GNN(-c) = -GNN(c), is built in by antisymmetrizing: out = G(c) - G(-c).
    """

    width: int
    n_iterations: int
    n_radial: int = 16
    cutoff: float = 5.0

    def setup(self):
        self.edge_mlp = MLP((self.width, self.width), activate_last=False)
        self.input_layer = Dense(self.width)
        self.message_layers = [Dense(self.width) for _ in range(self.n_iterations)]
        self.self_layers = [Dense(self.width) for _ in range(self.n_iterations)]
        self.update_layers = [Dense(self.width) for _ in range(self.n_iterations)]

    def edge_gates(self, nuclei: jnp.ndarray) -> jnp.ndarray:
        """Edge weights [n_atoms, n_atoms, width] from radial basis x [1, dx, dy, dz]."""
        diff = nuclei[None, :, :] - nuclei[:, None, :]
        dist = safe_distances(diff, pad_diagonal=True)
        centers = jnp.linspace(0.0, self.cutoff, self.n_radial)
        sigma = self.cutoff / self.n_radial
        rbf = jnp.exp(-((dist[..., None] - centers) ** 2) / (2 * sigma**2))
        direction = jnp.concatenate([jnp.ones_like(dist)[..., None], diff / dist[..., None]], -1)
        edges = (rbf[..., :, None] * direction[..., None, :]).reshape(*dist.shape, -1)
        not_self = 1.0 - jnp.eye(dist.shape[0], dtype=dist.dtype)
        return self.edge_mlp(edges) * not_self[..., None]

    def __call__(self, descriptors: jnp.ndarray, nuclei: jnp.ndarray) -> jnp.ndarray:
        """descriptors [n_atoms, n_orb, d_desc] -> context features [n_atoms, n_orb, width]."""
        gates = self.edge_gates(nuclei)
        # G(c) and G(-c) in one pass over the stack [c, -c] (axis s): each layer is applied
        # once, so K-FAC gives it a Kronecker-factored block (hpcwf.model.layers).
        x = self.input_layer(jnp.stack([descriptors, -descriptors]))
        for msg, slf, upd in zip(self.message_layers, self.self_layers, self.update_layers, strict=False):
            m = jnp.einsum("ijw,sjkw->sikw", gates, msg(x))
            x = x + upd(nn.tanh(slf(x) + m))
        return x[0] - x[1]


class DescriptorMaps(nn.Module):
    """Context GNN, odd f (backflow weights) and even positive g (envelope exponents).

    Outputs for orbitals of one spin:
        f: [n_atoms, n_orb, 2, n_det, d_emb]   (axis 2: same spin / other spin electrons)
        alpha: [n_atoms, n_orb, 2, n_det]  > 0, bohr^-1

    alpha = alpha0 * softplus(1 + g(x * x)) / softplus(1): the Slater-rule prior alpha0 of the
    orbital on the atom (`hpcwf.model.envelopes.envelope_exponent_prior`) times a learned
    correction of the context features x. x * x makes g even in the descriptor, as an exponent
    must be, while every weight of g (and, through x, of the GNN) has a gradient from the
    first step; the sum g(x) + g(-x) with zero biases had none for g's first layer (its
    derivative, an odd function, cancels). g's last layer starts small, so the exponents start
    within a few percent of the prior.
    """

    gnn_width: int
    gnn_iterations: int
    f_widths: Sequence[int]
    g_widths: Sequence[int]
    n_det: int
    d_emb: int

    @nn.compact
    def __call__(
        self,
        descriptors: jnp.ndarray,
        nuclei: jnp.ndarray,
        charges: jnp.ndarray,
        descriptor_exponents: jnp.ndarray,
    ):
        n_atoms, n_orb = descriptors.shape[:2]
        x = ContextGNN(self.gnn_width, self.gnn_iterations, name="gnn")(descriptors, nuclei)
        f_mlp = MLP(self.f_widths, name="f_mlp")
        f_stacked = f_mlp(jnp.stack([x, -x]))  # one pass, as in ContextGNN
        f_hidden = f_stacked[0] - f_stacked[1]  # odd in x, hence odd in the descriptor
        f = Dense(2 * self.n_det * self.d_emb, use_bias=False, name="f_out")(f_hidden)
        g_hidden = MLP(self.g_widths, name="g_mlp")(x * x)
        g_out = Dense(
            2 * self.n_det,
            kernel_init=nn.initializers.variance_scaling(1e-2, "fan_in", "normal"),
            name="g_out",
        )(g_hidden)
        prior = envelope_exponent_prior(descriptors, charges, descriptor_exponents)
        correction = jax.nn.softplus(1.0 + g_out) / jax.nn.softplus(1.0)
        alpha = prior[:, :, None] * correction
        return (
            f.reshape(n_atoms, n_orb, 2, self.n_det, self.d_emb),
            alpha.reshape(n_atoms, n_orb, 2, self.n_det),
        )


def tao_block(
    h: jnp.ndarray, dist_en: jnp.ndarray, f: jnp.ndarray, alpha: jnp.ndarray, same: bool
) -> jnp.ndarray:
    """Phi^d_ik = sum_I exp(-alpha^d_Iks u_I(r_i)) <h_i, f^d_Iks> for one (electron spin,
    orbital spin) block.

    Args:
        h: electron embeddings [n_el_block, d_emb].
        dist_en: cusp-free electron-nucleus distances u_I(r) [n_el_block, n_atoms], bohr
            (`hpcwf.model.envelopes.cusp_free_distance`: the cusp is the cusp factor's).
        f: [n_atoms, n_orb, 2, n_det, d_emb]; alpha: [n_atoms, n_orb, 2, n_det].
        same: electrons and orbitals have the same spin (selects index 0 of axis 2).
    Returns:
        [n_det, n_el_block, n_orb]
    """
    s = 0 if same else 1
    f_s, alpha_s = f[:, :, s], alpha[:, :, s]  # [A, K, D, W], [A, K, D]
    envelope = jnp.exp(-alpha_s[None] * dist_en[:, :, None, None])  # [i, A, K, D]
    projection = jnp.einsum("iw,akdw->iakd", h, f_s)
    return jnp.einsum("iakd->dik", envelope * projection)


class TAOOrbitals(nn.Module):
    """Transferable atomic orbitals: one network orbital per occupied HF orbital.

    `maps_up` / `maps_dn`: separate descriptor maps (same architecture, own weights) for the
    up and down orbitals.
    """

    maps_up: DescriptorMaps
    maps_dn: DescriptorMaps

    @classmethod
    def create(
        cls, size: ModelHyperparameters, n_det: int, molecule_shape: tuple[int, int] | None = None
    ) -> TAOOrbitals:
        """TAO orbitals of architecture `size` (any molecule: `molecule_shape` is not used)."""
        maps = dict(
            gnn_width=size.gnn_width,
            gnn_iterations=size.gnn_iterations,
            f_widths=size.f_widths,
            g_widths=size.g_widths,
            n_det=n_det,
            d_emb=size.width_one,
        )
        return cls(DescriptorMaps(**maps), DescriptorMaps(**maps))

    @nn.compact
    def __call__(self, h: jnp.ndarray, electrons: jnp.ndarray, geometry: GeometryData) -> jnp.ndarray:
        """Slater matrices [n_det, n_el, n_el] from embeddings h [n_el, d_emb]."""
        nuclei, n_up, charges = geometry.nuclei, geometry.n_up, geometry.charges
        exponents = geometry.descriptor_exponents
        f_up, alpha_up = self.maps_up(geometry.descriptors_up, nuclei, charges, exponents)
        f_dn, alpha_dn = self.maps_dn(geometry.descriptors_dn, nuclei, charges, exponents)
        dist_en = jnp.linalg.norm(electrons[:, None, :] - nuclei[None], axis=-1)
        dist_en = cusp_free_distance(dist_en, charges)
        h_up, h_dn = h[:n_up], h[n_up:]
        d_up, d_dn = dist_en[:n_up], dist_en[n_up:]
        upper = jnp.concatenate(
            [
                tao_block(h_up, d_up, f_up, alpha_up, True),
                tao_block(h_up, d_up, f_dn, alpha_dn, False),
            ],
            axis=-1,
        )
        lower = jnp.concatenate(
            [
                tao_block(h_dn, d_dn, f_up, alpha_up, False),
                tao_block(h_dn, d_dn, f_dn, alpha_dn, True),
            ],
            axis=-1,
        )
        return jnp.concatenate([upper, lower], axis=1)


class BackflowOrbitals(nn.Module):
    """FermiNet-style baseline: per-orbital linear weights x per-orbital, per-atom envelopes.

    Parameter shapes depend on n_el and n_atoms, so one model serves one molecule (shape) only.
    """

    n_det: int
    n_electrons: int
    n_atoms: int

    @classmethod
    def create(
        cls, size: ModelHyperparameters, n_det: int, molecule_shape: tuple[int, int] | None = None
    ) -> BackflowOrbitals:
        """Backflow orbitals for molecules of `molecule_shape` = (n_electrons, n_atoms); their
        width follows the embedding of `size`. ValueError without a shape."""
        if molecule_shape is None:
            raise ValueError("backflow orbitals need the molecule shape (n_electrons, n_atoms)")
        return cls(n_det, *molecule_shape)

    @nn.compact
    def __call__(self, h: jnp.ndarray, electrons: jnp.ndarray, geometry: GeometryData) -> jnp.ndarray:
        """Slater matrices [n_det, n_el, n_el] from embeddings h [n_el, d_emb]."""
        nuclei, n_up = geometry.nuclei, geometry.n_up
        n_el, n_det = self.n_electrons, self.n_det
        dist_en = jnp.linalg.norm(electrons[:, None, :] - nuclei[None], axis=-1)  # [i, A]
        dist_en = cusp_free_distance(dist_en, geometry.charges)  # the cusp is the cusp factor's
        sigma = self.param("sigma", nn.initializers.ones, (2, n_det, self.n_atoms, n_el))
        pi = self.param("pi", nn.initializers.ones, (2, n_det, self.n_atoms, n_el))
        rows = []
        for s, (hs, ds) in enumerate(((h[:n_up], dist_en[:n_up]), (h[n_up:], dist_en[n_up:]))):
            linear = Dense(n_det * n_el, name=f"orbitals_{'up' if s == 0 else 'dn'}")(hs)
            linear = linear.reshape(-1, n_det, n_el).transpose(1, 0, 2)  # [D, i, k]
            decay = jnp.exp(-jnp.abs(sigma[s])[:, None] * ds[None, :, :, None])  # [D, i, A, k]
            env = jnp.einsum("dak,diak->dik", pi[s], decay)
            rows.append(linear * env)
        return jnp.concatenate(rows, axis=1)
