"""Experiments over attention variants: the variant registry and budgets, ``compare`` (train, evaluate,
probe, report), its typed results and its report."""

from .compare import Comparison, CompareSettings, run_compare
from .results import ComparisonResult, Probes, RecordedSettings, TrainSummary, VariantResult
from .variants import BUDGETS, VARIANTS, parse_variants, variant_config

__all__ = ["Comparison", "CompareSettings", "run_compare", "ComparisonResult", "VariantResult", "TrainSummary", "Probes",
           "RecordedSettings", "VARIANTS", "BUDGETS", "parse_variants", "variant_config"]
