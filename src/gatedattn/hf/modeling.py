"""GatedLM behind transformers' Auto classes: ``GatedAttnConfig`` (model_type ``gatedattn``) and
``GatedAttnForCausalLM`` (``PreTrainedModel`` + ``GenerationMixin``), so HF ``generate`` (greedy, sampling,
beam search, ...) and ``AutoModelForCausalLM.from_pretrained`` work on our model directories.

The config holds our ``ModelConfig`` keys as written by ``GatedLM.save_pretrained`` (HF adds its bookkeeping
keys beside them); the wrapper holds the GatedLM as ``model``, so HF saves our parameter names under
``model.`` and ``GatedLM.from_pretrained`` reads either form. The KV cache is a transformers ``Cache``
(``DynamicCache`` by default, reordered by beam search), seen by GatedLM through ``CacheView``.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..config import ModelConfig, compact_layer_types, model_config_from_dict
from ..errors import GatedAttnError
from ..modeling.model import MODEL_CONFIG_KEYS, GatedLM


class GatedAttnConfig(PreTrainedConfig):
    """Our ``ModelConfig`` as an HF config: its keys are attributes (``model_config()`` rebuilds it)."""

    model_type = "gatedattn"
    # HF's standard names, read by its caches and utilities, point at ours.
    attribute_map = {"num_hidden_layers": "num_layers", "hidden_size": "d_model"}

    def __post_init__(self, **kwargs):
        given = {key: kwargs.pop(key) for key in MODEL_CONFIG_KEYS if key in kwargs}
        cfg = model_config_from_dict(given)  # validated, defaults filled in
        kwargs.update(dataclasses.asdict(cfg))
        kwargs["layer_types"] = cfg.resolved_layer_types  # HF reads layer_types as a list (a rule would be split)
        kwargs["tie_word_embeddings"] = cfg.tie_embeddings  # HF ties (or not) as we do
        super().__post_init__(**kwargs)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig) -> "GatedAttnConfig":
        return cls(**dataclasses.asdict(cfg))

    def model_config(self) -> ModelConfig:
        data = {key: getattr(self, key) for key in MODEL_CONFIG_KEYS}
        data["layer_types"] = compact_layer_types(data["layer_types"])
        return model_config_from_dict(data)


class CacheView:
    """Our KV-cache interface (``length``, ``update(layer, k, v)`` on (B, T, K, D), ``rope_seq_len``) over a
    transformers ``Cache`` (which stores (B, K, T, D)). A DSA layer's indexer keys live in the same cache as
    the keys of an extra layer ``num_layers + layer`` (with empty values), so beam search reorders them too."""

    position = None  # never static: transformers' own static cache is not adapted (KVCache.start_static)

    def __init__(self, cache: Cache, num_layers: int):
        self.cache, self.num_layers = cache, num_layers

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    @property
    def rope_seq_len(self) -> int | None:  # dynamic NTK's length, fixed once per cached sequence
        return getattr(self.cache, "gatedattn_rope_seq_len", None)

    @rope_seq_len.setter
    def rope_seq_len(self, value: int) -> None:
        self.cache.gatedattn_rope_seq_len = value

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.cache.update(k.transpose(1, 2), v.transpose(1, 2), layer)
        return k.transpose(1, 2), v.transpose(1, 2)

    def update_index_keys(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        """Append indexer keys (B, T, E); return the whole history."""
        while len(self.cache.layers) <= self.num_layers + layer:  # a cache built from the config has L layers
            self.cache.layers.append(DynamicLayer())
        keys, _ = self.cache.update(k[:, None], k.new_empty(*k.shape[:2], 0)[:, None], self.num_layers + layer)
        return keys[:, 0]


class GatedAttnForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = GatedAttnConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _no_split_modules = ["Block"]

    def __init__(self, config: GatedAttnConfig):
        super().__init__(config)
        self.model = GatedLM(config.model_config())
        # An instance attribute: tied only when the config ties them.
        self._tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"} if config.tie_embeddings else {}
        self.post_init()

    @classmethod
    def from_gatedlm(cls, model: GatedLM) -> "GatedAttnForCausalLM":
        """The HF wrapper around an existing GatedLM (its parameters shared, not copied)."""
        with torch.device("meta"):  # no second set of weights: the wrapper's own model is replaced at once
            wrapper = cls(GatedAttnConfig.from_model_config(model.config))
        wrapper.model = model
        return wrapper.to(next(model.parameters()).dtype).eval()

    def _init_weights(self, module):
        """GatedLM's own initialisation (HF's generic rules would, e.g., set zero-centred norm weights to 1)."""
        if isinstance(module, GatedLM):
            module.reset_parameters()

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                inputs_embeds: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs) -> CausalLMOutputWithPast:
        """As HF causal LMs; ``position_ids`` are ours (the cache length onwards), so padded rows (zeros in
        ``attention_mask``) and ``inputs_embeds`` are refused with one line."""
        if inputs_embeds is not None or input_ids is None:
            raise GatedAttnError("GatedAttnForCausalLM takes input_ids (inputs_embeds is not supported)")
        if attention_mask is not None and not bool(torch.as_tensor(attention_mask).bool().all()):
            raise GatedAttnError("GatedAttnForCausalLM does not take padding (zeros in attention_mask); give rows "
                                 "of one length, or use GatedLM.generate, which decodes padded rows one by one")
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        out = self.model(input_ids, labels=labels, past_key_values=CacheView(cache, len(self.model.layers))
                         if cache is not None else None)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits, cache=cache)


__all__ = ["CacheView", "GatedAttnConfig", "GatedAttnForCausalLM"]
