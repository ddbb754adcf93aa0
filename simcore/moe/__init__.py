"""Mixture-of-experts runtime state: per-layer expert caches and their replacement policies."""

from simcore.moe.cache import POLICIES, ExpertCache, LayerCaches, replay

__all__ = ["POLICIES", "ExpertCache", "LayerCaches", "replay"]
