"""Views of what a model does with a prompt, drawn as HTML so the page can react to the pointer: the next-token
probabilities as bars (the ones the sampling filters drop greyed out; a click appends that token), and every
attention head of a layer side by side on one colour scale (the token under the pointer lit in every head)."""

from __future__ import annotations

import html

import torch

MAX_TOKENS = 32  # tokens of the prompt an attention view shows (the first ones)
TOP = 12  # bars of the next-token view

# a click on a bar appends its token (event delegation: the bars are redrawn on every change)
BARS_JS = ("element.addEventListener('click', (e) => { const b = e.target.closest('[data-token]'); "
           "if (b) trigger('click', {token: b.dataset.token}); });")
# the query token under the pointer: its row is outlined in every head, its label and its key column too
HEADS_JS = """
element.addEventListener('mouseover', (e) => {
  const c = e.target.closest('[data-q]');
  let s = element.querySelector('style.attn-hover');
  if (!s) { s = document.createElement('style'); s.className = 'attn-hover'; element.appendChild(s); }
  s.textContent = c ? `.attn-cell[data-q="${c.dataset.q}"]{outline:1px solid #dc2626;z-index:1}` +
    `.attn-tok[data-q="${c.dataset.q}"]{background:#fde68a}` +
    `.attn-cell[data-k="${c.dataset.q}"]{box-shadow:inset 0 0 0 1px #2563eb}` : '';
});"""


def shown(token: str) -> str:
    """A token as text a learner can read: spaces and line breaks made visible."""
    return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def next_token_bars(model, tokenizer, ids: list[int], prompt: str, sampling) -> str:
    """The TOP most likely next tokens after `ids` under `sampling` (a SamplingConfig): each bar its probability
    after the temperature; the tokens top-k / top-p would never sample greyed out, with the reason."""
    from ..model.generation import next_token_distribution

    temperature = sampling.temperature if sampling.temperature > 0 else 1.0
    top = next_token_distribution(model, ids, top=max(TOP, sampling.top_k or 0), temperature=temperature)
    kept, total = [], 0.0
    for rank, (tid, p) in enumerate(top):
        cut = None
        if sampling.temperature == 0 and rank > 0:
            cut = "greedy takes the first"
        elif sampling.top_k and rank >= sampling.top_k:
            cut = f"outside top-k {sampling.top_k}"
        elif sampling.top_p and total >= sampling.top_p:
            cut = f"past top-p {sampling.top_p:g}"
        total += p
        kept.append((tid, p, cut))
    rows = []
    for tid, p, cut in kept[:TOP]:
        token = tokenizer.decode([tid])
        color = "#d1d5db" if cut else "#6366f1"
        note = f" <small style='color:#6b7280'>({html.escape(cut)})</small>" if cut else ""
        rows.append(f"<div data-token='{tid}' title='click: append this token to the prompt' class='next-bar' "
                    f"style='display:flex;align-items:center;gap:8px;cursor:pointer;margin:2px 0'>"
                    f"<code style='min-width:5.5em;text-align:right'>{html.escape(shown(token))}</code>"
                    f"<div style='flex:1;background:#f3f4f6;border-radius:4px'><div style='width:{100 * p:.1f}%;"
                    f"min-width:2px;height:14px;background:{color};border-radius:4px'></div></div>"
                    f"<small style='min-width:3.5em'>{p:.1%}</small>{note}</div>")
    tail = prompt[-40:]
    head = (f"<small>After the prompt <code>…{html.escape(shown(tail))}</code> ({len(ids)} tokens), at temperature "
            f"{temperature:g}; grey: never sampled with these settings. Click a bar to append that token.</small>")
    return "<div class='next-bars'>" + head + "".join(rows) + "</div>"


@torch.no_grad()
def attention_heads(model, tokenizer, ids: list[int], layer: int) -> str:
    """Every head of attention layer `layer` over the prompt's first MAX_TOKENS tokens, side by side, one colour
    scale (white = 0, dark = the largest weight of the layer); rows are queries, columns the keys they look at."""
    ids = ids[:MAX_TOKENS]
    maps = model(torch.tensor([ids]), use_cache=False, output_attentions=True).attentions  # per layer (1, nh, T, T)
    if not maps:
        raise ValueError("This model has no attention layers")
    if not 0 <= layer < len(maps):
        raise ValueError(f"Layer: choose 0…{len(maps) - 1}")
    weights = maps[layer][0].float()  # (nh, T, T)
    top = float(weights.max()) or 1.0
    labels = [shown(tokenizer.decode([i])) for i in ids]
    T = len(ids)
    size = max(6, min(14, 320 // max(T, 1)))
    tokens = "".join(f"<div class='attn-tok' data-q='{q}' style='height:{size}px;line-height:{size}px;font-size:"
                     f"{min(size, 11)}px;white-space:nowrap'>{html.escape(t)}</div>" for q, t in enumerate(labels))
    heads = []
    for h in range(weights.shape[0]):
        cells = []
        for q in range(T):
            for k in range(T):
                w = float(weights[h, q, k]) / top
                shade = int(255 - 200 * w)
                cells.append(f"<div class='attn-cell' data-q='{q}' data-k='{k}' title='{html.escape(labels[q])} → "
                             f"{html.escape(labels[k])}: {float(weights[h, q, k]):.2f}' style='background:rgb({shade},"
                             f"{shade},255)'></div>")
        heads.append(f"<div><div style='text-align:center'><small>head {h}</small></div><div style='display:grid;"
                     f"grid-template-columns:repeat({T},{size}px);grid-auto-rows:{size}px'>{''.join(cells)}</div>"
                     "</div>")
    legend = (f"<small>Layer {layer}: {weights.shape[0]} heads over the first {T} tokens; rows are the tokens looking "
              f"(queries), columns what they look at (keys); darker = more attention (the darkest cell is "
              f"{top:.2f}). Point at a row to follow that token through every head.</small>")
    return (f"<div class='attn-heads'>{legend}<div style='display:flex;gap:14px;flex-wrap:wrap;align-items:flex-end'>"
            f"<div style='text-align:right'>{tokens}</div>{''.join(heads)}</div></div>")


EXPERT_COLOURS = ("#fdba74", "#a5f3fc", "#bbf7d0", "#f5d0fe", "#fde68a", "#c7d2fe", "#fecaca", "#e5e7eb")


def memory_line(model, context: int) -> str:
    """What generation keeps per sequence: the attention layers' KV cache grows with every token, the Mamba2 and
    short-convolution layers' state does not (the estimate's figures; `context` tokens for the full figure)."""
    from ..model.estimate import estimate, human

    e = estimate(model.config.model_spec())
    kv, state = e.kv_cache_bytes_per_token, e.state_bytes_per_sequence
    parts = [f"KV cache of the attention layers: {human(kv, 'B')} per token ({human(kv * context, 'B')} for a full "
             f"context of {context:,})" if kv else "no KV cache (no attention layers)"]
    if state:
        parts.append(f"state of the Mamba2 / convolution layers: {human(state, 'B')}, the same for 1 token or a full "
                     "context")
    return "<small>Memory per sequence while generating: " + "; ".join(parts) + ".</small>"


def expert_view(model, tokenizer, ids: list[int]) -> str:
    """Which experts each prompt token goes to in every mixture-of-experts layer (the first MAX_TOKENS tokens), one
    colour per expert, the first choice (the highest router weight) first; and the memory line."""
    from ..model.blocks.moe import expert_choices

    ids = ids[:MAX_TOKENS]
    memory = memory_line(model, model.config.max_position_embeddings)
    choices = expert_choices(model, torch.tensor([ids]))  # {layer: (1, T, k)}
    if not choices:
        return f"<div class='expert-view'><small>This model has no mixture-of-experts layers.</small><br>{memory}</div>"
    labels = [shown(tokenizer.decode([i])) for i in ids]
    head = "".join(f"<th style='padding:2px 4px;font-weight:normal'>{html.escape(t)}</th>" for t in labels)
    rows = []
    for name, chosen in choices.items():
        cells = []
        for t, experts in enumerate(chosen[0].tolist()):
            colour = EXPERT_COLOURS[experts[0] % len(EXPERT_COLOURS)]
            cells.append(f"<td title='{html.escape(labels[t])}: experts {experts}' style='background:{colour};"
                         f"text-align:center;padding:2px 4px'>{','.join(map(str, experts))}</td>")
        layer = name.removeprefix("model.").removesuffix(".mlp")
        rows.append(f"<tr><th style='padding:2px 6px;white-space:nowrap'>{html.escape(layer)}</th>"
                    f"{''.join(cells)}</tr>")
    legend = (f"<small>Each column is a prompt token, each row a mixture-of-experts layer; a cell lists the experts "
              f"the router sent the token to, best first (the colour is the first). {len(labels)} tokens.</small>")
    return (f"<div class='expert-view'>{legend}<div style='overflow-x:auto'><table style='border-collapse:collapse;"
            f"font-size:12px'><tr><th></th>{head}</tr>{''.join(rows)}</table></div>{memory}</div>")
