"""Evaluation: perplexity on held-out text (long-context and synthetic retrieval tasks live beside it)."""

from .perplexity import EvalResult, evaluate_perplexity

__all__ = ["EvalResult", "evaluate_perplexity"]
