"""Evaluation: zero-shot classification, retrieval, probes, robustness, reports."""
