"""Figures for learners: an attention map of one head over the prompt's tokens."""

from __future__ import annotations

import torch


@torch.no_grad()
def attention_figure(model, tokenizer, prompt: str, layer: int, head: int):
    """Matplotlib figure of attention probabilities (query rows attend to key columns) for layer/head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..model.attention import Attention, AttentionContext
    from ..model.positions import rope_tables

    if not prompt:
        raise ValueError("Prompt: type some text to see what the model attends to")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][: min(48, model.config.max_position_embeddings)]
    if not ids:
        raise ValueError("Prompt: the tokenizer produced no tokens for this text")
    attn_layers = [m for m in model.model.layers if isinstance(getattr(m, "self_attn", None), Attention)]
    if not attn_layers:
        raise ValueError("This model has no attention layers")
    if not 0 <= layer < len(attn_layers):
        raise ValueError(f"Layer: choose 0…{len(attn_layers) - 1}")
    attn = attn_layers[layer].self_attn
    if not 0 <= head < attn.n_heads:
        raise ValueError(f"Head: choose 0…{attn.n_heads - 1}")
    x = torch.tensor([ids])
    captured = {}

    def grab(mod, args):  # must return None: a pre-hook's return value replaces the layer's arguments
        captured.setdefault("x", args[0])

    hook = attn.register_forward_pre_hook(grab)
    try:
        model(x, use_cache=False)
    finally:
        hook.remove()
    pos = torch.arange(len(ids))[None]
    ctx = AttentionContext(key_padding=None)
    ctx.rope = {key: rope_tables(pos, key[1], key[0]) for key in model.model.rope_keys}
    weights = attn.attention_weights(captured["x"], ctx)[0, head]  # (T, T)
    labels = [repr(tokenizer.decode([i]))[1:-1] or "␣" for i in ids]
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    ax.imshow(weights.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(ids)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(ids)), labels, fontsize=7)
    ax.set_xlabel("attends to (key)")
    ax.set_ylabel("token (query)")
    ax.set_title(f"layer {layer}, head {head}")
    fig.tight_layout()
    plt.close(fig)
    return fig
