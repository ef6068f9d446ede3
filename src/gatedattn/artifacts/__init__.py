"""Artifacts: the file formats and directories every layer reads and writes, in one place.

Run directories and their files (``runs``), checkpoints with manifests, atomic writes and pruning
(``checkpoints``), and ``load_model(name_or_path)`` for every model the tools accept (``loading``).
"""

from ..modeling.model import CONFIG_NAME, WEIGHTS_NAME
from .checkpoints import (MANIFEST_NAME, RUN_CONFIG_NAME, STATE_NAME, TOKENIZER_NAME, CheckpointError,
                          checkpoint_dirs, checkpoint_step, latest_checkpoint, load_trainer_state, open_latest,
                          save_checkpoint, tidy_run, verify_checkpoint)
from .loading import (ALIASES, HFTokenizer, LoadedModel, Tokenizer, is_model_dir, is_ours, load_model,
                      resolve_model_dir, run_file)
from .runs import DATA_INFO, ENVIRONMENT, LOSS_PLOT, METRICS, RESULT, RUN_CONFIG_YAML, read_jsonl

__all__ = ["ALIASES", "CONFIG_NAME", "CheckpointError", "DATA_INFO", "ENVIRONMENT", "HFTokenizer", "LOSS_PLOT",
           "LoadedModel", "MANIFEST_NAME", "METRICS", "RESULT", "RUN_CONFIG_NAME", "RUN_CONFIG_YAML", "STATE_NAME",
           "TOKENIZER_NAME", "Tokenizer", "WEIGHTS_NAME", "checkpoint_dirs", "checkpoint_step", "is_model_dir",
           "is_ours", "latest_checkpoint", "load_model", "load_trainer_state", "open_latest", "read_jsonl",
           "resolve_model_dir", "run_file", "save_checkpoint", "tidy_run",
           "verify_checkpoint"]
