"""vizoo: a vision backbone and probing model zoo.

``import vizoo`` registers every vizoo backbone with timm, so ``timm.create_model("nat_tiny")`` works
afterwards. See README.md and docs/ for the tour.
"""
import fnmatch

from vizoo import backbones as _backbones  # noqa: F401  (registers the models with timm)

__version__ = "0.1.0"


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the timm models that vizoo registered (and only those), filtered by a glob pattern."""
    import timm.models

    names = [
        name
        for name in timm.list_models()
        if timm.models.model_entrypoint(name).__module__.startswith("vizoo.")
    ]
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


__all__ = ["list_models", "__version__"]
