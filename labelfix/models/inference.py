"""Options and cache keys for probabilities from transformers (``--model`` and ``--embed``).

The engine lives in :mod:`labelfix.models.transformers` and :mod:`labelfix.models.embed`;
this module decides, before anything is computed or written, what a scan will run and under
which key its results are stored, so that a re-scan reuses them and bad options write nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from labelfix.events import EventCallback, ignore

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineOptions:
    """Where the model runs: in this process (``local``) or on a Ray actor pool (``ray``).

    Not part of any cache key: both engines compute the same probabilities, so a ray scan's
    stored matrix is reused by a local scan of the same model and the other way round.
    ``address`` is passed to ``ray.init(address=...)``; None starts a local Ray sized to this
    machine. ``num_workers`` None picks one actor per GPU (with ``num_gpus_per_worker``) or one
    per four CPUs of the cluster.
    """

    name: str = "local"
    address: str | None = None
    num_workers: int | None = None
    num_gpus_per_worker: float = 0.0

    def check(self) -> None:
        """Raises UsageError naming the fix for an unknown engine or a bad Ray option."""
        from labelfix.errors import UsageError

        if self.name not in ENGINES:
            raise UsageError(f"--engine {self.name}: unknown; use --engine local or ray")
        if self.name == "local":
            given = [flag for flag, value in (
                ("--ray-address", self.address), ("--num-workers", self.num_workers),
                ("--num-gpus-per-worker", self.num_gpus_per_worker or None)) if value is not None]
            if given:
                raise UsageError(f"{', '.join(given)}: Ray options; add --engine ray")
            return
        if self.num_workers is not None and self.num_workers < 1:
            raise UsageError(f"--num-workers {self.num_workers}: must be at least 1")
        if self.num_gpus_per_worker < 0:
            raise UsageError(
                f"--num-gpus-per-worker {self.num_gpus_per_worker}: must be 0 (CPU) or more")


@dataclass(frozen=True)
class InferenceOptions:
    """How to run a transformers model over the texts (``labelfix scan`` options)."""

    model: str
    revision: str | None = None
    label_map: Mapping[str, str] = field(default_factory=dict)
    batch_size: int | None = None
    max_length: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    quantize: str | None = None
    check_agreement: int = 0
    engine: EngineOptions = field(default_factory=EngineOptions)


def check_runtime(options: InferenceOptions, *, on_event: EventCallback = ignore) -> None:
    """Refuse a device, precision or batch setting this machine cannot run, before any work.

    Raises:
        UsageError: e.g. --device cuda without CUDA, fp16 on CPU, a bad --batch-size, a bad
            Ray option, or --engine ray without Ray installed.
    """
    from labelfix.models import transformers as engine

    engine.check_batch_options(batch_size=options.batch_size, max_length=options.max_length)
    if options.engine.name == "ray":
        from labelfix.models import ray_engine

        # The workers, not this process, run the model: their device is checked there.
        ray_engine.check_options(options)
        return
    device = "cpu" if options.quantize and options.device == "auto" else \
        engine.resolve_device(options.device)
    engine.check_precision(device, options.precision, quantize=options.quantize,
                           on_event=ignore)


def classifier_key(options: InferenceOptions, label_names: Sequence[str], *,
                   on_event: EventCallback = ignore) -> tuple[str, str | None]:
    """The store key of a classifier's probabilities, and its revision, without its weights.

    Loads the config and tokenizer only, and checks that the model's labels map onto
    ``label_names``, so that a model that does not fit fails before the scan writes anything.

    Raises:
        UsageError: not a model, labels that do not map, bad options.
        WorkError: a hub model that cannot be reached.
    """
    from labelfix.models import transformers as engine

    check_runtime(options, on_event=on_event)
    reference = engine.open_model(options.model, revision=options.revision, on_event=on_event)
    columns = engine._label_columns(engine._model_labels(reference.config), list(label_names),
                                    options.label_map or None)
    mapping = ",".join(str(c) for c in columns)
    key = "|".join([
        "model", reference.source, f"max_length={options.max_length or 'model'}",
        f"precision={options.precision}", f"quantize={options.quantize or 'none'}",
        f"labels={mapping}",
    ])
    return key, reference.revision


def classifier_probabilities(texts: Sequence[str], pairs: Sequence[str] | None,
                             options: InferenceOptions, label_names: Sequence[str], *,
                             on_event: EventCallback = ignore) -> np.ndarray:
    """(N, K) float32 probabilities of the model, columns in ``label_names`` order."""
    from labelfix.models import transformers as engine

    if options.engine.name == "ray":
        from labelfix.models import ray_engine

        return ray_engine.classifier_probabilities(texts, pairs, options, label_names,
                                                   on_event=on_event)

    return engine.predict_probabilities(
        texts, pairs, model=options.model, label_names=label_names, revision=options.revision,
        label_map=options.label_map or None, batch_size=options.batch_size,
        max_length=options.max_length, device=options.device, precision=options.precision,
        quantize=options.quantize, check_agreement=options.check_agreement, on_event=on_event,
    ).probs


def embedding_key(options: InferenceOptions, *, on_event: EventCallback = ignore) -> str:
    """The store key of an encoder's embeddings of the texts (independent of --folds).

    Raises:
        UsageError: not a model, bad options.
    """
    from labelfix.models.embed import embedding_source_key

    check_runtime(options, on_event=on_event)
    return "embeddings|" + embedding_source_key(
        options.model, revision=options.revision, max_length=options.max_length,
        precision=options.precision, on_event=on_event)


def embed(texts: Sequence[str], pairs: Sequence[str] | None, options: InferenceOptions, *,
          on_event: EventCallback = ignore) -> np.ndarray:
    """(N, D) float32 L2-normalised mean-pooled embeddings."""
    from labelfix.models.embed import embed_texts

    if options.engine.name == "ray":
        from labelfix.models import ray_engine

        return ray_engine.embeddings(texts, pairs, options, on_event=on_event)

    return embed_texts(texts, pairs, model=options.model, revision=options.revision,
                       batch_size=options.batch_size, max_length=options.max_length,
                       device=options.device, precision=options.precision,
                       on_event=on_event).vectors
