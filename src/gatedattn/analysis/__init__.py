"""Probes for the paper's three measurements on any model: attention sinks (first-token share, entropy),
massive activations in the residual stream, and gate-score sparsity; plus reports and plots.

``analyze_model(model, input_ids)`` works on our GatedLM (through its hook points) and on HF causal LMs
(through hooks on their attention modules); ``load_analysis_target(name_or_path)`` loads what the CLI
accepts. The keys of the returned dict are documented in docs/analysis.md.
"""

from .analyze import SINK_EPS, analyze_model
from .attention import attention_head_stats, attention_map
from .probes import SinkProbe, plot_probe_curves, sink_probe
from .report import summary_markdown, write_report
from .targets import AnalysisTarget, encode_text, load_analysis_target, prepare_ids

__all__ = ["analyze_model", "attention_head_stats", "attention_map", "load_analysis_target", "AnalysisTarget",
           "encode_text", "prepare_ids", "summary_markdown", "write_report", "SINK_EPS", "SinkProbe",
           "plot_probe_curves", "sink_probe"]
