"""hirl_like: registry-based, YAML-configured visual representation learning.

Importing the package imports every component module, so that all registries are filled.
"""

from hirl_like import data, losses, models, pipelines  # noqa: F401

__version__ = "0.1.0"
