"""gatedattn: gated attention for language models (Qiu et al., NeurIPS 2025) — build, train, diagnose."""

from .artifacts import LoadedModel, load_model
from .config import Config, ModelConfig, load_config
from .errors import ConfigError, GatedAttnError
from .modeling import GatedLM, GatedLMOutput, KVCache

__version__ = "0.1.0"

__all__ = ["Config", "ModelConfig", "load_config", "GatedLM", "GatedLMOutput", "KVCache", "LoadedModel",
           "load_model", "ConfigError", "GatedAttnError", "__version__"]
