"""transformers integration. Importing it registers GatedLM with the Auto classes::

    import gatedattn.hf
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("path/to/our/model")  # then model.generate(...)
"""

from ..errors import MissingExtraError

try:
    from transformers import AutoConfig, AutoModelForCausalLM
except ImportError:
    raise MissingExtraError("gatedattn.hf needs transformers: pip install 'gatedattn[hf]'") from None

from .modeling import CacheView, GatedAttnConfig, GatedAttnForCausalLM

AutoConfig.register(GatedAttnConfig.model_type, GatedAttnConfig, exist_ok=True)
AutoModelForCausalLM.register(GatedAttnConfig, GatedAttnForCausalLM, exist_ok=True)

__all__ = ["CacheView", "GatedAttnConfig", "GatedAttnForCausalLM"]
