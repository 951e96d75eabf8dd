"""Celery glue: the only subpackage that imports Celery (bootstep and child-side receivers)."""

from .bootstep import MemGuard

__all__ = ["MemGuard"]
