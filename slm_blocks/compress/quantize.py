"""Post-training weight quantization: the same trained model with its Linear weights stored as int8 or int4.

Weight-only, as torchao (PyTorch's own quantization library) does it on a CPU: every nn.Linear except the
LM head keeps one scale per output row (int8, "per channel") or one per group of `group_size` input
weights (int4, and int8 when a group size is given); activations stay in floating point. Embeddings and
the (tied) LM head stay fp32, as in transformers' own torchao integration, because they are shared and
small next to the layers in most models. The choice of kernels, measured on this project's CPU with
torch 2.13 and torchao 0.18 (see README, "Quantize & deploy"):

- int8: `Int8WeightOnlyConfig(PerRow())` -> `Int8Tensor`, the fastest torchao int8 path on a CPU.
- int4: `IntxWeightOnlyConfig(int4, PerGroup(g))` -> `IntxUnpackedToInt8Tensor`, the only int4 format in
  torchao 0.18 that runs on a CPU (the packed `Int4WeightOnlyConfig` formats need CUDA kernels). It holds
  4-bit values one per byte: the quality is int4's, the file is int8-sized. GGUF is the format for small
  files on a CPU.

Both are serializable into safetensors, so transformers' TorchAoConfig loads the export (quant_export.py).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

WEIGHTS = ("fp32", "bf16", "int8", "int4")
DEFAULT_GROUP = {"int8": None, "int4": 32}  # None = one scale per output row
GROUP_SIZES = (16, 32, 64, 128, 256)


def import_torchao():
    """Import torchao on first use, quietly (see slm_blocks/quiet.py: nothing else imports it)."""
    from ..quiet import load_torchao

    load_torchao()


class QuantizeError(ValueError):
    """A model or setting that cannot be quantized as asked; the message names the layer and the fix."""


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linear layers that get quantized: all but the LM head (tied to the embedding, kept in fp32)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]


def resolve_group_size(weights: str, group_size: int | None) -> int | None:
    """The group size to use: the default for `weights` when None is given; checked against GROUP_SIZES."""
    if weights not in ("int8", "int4"):
        return None
    if group_size is None or group_size == 0:
        return DEFAULT_GROUP[weights]
    if group_size not in GROUP_SIZES:
        raise QuantizeError(f"group size {group_size} is not supported; use one of "
                            f"{', '.join(map(str, GROUP_SIZES))}" + (" or none (per row)" if weights == "int8" else ""))
    return group_size


def check_quantizable(model: nn.Module, weights: str, group_size: int | None) -> None:
    """Raise QuantizeError naming every layer whose input size the group size does not divide, with a
    group size that would work. (torchao itself would silently leave such a layer in fp32.)"""
    if weights not in WEIGHTS:
        raise QuantizeError(f"weights {weights!r} is unknown; choose one of {', '.join(WEIGHTS)}")
    layers = quantizable_layers(model)
    if weights in ("int8", "int4") and not layers:
        raise QuantizeError("this model has no Linear layers besides the LM head, so there is nothing to quantize")
    if group_size is None:
        return
    bad = [(n, m.in_features) for n, m in layers if m.in_features % group_size]
    if bad:
        sizes = sorted({f for _, f in bad})
        fits = [g for g in GROUP_SIZES if all(m.in_features % g == 0 for _, m in layers)]
        fix = (f"use group size {max(fits)}" if fits else
               f"make these widths multiples of {group_size} (e.g. the MLP hidden size)") + \
              (" or no group size (int8 per row)" if weights == "int8" else "")
        names = ", ".join(n for n, _ in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise QuantizeError(f"{weights} with group size {group_size}: input width {', '.join(map(str, sizes))} of "
                            f"{names} is not divisible by {group_size}; {fix}")


def torchao_config(weights: str, group_size: int | None):
    """The torchao config for int8 / int4 weight-only quantization (see the module doc for the choice)."""
    import_torchao()
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, MappingType, PerAxis, PerGroup, PerRow

    if weights == "int8":
        return Int8WeightOnlyConfig(granularity=PerGroup(group_size) if group_size else PerRow())
    if weights == "int4":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, mapping_type=MappingType.SYMMETRIC,
                                    granularity=PerGroup(group_size) if group_size else PerAxis(0))
    raise QuantizeError(f"{weights!r} is not a torchao quantization; use int8 or int4")


def quantize_model(model: nn.Module, weights: str = "int8", group_size: int | None = None) -> nn.Module:
    """A copy of `model` (eval mode) with its weights in `weights`; the original is left untouched.

    fp32 returns an fp32 copy, bf16 a bfloat16 copy; int8 / int4 quantize every Linear but the LM head."""
    group_size = resolve_group_size(weights, group_size)
    check_quantizable(model, weights, group_size)
    out = copy.deepcopy(model).float().eval()
    if weights == "fp32":
        return out
    if weights == "bf16":
        return out.to(torch.bfloat16)
    import_torchao()
    from torchao.quantization import quantize_

    names = {n for n, _ in quantizable_layers(out)}
    quantize_(out, torchao_config(weights, group_size), filter_fn=lambda m, fqn: fqn in names)
    left = [n for n, m in quantizable_layers(out) if type(m.weight) is nn.Parameter]
    if left:  # torchao skips what it cannot handle without an error; we do not hide it
        raise QuantizeError(f"torchao left {', '.join(left[:3])} unquantized; nothing was changed")
    out.slm_weights = {"weights": weights, "group_size": group_size}
    return out


def weights_of(model: nn.Module) -> dict:
    """{"weights": ..., "group_size": ...} of a model made by quantize_model (fp32 / bf16 from the dtype)."""
    info = getattr(model, "slm_weights", None)
    if info:
        return dict(info)
    dtype = next(model.parameters()).dtype
    return {"weights": "bf16" if dtype == torch.bfloat16 else "fp32", "group_size": None}
