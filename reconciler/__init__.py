"""careconcile: keeps the certificate authorities of Kubernetes clusters in a declared state.

The package is split in two: ``reconciler.core`` is pure (models and PKI math, no I/O),
everything else is the shell that talks to processes, files and clusters.
"""

__version__ = "0.1.0"
