"""hpcwf: transferable neural wavefunctions from Hartree-Fock orbital descriptors."""

__version__ = "0.1.0"
