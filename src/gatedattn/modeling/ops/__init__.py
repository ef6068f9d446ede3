"""Fast paths of the model's plain math, each equal to a reference spelled out in ``tests/test_ops.py``.

The model calls them by name, so the blocks read as the formulas they compute; how and why each one is
faster is in docs/performance.md.
"""

from .fused_projection import project_qkv_gate
from .linear_cross_entropy import linear_cross_entropy

__all__ = ["linear_cross_entropy", "project_qkv_gate"]
