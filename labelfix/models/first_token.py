"""Skip the work a classifier throws away: its last layer's outputs past the first token.

The classification heads of BERT, DistilBERT, RoBERTa, XLM-RoBERTa and ELECTRA read only the
first token of the last hidden state. In the last layer every other position's query, attention
output and feed-forward network are computed and then discarded: on DistilBERT-base that is 14%
of the model's matrix-multiply work. The first token still attends to every key and value, so
its output, and hence the logits, are those of the full forward pass up to float rounding.

The network is changed in place and only after a probe, run through the changed and the
unchanged network, gives the same probabilities; any other architecture, or a transformers
release whose layers no longer look as expected, keeps the full forward pass.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Classifier class -> (attribute path to the list of encoder layers, layer style).
_SUPPORTED: dict[str, tuple[tuple[str, ...], str]] = {
    "DistilBertForSequenceClassification": (("distilbert", "transformer", "layer"), "distilbert"),
    "BertForSequenceClassification": (("bert", "encoder", "layer"), "bert"),
    "RobertaForSequenceClassification": (("roberta", "encoder", "layer"), "bert"),
    "XLMRobertaForSequenceClassification": (("roberta", "encoder", "layer"), "bert"),
    "CamembertForSequenceClassification": (("roberta", "encoder", "layer"), "bert"),
    "ElectraForSequenceClassification": (("electra", "encoder", "layer"), "bert"),
}
# fp32 probabilities of the pruned and the full pass differ only by rounding (~1e-7).
PROBE_TOLERANCE = 1e-5
PROBE_TEXTS = (
    "A short probe.",
    "A longer probe sentence, so that the batch is padded and the mask matters.",
)


def prune_to_first_token(net: Any, tokenizer: Any) -> bool:
    """Make ``net``'s last layer compute only the first token, if that gives the same output.

    Args:
        net: a float32 sequence-classification model in eval mode, on the CPU.
        tokenizer: its tokenizer, used to build the probe batch.

    Returns:
        True when the last layer was replaced; False when the architecture is not one this
        knows, or the probe's probabilities differed (the network is then left unchanged).
    """
    import torch

    plan = _SUPPORTED.get(type(net).__name__)
    config = getattr(net, "config", None)
    if plan is None or config is None or getattr(config, "is_decoder", False) \
            or getattr(config, "add_cross_attention", False):
        return False
    path, style = plan
    layers: Any = net
    for name in path:
        layers = getattr(layers, name, None)
        if layers is None:
            return False
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        return False
    last = layers[-1]
    compute = _distilbert_block if style == "distilbert" else _bert_layer
    try:
        probe = tokenizer(list(PROBE_TEXTS), padding=True, return_tensors="pt")
        accepted = inspect.signature(net.forward).parameters
        inputs = {k: v for k, v in probe.items() if k in accepted}
        with torch.inference_mode():
            full = net(**inputs).logits.float().softmax(-1)
            layers[-1] = _module_class()(last, compute)
            pruned = net(**inputs).logits.float().softmax(-1)
        if full.shape == pruned.shape and \
                float((full - pruned).abs().max()) <= PROBE_TOLERANCE:
            return True
    except Exception:  # noqa: BLE001 -- any failure only means: keep the full forward pass
        pass
    layers[-1] = last
    return False


@functools.cache
def _module_class() -> type:
    """The wrapper module class, defined on first use so that importing this needs no torch."""
    import torch

    class _FirstTokenLayer(torch.nn.Module):
        """An encoder layer that returns ``(b, 1, H)``: its output at the first position only."""

        def __init__(self, inner: torch.nn.Module, compute: Callable[..., torch.Tensor]) -> None:
            super().__init__()
            self.inner = inner
            self._compute = compute

        def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None,
                    *args: Any, **kwargs: Any) -> torch.Tensor:
            return self._compute(self.inner, hidden_states, _first_query_mask(attention_mask))

    return _FirstTokenLayer


def _first_query_mask(mask: Any) -> Any:
    """The attention mask rows of the first query: ``(b, 1, 1, L)`` from ``(b, 1, L, L)``."""
    if mask is None:
        return None
    if mask.dim() != 4:
        raise ValueError("expected a 4-D attention mask")
    return mask[:, :, :1, :] if mask.shape[-2] != 1 else mask


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any, *,
            heads: int, scaling: float) -> torch.Tensor:
    """Multi-head attention of ``(b, 1, H)`` queries over ``(b, L, H)`` keys: ``(b, 1, H)``."""
    import torch

    b, length, hidden = key.shape
    size = hidden // heads
    q = query.view(b, 1, heads, size).transpose(1, 2)
    k = key.view(b, length, heads, size).transpose(1, 2)
    v = value.view(b, length, heads, size).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).reshape(b, 1, hidden)


def _distilbert_block(block: Any, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
    attention = block.attention
    first = hidden[:, :1]
    context = _attend(attention.q_lin(first), attention.k_lin(hidden), attention.v_lin(hidden),
                      mask, heads=attention.n_heads, scaling=attention.scaling)
    x = block.sa_layer_norm(attention.out_lin(context) + first)
    return block.output_layer_norm(block.ffn(x) + x)


def _bert_layer(layer: Any, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
    attention = layer.attention.self
    first = hidden[:, :1]
    context = _attend(attention.query(first), attention.key(hidden), attention.value(hidden),
                      mask, heads=attention.num_attention_heads, scaling=attention.scaling)
    x = layer.attention.output(context, first)
    return layer.output(layer.intermediate(x), x)

