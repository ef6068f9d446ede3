"""Evaluation: perplexity on held-out text (long-context and synthetic retrieval tasks live beside it)."""

from .bigram_backcopy import LabLoss, lab_loss
from .perplexity import EvalResult, evaluate_perplexity

__all__ = ["EvalResult", "LabLoss", "evaluate_perplexity", "lab_loss"]
