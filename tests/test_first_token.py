"""A classifier's last layer computing only the first token gives the full pass's probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labelfix.models import first_token
from labelfix.models.first_token import prune_to_first_token
from labelfix.models.transformers import load_model
from tests.tiny_model import FIXTURE_TEXTS, LABELS, build_tokenizer, save_tiny_classifier

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Lengths from 1 token to the 128-token limit, so the batch is padded and the mask matters.
TEXTS = ["goal", FIXTURE_TEXTS[0], " ".join(FIXTURE_TEXTS), FIXTURE_TEXTS[3] + FIXTURE_TEXTS[7]]


def tiny(kind: str, tokenizer: Any) -> Any:
    """A seeded 2-layer classifier of the given family, random weights far from uniform."""
    common = {"id2label": dict(enumerate(LABELS)),
              "label2id": {n: i for i, n in enumerate(LABELS)}, "initializer_range": 0.5}
    torch.manual_seed(0)
    if kind == "distilbert":
        config = transformers.DistilBertConfig(
            vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
            max_position_embeddings=128, **common)
        return transformers.DistilBertForSequenceClassification(config).eval()
    if kind == "roberta":
        config = transformers.RobertaConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
            pad_token_id=tokenizer.pad_token_id, **common)
        return transformers.RobertaForSequenceClassification(config).eval()
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, **common)
    return transformers.BertForSequenceClassification(config).eval()


def probabilities(net: Any, tokenizer: Any) -> Any:
    inputs = tokenizer(TEXTS, padding=True, truncation=True, max_length=128,
                       return_tensors="pt")
    if "token_type_ids" not in _arguments(net):
        inputs.pop("token_type_ids", None)
    with torch.inference_mode():
        return net(**inputs).logits.softmax(-1)


def _arguments(net: Any) -> list[str]:
    import inspect

    return list(inspect.signature(net.forward).parameters)


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
def test_pruned_last_layer_gives_the_full_pass_probabilities(kind: str) -> None:
    tokenizer = build_tokenizer()
    net = tiny(kind, tokenizer)
    full = probabilities(net, tokenizer)
    assert float((full - full[0]).abs().max()) > 1e-3  # rows differ: a mix-up would show

    assert prune_to_first_token(net, tokenizer) is True
    base = getattr(net, net.base_model_prefix)
    layers = base.transformer.layer if kind == "distilbert" else base.encoder.layer
    assert type(layers[-1]).__name__ == "_FirstTokenLayer"
    assert type(layers[0]).__name__ != "_FirstTokenLayer"
    assert float((probabilities(net, tokenizer) - full).abs().max()) < 1e-5


def test_a_layer_that_gives_other_probabilities_is_put_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokenizer = build_tokenizer()
    net = tiny("bert", tokenizer)
    last = net.bert.encoder.layer[-1]
    full = probabilities(net, tokenizer)

    def wrong(layer: Any, hidden: Any, mask: Any) -> Any:
        # Attention over the first token alone: plausible code, different numbers.
        return layer(hidden[:, :1])

    monkeypatch.setattr(first_token, "_bert_layer", wrong)
    assert prune_to_first_token(net, tokenizer) is False
    assert net.bert.encoder.layer[-1] is last
    assert float((probabilities(net, tokenizer) - full).abs().max()) == 0.0


def test_an_architecture_it_does_not_know_keeps_every_token() -> None:
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = transformers.AlbertConfig(
        vocab_size=len(tokenizer), embedding_size=16, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128, num_labels=3)
    net = transformers.AlbertForSequenceClassification(config).eval()
    before = [type(m).__name__ for m in net.modules()]
    assert prune_to_first_token(net, tokenizer) is False
    assert [type(m).__name__ for m in net.modules()] == before


def test_the_engine_loads_classifiers_pruned(tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path / "tiny")
    loaded = load_model(str(folder), revision=None, task="classifier")
    assert type(loaded.model.bert.encoder.layer[-1]).__name__ == "_FirstTokenLayer"
    encoder = load_model(str(folder), revision=None, task="encoder")
    # Mean pooling reads every token, so an encoder keeps its full last layer.
    assert "_FirstTokenLayer" not in {type(m).__name__ for m in encoder.model.modules()}
