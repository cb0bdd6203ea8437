"""Named Gaussian basis sets, checked before anything runs: what pyscf would reject at HF time.

Jax-free on purpose: `hpcwf check` and the job-file validation (`hpcwf.io.config`) use it, and
both must run on a login node. pyscf itself does not import jax.

Counts are of Cartesian functions (hpcwf builds every pyscf molecule with `cart=True`): a shell
of angular momentum l holds (l + 1)(l + 2) / 2 functions per contraction, so STO-6G has 1
function on H and He and 5 (1s, 2s, 2p_x, 2p_y, 2p_z) on Li-Ne.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import warnings
from collections.abc import Sequence

from hpcwf.systems.molecule import ELEMENTS

# Highest angular momentum `hpcwf.systems.gaussian_basis` evaluates (g functions); that module
# takes its limit from here so the check and the evaluation cannot disagree.
MAX_ANGULAR_MOMENTUM = 4
_SHELL_LETTERS = "spdfghiklm"


class BasisSetError(ValueError):
    """A basis set pyscf cannot build for an element; str() says why (no file or key)."""


@dataclasses.dataclass(frozen=True)
class ElementBasis:
    """One element's functions in a named basis.

    Attributes:
        n_functions: number of Cartesian basis functions (atomic orbitals) on one atom.
        max_angular_momentum: the highest l among its shells.
    """

    n_functions: int
    max_angular_momentum: int


def shell_letter(l: int) -> str:
    """Spectroscopic letter of angular momentum l (0 -> "s", 5 -> "h")."""
    return _SHELL_LETTERS[l] if l < len(_SHELL_LETTERS) else f"l={l}"


def element_mole(element: str, basis: str):
    """pyscf Mole of one free atom of `element` at the origin in `basis`: Cartesian functions
    (cart=True, as hpcwf evaluates them), bohr, lowest spin of its parity. Raises whatever
    pyscf raises for an unknown basis or element."""
    from pyscf import gto

    return gto.M(
        atom=[[element, (0.0, 0.0, 0.0)]],
        basis=basis,
        cart=True,
        unit="Bohr",
        spin=ELEMENTS[element] % 2,
        verbose=0,
    )


@functools.lru_cache(maxsize=256)
def element_basis(basis: str, element: str) -> ElementBasis:
    """Cartesian function count and highest l of `element` in the pyscf basis `basis`.

    Built exactly as the HF calculation builds its molecules (one atom, `cart=True`), so the
    count is the one pyscf will use. pyscf's warnings and prints are swallowed: the caller
    reports problems as one line. Raises BasisSetError when pyscf cannot build the basis
    (unknown name, element missing from the set, malformed name) or it has no functions.
    """
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            mol = element_mole(element, basis)
    except Exception as err:  # pyscf raises many kinds (BasisNotFoundError, KeyError, AssertionError)
        text = " ".join(str(err).split()) or type(err).__name__
        raise BasisSetError(f"pyscf cannot build it for {element}: {text}") from None
    if mol.nao == 0:
        raise BasisSetError(f"it has no functions for {element}")
    return ElementBasis(
        n_functions=int(mol.nao),
        max_angular_momentum=max(int(mol.bas_angular(i)) for i in range(mol.nbas)),
    )


def missing_elements(basis: str, elements: Sequence[str]) -> dict[str, str]:
    """{element: reason} for each of `elements` that `basis` cannot provide."""
    missing = {}
    for el in elements:
        try:
            element_basis(basis, el)
        except BasisSetError as err:
            missing[el] = str(err)
    return missing


def is_known_basis(basis: str) -> bool:
    """True if pyscf knows `basis` for at least one element H-Ne (a name it does not know at
    all is a typo; one it knows for some elements only is a basis lacking elements)."""
    return len(missing_elements(basis, tuple(ELEMENTS))) < len(ELEMENTS)


def molecule_function_count(basis: str, symbols: Sequence[str]) -> int:
    """Cartesian basis functions of a molecule with atoms `symbols` (each atom gets its element's
    functions: hpcwf never mixes basis sets). Raises BasisSetError like `element_basis`."""
    return sum(element_basis(basis, s).n_functions for s in symbols)
