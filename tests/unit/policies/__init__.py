"""Unit tests for the policies beyond the per-child limits, driven by synthetic series."""
