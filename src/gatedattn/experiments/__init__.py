"""Experiments over attention variants: the variant registry and budgets, ``compare`` (train, evaluate,
probe, report), ``sweep`` (a grid over seeds with statistics), their typed results and reports."""

from .compare import Comparison, CompareSettings, run_compare
from .results import ComparisonResult, Probes, RecordedSettings, TrainSummary, VariantResult
from .spec import SPECS, SweepSpec, load_spec
from .sweep import SweepSettings, run_sweep
from .variants import BUDGETS, VARIANTS, parse_variants, variant_config

__all__ = ["Comparison", "CompareSettings", "run_compare", "ComparisonResult", "VariantResult", "TrainSummary", "Probes",
           "RecordedSettings", "VARIANTS", "BUDGETS", "parse_variants", "variant_config", "SPECS", "SweepSpec",
           "load_spec", "SweepSettings", "run_sweep"]
