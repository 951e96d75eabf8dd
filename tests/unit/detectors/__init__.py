"""Tests for celery_memguard.detectors (synthetic, labelled workloads; no processes)."""
