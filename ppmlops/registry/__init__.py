"""Model registry: versioned models with model cards, and aliases that deploys move."""

from ppmlops.registry.store import Registry, RegistryError

__all__ = ["Registry", "RegistryError"]
