"""Evaluation: the exact probability-flow likelihood, sample-quality metrics, exact token references."""
