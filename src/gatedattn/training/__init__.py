"""Training: the resumable loop, AdamW + warmup/cosine schedule, atomic checkpoints, metrics.

    from gatedattn import load_config
    from gatedattn.training import prepare_data, train

    cfg = load_config("small", {"train.max_steps": 300})
    bundle = prepare_data(cfg)                     # tokenizer + packed data, shared by several runs
    result = train(cfg, "runs/base", data=bundle)  # -> RunResult; GatedLM.from_pretrained("runs/base")
"""

from ..data.pipeline import DataBundle, prepare_data
from .checkpoint import latest_checkpoint
from .metrics import plot_loss_curves, read_metrics
from .optim import lr_factor, param_groups
from .pretrained import Pretrained, generate_text, load_pretrained
from .trainer import RunResult, TrainingError, resolve_config, train

__all__ = ["DataBundle", "Pretrained", "RunResult", "TrainingError", "generate_text", "latest_checkpoint",
           "load_pretrained", "lr_factor", "param_groups", "plot_loss_curves", "prepare_data", "read_metrics",
           "resolve_config", "train"]
