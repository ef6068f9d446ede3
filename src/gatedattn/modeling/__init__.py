from .cache import KVCache
from .gate import Gate
from .model import GatedLM, GatedLMOutput

__all__ = ["GatedLM", "GatedLMOutput", "Gate", "KVCache"]
