"""SLM Blocks: build a small language model from a list of blocks, train it, export it to transformers.

The engine is importable without Gradio. transformers loads on first use of `build_model`; torch loads with the
spec, because each block type's module holds its spec and its torch modules side by side (model/blocks/).
"""

from .quiet import defer_torchao

defer_torchao()  # torchao loads only when something is quantized (quiet.py)

from .model.estimate import Estimate, estimate  # noqa: E402 (after defer_torchao)
from .model.presets import list_presets, load_preset  # noqa: E402
from .model.fields import Problem  # noqa: E402
from .model.spec import BLOCK_TYPES, ModelSpec, block_help  # noqa: E402
from .model.validate import SpecError  # noqa: E402

__all__ = [
    "BLOCK_TYPES", "Estimate", "ModelSpec", "Problem", "SpecError", "block_help", "build_model", "estimate",
    "list_presets", "load_preset",
]


def build_model(spec, **config_kwargs):
    """A freshly initialized transformers model (SLMForCausalLM) for a ModelSpec, dict or JSON text."""
    from .model.modeling import build_model as _build

    return _build(spec, **config_kwargs)
