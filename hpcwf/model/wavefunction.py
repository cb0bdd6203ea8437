"""The wavefunction: embedding -> orbitals -> determinants -> (sign, log|psi|).

Public functional interface (all for ONE walker; vmap over walkers; hpcwf.types):
    log_psi(params, electrons [n_el, 3], geometry) -> (sign, log|psi|)      SignedLogPsi
    log_abs_psi_fn(model)(params, electrons, geometry) -> log|psi|          LogAbsPsi
    slater_matrices(params, electrons, geometry) -> [n_det, n_el, n_el]     (OrbitalMap)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from hpcwf.model.embedding import ElectronEmbedding, safe_distances
from hpcwf.model.envelopes import nuclear_cusp
from hpcwf.model.geometry import GeometryData
from hpcwf.model.registry import orbital_map_type
from hpcwf.types import LogAbsPsi


@dataclasses.dataclass(frozen=True)
class ModelHyperparameters:
    """Architecture sizes. S is for CPU tests; L is the paper's (~1.9 M parameters)."""

    width_one: int
    width_two: int
    width_nuc: int
    embedding_iterations: int
    gnn_width: int
    gnn_iterations: int
    f_widths: tuple[int, ...]
    g_widths: tuple[int, ...]


MODEL_SIZES: dict[str, ModelHyperparameters] = {
    "S": ModelHyperparameters(64, 16, 16, 3, 16, 1, (64, 64), (32,)),
    "M": ModelHyperparameters(128, 32, 32, 4, 32, 2, (128, 128), (64,)),
    "L": ModelHyperparameters(256, 32, 32, 4, 32, 2, (256, 256), (64, 64)),
}


def signed_logsumexp(signs: jnp.ndarray, logs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """log|sum_d s_d exp(l_d)| and its sign, stable for large |l_d|. Arrays [n_det]."""
    shift = jax.lax.stop_gradient(jnp.max(logs))
    total = jnp.sum(signs * jnp.exp(logs - shift))
    return jnp.sign(total), jnp.log(jnp.abs(total)) + shift


# Initial range a_s (bohr) of the e-e cusp Jastrow. HF pre-training fits only the Slater
# matrices, so J is what separates the pre-trained psi from HF where VMC starts: J pushes every
# pair apart over ~a_s and, with no one-body term to compensate, spreads the whole density.
# With a_s = 1 N2 started VMC +0.66..+0.88 Ha above E_HF (5 runs; mean E_L -V/T = 2.15 against
# HF's 2.04: ~7 % too diffuse), with 0.3 +0.11 Ha (+0.20 with the smooth e-e stream); O
# +0.14..+0.26 against +0.04 (-0.06 with it)
# (benchmarks/pretraining_start.py, issue 18, session 13: results/pretraining_start_cpu.txt).
JASTROW_RANGE_INIT = 0.3


class Wavefunction(nn.Module):
    """psi(r) = J(r) * sum_d det Phi^d(r), Phi from the orbital map named `orbitals` (TAO or
    backflow, hpcwf.model.registry) with the nuclear cusp built into its rows
    (`slater_matrices`, hpcwf.model.envelopes).

    J is a parameter-light electron-electron cusp Jastrow,
    exp(sum_{i<j} -c_s a_s^2 / (a_s + r_ij)) with c = 1/4 (same spin) and 1/2 (opposite spin),
    which satisfies the electron-electron cusp conditions for any range a_s > 0 (exactly:
    the embedding is smooth at r_ij = 0, `hpcwf.model.embedding`) and is
    symmetric, so it changes neither antisymmetry nor the HF-phase equivariance. The ranges
    start at JASTROW_RANGE_INIT bohr (learned from there).
    """

    size: ModelHyperparameters
    orbitals: str  # a name of hpcwf.model.registry.ORBITAL_TYPES
    n_det: int
    # The molecule shape (n_electrons, n_atoms) of non-transferable orbitals (backflow); None
    # for transferable ones (registry.molecule_shape gives it).
    molecule_shape: tuple[int, int] | None = None

    def setup(self):
        s = self.size
        self.embedding = ElectronEmbedding(s.width_one, s.width_two, s.width_nuc, s.embedding_iterations)
        self.orbital_map = orbital_map_type(self.orbitals).create(s, self.n_det, self.molecule_shape)
        self.jastrow_scale = self.param("jastrow_scale", nn.initializers.constant(JASTROW_RANGE_INIT), (2,))

    def slater_matrices(self, electrons: jnp.ndarray, geometry: GeometryData) -> jnp.ndarray:
        """[n_det, n_el, n_el] for electrons [n_el, 3] (up electrons first): the orbital map's
        matrices with each electron's row times its nuclear cusp factor
        (`hpcwf.model.envelopes.nuclear_cusp`), so that HF pre-training fits the orbitals
        with their cusps and psi has the exact cusp -Z at every nucleus."""
        h = self.embedding(electrons, geometry.nuclei, geometry.charges, geometry.n_up)
        phi = self.orbital_map(h, electrons, geometry)
        dist_en = jnp.linalg.norm(electrons[:, None, :] - geometry.nuclei[None], axis=-1)
        return phi * jnp.exp(nuclear_cusp(dist_en, geometry.charges))[None, :, None]

    def jastrow(self, electrons: jnp.ndarray, n_up: int) -> jnp.ndarray:
        n_el = electrons.shape[0]
        dist = safe_distances(electrons[:, None] - electrons[None], pad_diagonal=True)
        spin = jnp.arange(n_el) < n_up
        same = spin[:, None] == spin[None, :]
        a = jnp.where(same, jnp.abs(self.jastrow_scale[0]), jnp.abs(self.jastrow_scale[1]))
        c = jnp.where(same, 0.25, 0.5)
        upper = jnp.triu(jnp.ones((n_el, n_el), dtype=bool), k=1)
        return jnp.sum(jnp.where(upper, -c * a**2 / (a + dist), 0.0))

    def __call__(self, electrons: jnp.ndarray, geometry: GeometryData):
        """(sign, log|psi|) for one walker."""
        phi = self.slater_matrices(electrons, geometry)
        signs, logdets = jnp.linalg.slogdet(phi)
        sign, log_abs = signed_logsumexp(signs, logdets)
        return sign, log_abs + self.jastrow(electrons, geometry.n_up)


def build_wavefunction(
    size: str, orbitals: str, n_det: int, molecule_shape: tuple[int, int] | None = None
) -> Wavefunction:
    """The flax module for a model config (`size` in MODEL_SIZES, `orbitals` in
    hpcwf.model.registry.ORBITAL_TYPES; `molecule_shape` (n_electrons, n_atoms) for orbital
    types that are not transferable)."""
    return Wavefunction(MODEL_SIZES[size], orbitals, n_det, molecule_shape)


def log_abs_psi_fn(model: Wavefunction) -> LogAbsPsi:
    """(params, electrons [n_el, 3], geometry) -> log|psi| (scalar) for one walker."""

    def log_abs_psi(params, electrons, geometry):
        return model.apply(params, electrons, geometry)[1]

    return log_abs_psi


def init_params(model: Wavefunction, key: jax.Array, geometry: GeometryData):
    """Initial parameters; their shapes do not depend on `geometry` for TAO orbitals."""
    electrons = jnp.zeros((geometry.n_electrons, 3), geometry.nuclei.dtype)
    electrons = electrons + jnp.arange(geometry.n_electrons)[:, None] * 0.3
    return model.init(key, electrons, geometry)


def count_parameters(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
