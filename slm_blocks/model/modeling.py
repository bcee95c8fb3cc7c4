"""The model: a `transformers` PreTrainedModel built from a ModelSpec.

`SLMConfig` carries the spec as plain JSON data, so `save_pretrained` / `from_pretrained` round-trip the
architecture, and `generate()` (sampling, top-k/top-p, repetition penalty, streamers, KV cache) works
because the model speaks the standard causal-LM interface.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

from .assembly import Build
from .blocks import embedding, final_norm, lm_head, module_of, positional
from .blocks.attention import AttentionContext
from .blocks.moe import balance
from .spec import ModelSpec


class SLMConfig(PreTrainedConfig):
    """A transformers config whose `spec` field holds the whole block list; the rest is derived from it."""

    model_type = "slm_blocks"
    spec: dict | None = None
    vocab_size: int = 256
    hidden_size: int = 128
    num_hidden_layers: int = 0  # attention layers, i.e. KV-cache slots
    num_attention_heads: int = 1
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.spec is not None:
            spec = ModelSpec.from_dict(self.spec)
            self.spec = spec.to_dict()
            attn = [layer for layer in spec.layer_plan() if layer[1] is not None]
            self.vocab_size = spec.vocab_size
            self.hidden_size = spec.d_model
            self.num_hidden_layers = len(attn)
            self.num_attention_heads = attn[0][1].n_heads if attn else 1
            self.max_position_embeddings = spec.max_seq_len
            self.tie_word_embeddings = spec.tie_embeddings
        super().__post_init__(**kwargs)

    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.spec)


class SLMModel(nn.Module):
    """Embedding -> positions -> layers -> final norm, each part built by its block's module (blocks/). Names follow
    transformers' Llama: embed_tokens, embed_positions, layers.{i}, norm."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        build = Build(spec, spec.find("positional") or positional.Spec(kind="none"))
        parts, layers = {}, []
        for block in spec.blocks:  # in spec order, so every weight is drawn from the random stream in that order
            module = module_of(block)
            if module.ROLE == "layer":
                layers += module.build(block, spec, build)
            elif module.ROLE != "lm_head":  # the head belongs to SLMForCausalLM
                parts.update(module.build(block, spec, build))
        self.embed_scale = parts.pop("embed_scale", None)
        self.positional = parts.pop("positional", "none")
        self.embed_tokens = parts.pop("embed_tokens")
        if "embed_positions" in parts:
            self.embed_positions = parts.pop("embed_positions")
        self.drop = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.layers = nn.ModuleList(layers)
        self.norm = parts.pop("norm", nn.Identity())
        self.max_seq_len = spec.max_seq_len
        self.rope_keys = build.rope_keys

    def forward(self, input_ids, position_ids, ctx: AttentionContext, inputs_embeds=None) -> torch.Tensor:
        x = embedding.forward(self, input_ids, inputs_embeds)  # (B, T, C)
        x = positional.forward(self, x, position_ids, ctx)
        x = self.drop(x)
        for layer in self.layers:
            x = layer(x, ctx)  # (B, T, C)
        return final_norm.forward(self, x)

    def step(self, decoding):
        """The same computation for one token at batch 1: `step(token, pos)` -> the final vector (C,) of the token
        (a 0-d id) placed at `pos`, its keys and values written into `decoding.cache`. Each part's step is its block
        module's, prepared once per generation from the current weights."""
        embed, position = embedding.step(self, decoding), positional.step(self, decoding)
        layers, norm = [layer.step(decoding) for layer in self.layers], final_norm.step(self, decoding)

        def step(token: torch.Tensor, pos: int) -> torch.Tensor:
            x = position(embed(token), pos)  # (C,)
            for layer in layers:
                x = layer(x, pos)
            return norm(x)
        return step


class SLMPreTrainedModel(PreTrainedModel):
    config_class = SLMConfig
    config: SLMConfig
    base_model_prefix = "model"
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        """Normal(0, init_std) weights and zero biases; residual output projections are scaled down by
        1/sqrt(#residual branches) (GPT-2) so deep models start with a stable residual stream."""
        std, residual_std = self._init_stds()
        if isinstance(module, nn.Linear):
            std = residual_std if getattr(module, "is_residual_proj", False) else std
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm) or type(module).__name__ == "RMSNorm":
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif hasattr(module, "init_mixer"):  # a state-space or convolution mixer's own parameters (blocks/)
            module.init_mixer()

    def _init_stds(self) -> tuple[float, float]:
        if "_stds" not in self.__dict__:
            spec = self.config.model_spec()
            n_branches = sum(module_of(b).BRANCHES for b, *_ in spec.layer_plan())
            self.__dict__["_stds"] = (spec.init_std, spec.init_std / math.sqrt(max(n_branches, 1)))
        return self.__dict__["_stds"]


class SLMForCausalLM(SLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SLMConfig):
        super().__init__(config)
        spec = config.model_spec()
        self.model = SLMModel(spec)
        self.lm_head = lm_head.build(spec.find("lm_head") or lm_head.Spec(), spec, None)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, past + T), 1 = real token, 0 = padding
        position_ids: torch.LongTensor | None = None,  # (B, T)
        cache: DynamicCache | None = None,
        labels: torch.LongTensor | None = None,  # (B, T), shifted inside like every transformers causal LM
        use_cache: bool | None = None,
        logits_to_keep: int = 0,  # >0: only the last N positions get logits (generation)
        past_key_values: DynamicCache | None = None,  # older name of `cache`
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,  # explain mode: every attention layer's probabilities
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not self.training:
            cache = DynamicCache()
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        device = self.model.embed_tokens.weight.device

        key_padding = None
        if attention_mask is not None:
            mask = attention_mask.to(device=device, dtype=torch.bool)
            if mask.shape[1] == T and past:  # mask given for the new tokens only
                mask = torch.cat([mask.new_ones(B, past), mask], dim=1)
            if not bool(mask.all()):
                key_padding = mask  # (B, past + T)
        if self.model.positional == "learned" and past + T > self.config.max_position_embeddings:
            raise ValueError(f"{past + T} tokens are more than max_seq_len {self.config.max_position_embeddings}; "
                             "use a shorter input (learned positions only exist up to max_seq_len)")
        if position_ids is None:
            if key_padding is not None:  # left padding: count real tokens, so positions start at 0 everywhere
                position_ids = (key_padding.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=device)[None]  # (1, T): broadcasts over B

        ctx = AttentionContext(key_padding=key_padding, cache=cache if use_cache else None,
                               attentions=[] if output_attentions else None,
                               router=[] if self.training or labels is not None else None)
        x = self.model(input_ids, position_ids, ctx, inputs_embeds)  # (B, T, C)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = lm_head.forward(self.lm_head, x)  # (B, T, vocab)

        loss = None
        weighted, aux = balance(ctx.router or [])  # mixture-of-experts layers' load-balancing loss (blocks/moe.py)
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device),
                                   ignore_index=-100)
            if weighted is not None:
                loss = loss + weighted
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux, logits=logits, cache=cache if use_cache else None,
                                         attentions=tuple(ctx.attentions) if output_attentions else None,
                                         router_logits=tuple(ctx.router) if ctx.router else None)


AutoConfig.register(SLMConfig.model_type, SLMConfig, exist_ok=True)
AutoModelForCausalLM.register(SLMConfig, SLMForCausalLM, exist_ok=True)


def build_model(spec: ModelSpec | dict | str, **config_kwargs) -> SLMForCausalLM:
    """A freshly initialized model for a spec (a ModelSpec, its dict or its JSON text)."""
    if isinstance(spec, str):
        spec = ModelSpec.from_json(spec)
    elif isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec)
    return SLMForCausalLM(SLMConfig(spec=spec.to_dict(), **config_kwargs))
