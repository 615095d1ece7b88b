"""mpi-kit: Multimodal Policy Internalization (TriMPI) on one consumer GPU, notebook-first.

Modules, one per idea: scenes (CLEVR-style scene graphs and rendering), policy (ClevrPolicy decision trees),
data (the datasets of every stage), widgets (notebook views), report (HTML reports), cli (`mpi-kit`).
"""
__version__ = "0.1.0"

from .progress import install_warning_filters as _install_warning_filters

_install_warning_filters()  # before bitsandbytes/transformers load: drops two warnings that are not errors (progress)
