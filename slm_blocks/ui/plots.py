"""Figures for learners: an attention map of one head over the prompt's tokens."""

from __future__ import annotations

import torch

MAX_TOKENS = 48  # the prompt's first tokens shown (a map of more is unreadable, and every layer's is kept)


@torch.no_grad()
def attention_figure(model, tokenizer, prompt: str, layer: int, head: int):
    """Matplotlib figure of attention probabilities (query rows attend to key columns) for layer/head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not prompt:
        raise ValueError("Prompt: type some text to see what the model attends to")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][: min(MAX_TOKENS, model.config.max_position_embeddings)]
    if not ids:
        raise ValueError("Prompt: the tokenizer produced no tokens for this text")
    # the model's own forward pass in explain mode: each attention layer keeps its probabilities
    maps = model(torch.tensor([ids]), use_cache=False, output_attentions=True).attentions  # per layer (1, nh, T, T)
    if not maps:
        raise ValueError("This model has no attention layers")
    if not 0 <= layer < len(maps):
        raise ValueError(f"Layer: choose 0…{len(maps) - 1}")
    if not 0 <= head < maps[layer].shape[1]:
        raise ValueError(f"Head: choose 0…{maps[layer].shape[1] - 1}")
    weights = maps[layer][0, head]  # (T, T)
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
