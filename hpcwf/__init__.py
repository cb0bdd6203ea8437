"""hpcwf: transferable neural wavefunctions from Hartree-Fock orbital descriptors."""

from hpcwf import process_defaults

# Before numpy or a JAX backend starts: they read these settings once (hpcwf/process_defaults.py).
process_defaults.apply()

__version__ = "0.1.0"
