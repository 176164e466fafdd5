"""Build tiny BERT models on disk for tests, without any download.

A WordPiece vocabulary is trained on FIXTURE_TEXTS with ``tokenizers``, wrapped as a transformers
fast tokenizer, and saved with ``save_pretrained`` next to a 2-layer BERT (hidden 32, 2 heads,
intermediate 64) with seeded random weights. The folder then loads through the same
``from_pretrained`` path as a hub model. Building one takes well under a second.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LABELS = ("World", "Sports", "Business", "Sci/Tech")

FIXTURE_TEXTS = (
    "Leaders of both countries met in Geneva to discuss the ceasefire and the border.",
    "The prime minister resigned after the election results were announced on Sunday.",
    "Protesters gathered outside parliament as the new law was debated by ministers.",
    "The striker scored twice as the home team won the cup final in extra time.",
    "The coach praised his players after a narrow victory in the championship match.",
    "She broke the world record in the marathon and won the gold medal at the games.",
    "Shares fell sharply after the bank reported lower quarterly profits and rising costs.",
    "The company agreed to buy its rival in a deal worth three billion dollars.",
    "Oil prices rose as investors worried about supply and the stock market slipped.",
    "Scientists released a new study on the genome of an ancient species of bird.",
    "The software update fixes a security flaw in the operating system of the phone.",
    "Researchers launched a satellite to measure the temperature of the distant planet.",
)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_tokenizer(texts: Sequence[str] = FIXTURE_TEXTS, *, vocab_size: int = 400) -> Any:
    """A BertTokenizerFast whose WordPiece vocabulary is trained on ``texts``."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(
        list(texts),
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    vocab = trainer.get_vocab()
    # transformers 5 builds BERT tokenizers from a vocab dict; 4.x wants a vocab.txt file.
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        return BertTokenizerFast(vocab=vocab)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vocab.txt"
        ordered = sorted(vocab, key=vocab.__getitem__)
        path.write_text("\n".join(ordered) + "\n", encoding="utf-8")
        return BertTokenizerFast(vocab_file=str(path))


def tiny_config(
    vocab_size: int,
    *,
    labels: Sequence[str] | None = LABELS,
    max_position_embeddings: int = 128,
) -> Any:
    """A 2-layer BertConfig (hidden 32, 2 heads, intermediate 64), with ``labels`` as id2label."""
    from transformers import BertConfig

    extra: dict[str, Any] = {}
    if labels is not None:
        extra["id2label"] = dict(enumerate(labels))
        extra["label2id"] = {name: i for i, name in enumerate(labels)}
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_position_embeddings,
        # Far above BERT's 0.02, so that random weights give clearly different rows (and
        # probabilities far from uniform) for the order and equality checks to bite.
        initializer_range=0.5,
        **extra,
    )


def save_tiny_classifier(
    folder: Path,
    *,
    labels: Sequence[str] = LABELS,
    seed: int = 0,
    texts: Sequence[str] = FIXTURE_TEXTS,
) -> Path:
    """Save a seeded BertForSequenceClassification and its tokenizer to ``folder``."""
    import torch
    from transformers import BertForSequenceClassification

    tokenizer = build_tokenizer(texts)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_config(len(tokenizer), labels=labels))
    return _save(folder, model, tokenizer)


def save_tiny_encoder(folder: Path, *, seed: int = 0, texts: Sequence[str] = FIXTURE_TEXTS) -> Path:
    """Save a seeded BertModel (no head, like a sentence-transformers checkpoint) to ``folder``."""
    import torch
    from transformers import BertModel

    tokenizer = build_tokenizer(texts)
    torch.manual_seed(seed)
    model = BertModel(tiny_config(len(tokenizer), labels=None))
    return _save(folder, model, tokenizer)


def _save(folder: Path, model: Any, tokenizer: Any) -> Path:
    from transformers.utils import logging as hf_logging

    folder.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.eval().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return folder
