"""Training: the resumable Trainer, AdamW + warmup/cosine schedule, metrics, callbacks.

    from gatedattn import load_config
    from gatedattn.training import prepare_data, train

    cfg = load_config("small", {"train.max_steps": 300})
    bundle = prepare_data(cfg)                     # tokenizer + packed data, shared by several runs
    result = train(cfg, "runs/base", data=bundle)  # -> RunResult with the trained model and its history
"""

from ..data.pipeline import DataBundle, prepare_data
from .callbacks import Callback
from .metrics import plot_loss_curves, read_metrics
from .optim import lr_factor, param_groups
from .state import TrainState
from .trainer import RunResult, Trainer, TrainingError, resolve_config, train

__all__ = ["Callback", "DataBundle", "RunResult", "TrainState", "Trainer", "TrainingError", "lr_factor",
           "param_groups", "plot_loss_curves", "prepare_data", "read_metrics", "resolve_config", "train"]
