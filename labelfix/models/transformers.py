"""Class probabilities from a transformers sequence classifier: the engine behind ``scan --model``.

The engine tokenizes the whole column once, sorts rows by length, and runs batches that are
padded only to their own longest row, so almost no compute goes to padding. Batches are sized
by a token budget (rows x longest row) rather than a fixed row count, which keeps the matrices
large for short texts and the memory bounded for long ones. Probabilities come back in the input
row order, with columns in the order of the dataset's label names.

``labelfix.models.embed`` reuses the loading, tokenizing and batching helpers of this module.
torch and transformers are imported inside the functions that need them so that importing this
module (and ``labelfix --help``) stays fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labelfix.errors import DataError, UsageError, WorkError
from labelfix.events import Event, EventCallback, Task, ignore

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
QUANTIZATIONS = ("int8",)

# Tokens (rows x longest row) per batch. On CPU (2 cores, idle, 1,000 AG News rows through
# DistilBERT-base, fp32, first-token last layer) 2048-6144 ran within 4% of each other and
# 8192 9% slower, so the budget sits mid-plateau. A GPU wants far larger batches.
CPU_TOKEN_BUDGET = 4096
CUDA_TOKEN_BUDGET = 65536
# Caps the row count of batches of very short rows, whose per-row overhead is already amortised.
MAX_BATCH_ROWS = 1024
# Rows per call of the fast tokenizer, so that huge columns still report progress.
TOKENIZE_CHUNK = 8192
# Used when neither the tokenizer nor the config states a length limit.
FALLBACK_MAX_LENGTH = 512
# Below this argmax agreement with fp32 a reduced precision is worth a warning.
AGREEMENT_WARNING_BELOW = 0.99
IN_SAMPLE_ACCURACY = 0.99

# Models of the RoBERTa family number positions from padding_idx + 1, so their
# max_position_embeddings (514) is 2 more than the longest sequence they accept.
_POSITION_OFFSET_MODEL_TYPES = frozenset(
    {
        "roberta",
        "roberta-prelayernorm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "data2vec-text",
        "xmod",
        "mpnet",
        "longformer",
        "luke",
    }
)


@dataclass(frozen=True)
class ModelProbabilities:
    """Predicted class probabilities of a transformers classifier.

    Attributes:
        probs: ``(N, K) float32``; rows in input order, columns in the order of ``label_names``.
        model: the hub id or folder as given.
        revision: the resolved commit hash for a hub model when known, else the revision given,
            else None.
        source_key: stable identifier of what produced ``probs`` (weights, max_length,
            precision, quantization, label mapping), for caching.
        agreement: fraction of the first ``check_agreement`` rows whose argmax equals the fp32
            argmax, when a reduced precision or quantization was checked; else None.
    """

    probs: np.ndarray
    model: str
    revision: str | None
    source_key: str
    agreement: float | None


def in_sample_warning(accuracy: float) -> str | None:
    """Warning text when a model's accuracy on the scanned labels is too good to be held-out.

    A classifier evaluated on its own training split reproduces the given labels, including the
    wrong ones, so its probabilities cannot reveal label errors.

    Returns:
        The warning message when ``accuracy > 0.99``, else None.
    """
    if accuracy > IN_SAMPLE_ACCURACY:
        return (
            f"held-out accuracy {accuracy:.3f} > {IN_SAMPLE_ACCURACY:g}: the model was probably "
            "trained on this split; in-sample probabilities hide label errors — use --embed or "
            "scan a held-out split"
        )
    return None


def parse_label_map(spec: str) -> dict[str, str]:
    """Parse ``--label-map``: ``"a=World,b=Sports"`` -> ``{"a": "World", "b": "Sports"}``.

    Keys are the model's label names, values the dataset's; spaces around names are dropped.

    Raises:
        UsageError: an entry without ``=``, an empty name, or a model label given twice.
    """
    mapping: dict[str, str] = {}
    example = "write --label-map MODEL=DATASET,... e.g. --label-map LABEL_0=World,LABEL_1=Sports"
    for entry in spec.split(","):
        source, sep, target = entry.partition("=")
        source, target = source.strip(), target.strip()
        if not sep or not source or not target or "=" in target:
            raise UsageError(f"--label-map: {entry.strip()!r} is not MODEL=DATASET; {example}")
        if source in mapping:
            raise UsageError(
                f"--label-map: model label {source!r} is mapped twice; give each model label once"
            )
        mapping[source] = target
    return mapping


def resolve_device(device: str) -> str:
    """Turn ``--device`` (``cpu``, ``cuda`` or ``auto``) into ``"cpu"`` or ``"cuda"``.

    Raises:
        UsageError: an unknown device, or ``cuda`` where no CUDA device is available.
    """
    if device not in DEVICES:
        raise UsageError(f"--device {device}: unknown device; use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise UsageError(
            "--device cuda: no CUDA device is available here; use --device cpu or auto"
        )
    return "cpu"


def predict_probabilities(
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    *,
    model: str,
    label_names: Sequence[str],
    revision: str | None = None,
    label_map: Mapping[str, str] | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    quantize: str | None = None,
    check_agreement: int = 0,
    on_event: EventCallback = ignore,
) -> ModelProbabilities:
    """Class probabilities of every row from a sequence-classification model.

    Args:
        texts: N texts.
        pairs: N second texts for sentence-pair models, or None.
        model: a Hugging Face hub id or a folder written by ``save_pretrained``.
        label_names: the dataset's K label names; the columns of the result follow this order.
        revision: branch, tag or commit of a hub model (ignored, with a warning, for a folder).
        label_map: model label name -> dataset label name, for labels whose names differ; the
            other model labels are matched by name (exact, then case-insensitive). Several model
            labels may map onto one dataset label: their probabilities add up.
        batch_size: rows per batch; None sizes batches by a token budget.
        max_length: truncation length in tokens; None uses the model's own limit.
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA when available; CPU with ``quantize``).
        precision: ``fp32``, ``bf16`` (bf16 weights on CPU, autocast on CUDA) or ``fp16``
            (CUDA only, autocast).
        quantize: None, or ``int8`` for dynamic int8 quantization of the linear layers (CPU).
        check_agreement: with a reduced precision or quantization, also run fp32 on this many
            leading rows and report the fraction whose argmax agrees.
        on_event: progress ("Tokenizing", "Scoring rows", in rows), info and warnings.

    Returns:
        ModelProbabilities with ``probs`` of shape ``(N, K) float32``, rows summing to 1.

    Raises:
        UsageError: bad options, a path that is not a model, labels that cannot be mapped, or a
            model that is not a trained single-label classifier.
        DataError: a text that is not a string, or pairs of another length than texts.
        WorkError: a hub model that cannot be downloaded, or a missing package.
    """
    names = _check_label_names(label_names)
    check_batch_options(batch_size=batch_size, max_length=max_length)
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UsageError(f"--quantize {quantize}: unknown; use --quantize int8 or leave it out")
    if check_agreement < 0:
        raise UsageError(f"--check-agreement {check_agreement}: must be 0 or a positive row count")
    rows, second = check_texts(texts, pairs)
    # int8 kernels exist only for CPU, so asking for them is also a choice of device.
    resolved_device = "cpu" if quantize and device == "auto" else resolve_device(device)
    check_precision(resolved_device, precision, quantize=quantize, on_event=on_event)

    loaded = load_model(model, revision=revision, task="classifier", on_event=on_event)
    columns = _label_columns(_model_labels(loaded.config), names, label_map)
    length = resolve_max_length(loaded.tokenizer, loaded.config, max_length, on_event=on_event)
    encoded = tokenize(
        loaded.tokenizer, loaded.model, rows, second, max_length=length, on_event=on_event
    )
    net = loaded.model.to(resolved_device)

    def score(network: Any, subset: Encoded, run_precision: str, task: str) -> np.ndarray:
        return run_engine(
            network,
            subset,
            classifier_forward,
            tokenizer=loaded.tokenizer,
            device=resolved_device,
            precision=run_precision,
            batch_size=batch_size,
            task=task,
            on_event=on_event,
        )

    reduced = precision != "fp32" or quantize is not None
    checked = min(check_agreement, len(rows)) if reduced else 0
    reference: np.ndarray | None = None
    if checked:
        # fp32 runs before the weights are converted, so no second copy of them is needed.
        reference = score(net, encoded.head(checked), "fp32", "Checking fp32 agreement")
    net = reduce_precision(net, device=resolved_device, precision=precision, quantize=quantize)
    model_probs = score(net, encoded, precision, "Scoring rows")
    if not rows:
        model_probs = np.zeros((0, len(columns)), dtype=np.float32)
    agreement: float | None = None
    if reference is not None:
        agreement = float(np.mean(reference.argmax(1) == model_probs[:checked].argmax(1)))
        _report_agreement(
            agreement, checked, precision=precision, quantize=quantize, on_event=on_event
        )

    probs = _to_dataset_columns(model_probs, columns, len(names))
    key = "|".join(
        [
            loaded.source,
            f"max_length={length}",
            f"precision={precision}",
            f"quantize={quantize or 'none'}",
            "labels=" + ",".join(str(c) for c in columns),
        ]
    )
    return ModelProbabilities(
        probs=probs, model=model, revision=loaded.revision, source_key=key, agreement=agreement
    )


# ---------------------------------------------------------------------------------------------
# Helpers shared with labelfix.models.embed
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelReference:
    """A model's identity, config and tokenizer, before its weights are loaded.

    ``location`` is what to pass to ``from_pretrained``: the folder with ``~`` expanded, or the
    hub id. ``load_revision`` is the revision to pass with it, pinned to one commit when the hub
    could resolve it; ``revision`` is that commit when known, else the revision asked for.
    ``source`` names the weights in cache keys: ``hub:ID@REVISION`` or ``folder:HASH``.
    """

    model: str
    folder: Path | None
    location: str
    load_revision: Any
    revision: str | None
    source: str
    config: Any
    tokenizer: Any


@dataclass
class LoadedModel:
    """A tokenizer and network ready for inference, with what identifies them.

    ``source`` names the weights for cache keys: ``hub:ID@COMMIT`` (or the revision asked for
    when the commit is unknown), or ``folder:HASH`` for a local folder.
    """

    tokenizer: Any
    model: Any
    config: Any
    revision: str | None
    source: str


@dataclass(frozen=True)
class Encoded:
    """Token ids of N rows, unpadded.

    ``lengths`` is ``(N,) int64``; ``token_type_ids`` is None when the model takes none.
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    lengths: np.ndarray

    def head(self, n: int) -> Encoded:
        """The first ``n`` rows."""
        types = self.token_type_ids[:n] if self.token_type_ids is not None else None
        return Encoded(self.input_ids[:n], types, self.lengths[:n])


def check_precision(
    device: str, precision: str, *, quantize: str | None = None, on_event: EventCallback = ignore
) -> None:
    """Refuse precision and quantization settings that cannot run on ``device``.

    Raises:
        UsageError: an unknown precision, fp16 on CPU, bf16 on a GPU without it, int8 on CUDA,
            or int8 combined with a reduced precision.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: unknown; use one of {', '.join(PRECISIONS)}")
    if quantize is not None:
        if device != "cpu":
            raise UsageError(
                "--quantize int8: dynamic int8 quantization runs on CPU only; use --device cpu "
                "or drop --quantize (on a GPU, --precision bf16 or fp16 is the fast option)"
            )
        if precision != "fp32":
            raise UsageError(
                f"--quantize int8 with --precision {precision}: int8 layers compute in fp32; "
                "drop one of the two"
            )
    import torch

    if precision == "fp16" and device == "cpu":
        raise UsageError(
            "--precision fp16: fp16 is only fast on CUDA; use --precision bf16 on CPU, "
            "or --device cuda"
        )
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(
            "--precision bf16: this GPU has no bf16 support; use --precision fp16 or fp32"
        )
    if precision == "bf16" and device == "cpu" and not _cpu_has_bf16():
        on_event(
            Event(
                "warning",
                message="--precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so "
                "bf16 is emulated and likely slower than fp32; consider --precision fp32",
            )
        )


def open_model(
    model: str, *, revision: str | None, on_event: EventCallback = ignore
) -> ModelReference:
    """Resolve a hub id or local folder and load its config and tokenizer (not the weights).

    Raises:
        UsageError: a local path that does not exist or is not a model folder.
        WorkError: a hub id that cannot be loaded, or a package the tokenizer needs is missing.
    """
    folder = _local_folder(model)
    if folder is not None and revision is not None:
        on_event(
            Event(
                "warning",
                message=f"--revision {revision}: applies to hub ids only; ignored for the local "
                f"folder {model}",
            )
        )
    import transformers

    load_revision: Any = None
    commit: str | None = None
    if folder is not None:
        source = f"folder:{folder_fingerprint(folder)}"
    else:
        load_revision, commit = _resolve_hub_revision(model, revision)
    location = str(folder) if folder is not None else model
    with _quiet_transformers(), _loading_errors(model, local=folder is not None):
        config = transformers.AutoConfig.from_pretrained(location, revision=load_revision)
        tokenizer = transformers.AutoTokenizer.from_pretrained(location, revision=load_revision)
    resolved_revision = None
    if folder is None:
        resolved_revision = commit or _cached_commit(model, load_revision) or revision
        source = f"hub:{model}@{resolved_revision or 'default'}"
    return ModelReference(
        model, folder, location, load_revision, resolved_revision, source, config, tokenizer
    )


def load_model(
    model: str, *, revision: str | None, task: str, on_event: EventCallback = ignore
) -> LoadedModel:
    """Load a tokenizer and a float32 network in eval mode from a hub id or a local folder.

    ``task`` is ``"classifier"`` (AutoModelForSequenceClassification) or ``"encoder"``
    (AutoModel). transformers' own logging and progress bars are silenced while loading.

    Raises:
        UsageError: a local path that does not exist or is not a model, a classifier without a
            trained head, or a multi-label or regression model.
        WorkError: a hub id that cannot be loaded, or a package the model needs is missing.
    """
    on_event(Event("info", message=f"Loading model {model}"))
    reference = open_model(model, revision=revision, on_event=on_event)
    import torch
    import transformers

    auto = (
        transformers.AutoModelForSequenceClassification
        if task == "classifier"
        else transformers.AutoModel
    )
    with _quiet_transformers(), _loading_errors(model, local=reference.folder is not None):
        net, info = auto.from_pretrained(
            reference.location,
            revision=reference.load_revision,
            config=reference.config,
            output_loading_info=True,
            **_float32_kwargs(transformers, torch),
        )
    net.eval()
    missing = sorted(info.get("missing_keys") or ())
    if task == "classifier":
        _check_classifier(model, reference.config, missing)
        from labelfix.models.first_token import prune_to_first_token

        pruned = prune_to_first_token(net, reference.tokenizer)
        log.debug("%s: last layer computes %s", model,
                  "the first token only" if pruned else "every token")
    else:
        random = [key for key in missing if "pooler" not in key.split(".")]
        if random:
            # Mean pooling never uses the pooler, so only other missing weights matter.
            on_event(
                Event(
                    "warning",
                    message=f"--embed {model}: {len(random)} encoder weights are not in the "
                    f"checkpoint and are random (e.g. {random[0]}); the embeddings may be "
                    "meaningless",
                )
            )
    return LoadedModel(
        reference.tokenizer, net, reference.config, reference.revision, reference.source
    )


def folder_fingerprint(folder: Path) -> str:
    """Short hash of a model folder: config.json's bytes plus every file's name, size and mtime.

    Hashing whole weight files would take seconds for large models; size and mtime change
    whenever save_pretrained rewrites them.
    """
    digest = hashlib.sha256()
    digest.update((folder / "config.json").read_bytes())
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def resolve_max_length(
    tokenizer: Any, config: Any, max_length: int | None, *, on_event: EventCallback = ignore
) -> int:
    """The truncation length: ``max_length``, or the model's limit when None.

    The limit is ``tokenizer.model_max_length`` capped by ``config.max_position_embeddings``
    (less the position offset of RoBERTa-like models); tokenizers without a stated limit report
    a huge sentinel, which is ignored.

    Raises:
        UsageError: ``max_length`` above the model's limit.
    """
    limits = []
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated < 1_000_000:
        limits.append(stated)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        if getattr(config, "model_type", "") in _POSITION_OFFSET_MODEL_TYPES:
            positions -= 2
        limits.append(positions)
    limit = min(limits) if limits else None
    if max_length is None:
        if limit is None:
            on_event(
                Event(
                    "info",
                    message=f"the model states no length limit; truncating at "
                    f"{FALLBACK_MAX_LENGTH} tokens (set --max-length to change it)",
                )
            )
            return FALLBACK_MAX_LENGTH
        return limit
    if limit is not None and max_length > limit:
        raise UsageError(
            f"--max-length {max_length}: the model accepts at most {limit} tokens; "
            f"use --max-length {limit} or less"
        )
    return max_length


def tokenize(
    tokenizer: Any,
    net: Any,
    texts: list[str],
    pairs: list[str] | None,
    *,
    max_length: int,
    on_event: EventCallback = ignore,
) -> Encoded:
    """Tokenize all rows once, truncated to ``max_length`` and unpadded.

    Token type ids are kept only when both the tokenizer produces them and the network's
    forward accepts them (a BERT tokenizer paired with DistilBERT produces but must not pass
    them).

    Raises:
        UsageError: the tokenizer rejects the rows, e.g. a pair cannot be truncated to
            ``max_length``.
    """
    wants_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ()) and (
        "token_type_ids" in inspect.signature(net.forward).parameters
    )
    input_ids: list[list[int]] = []
    token_types: list[list[int]] = []
    with Task(on_event, "Tokenizing", total=len(texts)) as progress:
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            stop = min(start + TOKENIZE_CHUNK, len(texts))
            try:
                encoding = tokenizer(
                    texts[start:stop],
                    pairs[start:stop] if pairs is not None else None,
                    truncation=True,
                    max_length=max_length,
                    padding=False,
                    return_attention_mask=False,
                    return_token_type_ids=wants_types,
                )
            except Exception as exc:
                raise UsageError(
                    f"cannot tokenize rows {start}-{stop - 1} ({one_line(exc)}); "
                    "try a larger --max-length"
                ) from exc
            input_ids.extend(encoding["input_ids"])
            if wants_types:
                token_types.extend(encoding["token_type_ids"])
            progress.advance(stop - start)
    lengths = np.fromiter((len(ids) for ids in input_ids), dtype=np.int64, count=len(input_ids))
    return Encoded(input_ids, token_types if wants_types else None, lengths)


def plan_batches(
    lengths: np.ndarray, *, batch_size: int | None, token_budget: int, same_length: bool = False
) -> list[np.ndarray]:
    """Split row indices into batches of similar length, longest first.

    Args:
        lengths: ``(N,) int`` token counts.
        batch_size: rows per batch, or None for as many rows as fit ``token_budget`` tokens
            (rows x longest row), at most MAX_BATCH_ROWS.
        token_budget: tokens per batch when ``batch_size`` is None.
        same_length: only rows of one length per batch (for tokenizers without a pad token).

    Returns:
        Index arrays ``(b,) int64`` that together hold every row once. The longest batch comes
        first, so running out of memory shows at once rather than at the end.
    """
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = batch_size or max(1, min(MAX_BATCH_ROWS, token_budget // max(longest, 1)))
        stop = min(start + size, len(order))
        if same_length:
            stop = start + int(np.sum(lengths[order[start:stop]] == longest))
        batches.append(order[start:stop])
        start = stop
    return batches


def run_engine(
    net: Any,
    encoded: Encoded,
    forward: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    *,
    tokenizer: Any,
    device: str,
    precision: str,
    batch_size: int | None,
    task: str,
    threads: int | None = None,
    on_event: EventCallback = ignore,
) -> np.ndarray:
    """Run ``forward`` over all rows in length-sorted, minimally padded batches.

    ``forward(net, inputs)`` maps a batch (``input_ids``, ``attention_mask`` and maybe
    ``token_type_ids``, all ``(b, L) int64``) to a ``(b, D)`` float32 tensor. On CPU torch
    uses ``threads`` threads, by default every core this process may run on.

    Returns:
        ``(N, D) float32`` in the rows' input order; ``(0, 0)`` when there are no rows.
    """
    import torch

    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = getattr(getattr(net, "config", None), "pad_token_id", None)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    budget = CUDA_TOKEN_BUDGET if device == "cuda" else CPU_TOKEN_BUDGET
    batches = plan_batches(
        encoded.lengths, batch_size=batch_size, token_budget=budget, same_length=pad_id is None
    )
    out: np.ndarray | None = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(_cpu_threads(device, threads or cpu_cores()))
        if device == "cpu":
            keep_freed_memory()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(_autocast(device, precision))
        progress = stack.enter_context(Task(on_event, task, total=len(encoded.lengths)))
        for rows in batches:
            inputs = _pad_batch(encoded, rows, pad_id=pad_id or 0, left=left)
            tensors = {name: torch.from_numpy(a).to(device) for name, a in inputs.items()}
            result = forward(net, tensors).float().cpu().numpy()
            if out is None:
                out = np.empty((len(encoded.lengths), result.shape[1]), dtype=np.float32)
            out[rows] = result
            progress.advance(len(rows))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def classifier_forward(net: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Softmax of a classifier's logits, computed in float32: ``(b, K_model)``."""
    return net(**inputs).logits.float().softmax(dim=-1)


def reduce_precision(net: Any, *, device: str, precision: str, quantize: str | None = None) -> Any:
    """The network to run at ``precision``: an int8-quantized copy, itself in bf16 on CPU, or as is.

    On CPU, bf16 weights throughout ran DistilBERT about 1.6x faster than autocast over fp32
    weights, whose casts around every linear layer took a quarter of its time; LayerNorm and
    softmax kernels still accumulate in fp32. On CUDA, autocast alone is fast and keeps fp16
    LayerNorms safe. The bf16 conversion is in place.
    """
    import torch

    if quantize == "int8":
        return quantize_int8(net)
    if precision == "bf16" and device == "cpu":
        return net.to(torch.bfloat16)
    return net


def quantize_int8(net: Any) -> Any:
    """A copy of ``net`` whose nn.Linear layers are dynamically quantized to int8 (CPU)."""
    import torch

    with warnings.catch_warnings():
        # torch marks torch.ao.quantization deprecated in favour of torchao, not installed here.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def one_line(exc: BaseException, limit: int = 200) -> str:
    """First line of an exception's message, shortened, for one-line error messages."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def check_batch_options(*, batch_size: int | None, max_length: int | None) -> None:
    """Raise UsageError for a batch size or max length below 1."""
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1 (or left out)")
    if max_length is not None and max_length < 1:
        raise UsageError(f"--max-length {max_length}: must be at least 1 (or left out)")


def check_texts(
    texts: Sequence[str], pairs: Sequence[str] | None
) -> tuple[list[str], list[str] | None]:
    """Lists of the texts (and pairs), checked to be strings of matching count.

    Raises:
        DataError: a value that is not a string, or pairs of another length than texts.
    """
    rows = list(texts)
    second = list(pairs) if pairs is not None else None
    if second is not None and len(second) != len(rows):
        raise DataError(
            f"{len(second)} pair texts for {len(rows)} texts; give one pair text per row"
        )
    for column, values in (("text", rows), ("pair text", second or [])):
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise DataError(
                    f"row {index}: the {column} is {type(value).__name__}, not a string; "
                    "fill or drop rows without text before scanning"
                )
    return rows, second


# ---------------------------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------------------------


def _check_label_names(label_names: Sequence[str]) -> list[str]:
    names = [str(name) for name in label_names]
    if not names:
        raise UsageError("the dataset has no label names; describe its labels before scanning")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"label name {name!r} appears twice; label names must be unique")
        seen.add(name)
    return names


def _model_labels(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [
        str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels)
    ]


def _listing(names: Sequence[str]) -> str:
    return "[" + ", ".join(names) + "]"


def _match_name(name: str, names: Sequence[str]) -> int | None:
    """Index of ``name`` in ``names``: exact, else the single case-insensitive match."""
    if name in names:
        return list(names).index(name)
    folded = [i for i, candidate in enumerate(names) if candidate.casefold() == name.casefold()]
    return folded[0] if len(folded) == 1 else None


def _label_columns(
    model_labels: list[str], dataset_labels: list[str], label_map: Mapping[str, str] | None
) -> list[int]:
    """For each model label, the index of the dataset label it becomes."""
    models, data = _listing(model_labels), _listing(dataset_labels)
    hint = "pass --label-map MODEL=DATASET,... for the labels whose names differ"
    targets: dict[int, int] = {}
    for source, target in (label_map or {}).items():
        model_index = _match_name(source, model_labels)
        if model_index is None:
            raise UsageError(
                f"--label-map: {source!r} is not a label of the model; its labels are {models}"
            )
        data_index = _match_name(target, dataset_labels)
        if data_index is None:
            raise UsageError(
                f"--label-map: {target!r} is not a label of the dataset; its labels are {data}"
            )
        targets[model_index] = data_index
    if not label_map and len(model_labels) != len(dataset_labels):
        raise UsageError(
            f"the model has {len(model_labels)} labels {models} but the dataset has "
            f"{len(dataset_labels)} {data}; {hint} so that every model label names a dataset label"
        )
    unmatched = []
    for index, name in enumerate(model_labels):
        if index not in targets:
            match = _match_name(name, dataset_labels)
            if match is None:
                unmatched.append(name)
            else:
                targets[index] = match
    if unmatched:
        raise UsageError(
            f"model labels {models} do not match dataset labels {data} "
            f"(no match for {_listing(unmatched)}); {hint}"
        )
    uncovered = [n for i, n in enumerate(dataset_labels) if i not in set(targets.values())]
    if uncovered:
        raise UsageError(
            f"no model label maps onto dataset labels {_listing(uncovered)} (model labels "
            f"{models}, dataset labels {data}); {hint} so that every dataset label gets one"
        )
    return [targets[i] for i in range(len(model_labels))]


def _to_dataset_columns(probs: np.ndarray, columns: list[int], n_labels: int) -> np.ndarray:
    out = np.zeros((probs.shape[0], n_labels), dtype=np.float32)
    for model_index, data_index in enumerate(columns):
        out[:, data_index] += probs[:, model_index]
    return out


def _check_classifier(model: str, config: Any, missing: list[str]) -> None:
    if getattr(config, "problem_type", None) == "multi_label_classification":
        raise UsageError(
            f"--model {model}: is a multi-label classifier (sigmoid outputs); labelfix needs a "
            "single-label classifier, or use --embed"
        )
    if config.num_labels < 2:
        raise UsageError(
            f"--model {model}: has {config.num_labels} output (a regression head); labelfix "
            "needs a classifier with one output per label, or use --embed"
        )
    if missing:
        raise UsageError(
            f"--model {model}: has no trained classification head ({len(missing)} weights "
            f"would be random, e.g. {missing[0]}); pass a fine-tuned classifier or use --embed"
        )


def _local_folder(model: str) -> Path | None:
    """The folder ``model`` names, None for a hub id; UsageError for a path that is no model."""
    expanded = os.path.expanduser(model)
    looks_like_path = (
        os.path.exists(expanded)
        or model.startswith((".", "/", "~"))
        or os.path.isabs(expanded)
        or model.endswith(("/", "\\"))
        or "\\" in model
        or model.count("/") > 1
    )
    if not looks_like_path:
        return None
    path = Path(expanded)
    if not path.exists():
        raise UsageError(
            f"--model {model}: no such folder; pass a folder written by save_pretrained or a "
            "Hugging Face hub id"
        )
    if not path.is_dir():
        raise UsageError(
            f"--model {model}: is a file, not a model folder; pass the folder that holds its "
            "config.json"
        )
    if not (path / "config.json").is_file():
        raise UsageError(
            f"--model {model}: has no config.json, so it is not a transformers model folder; "
            "pass a folder written by save_pretrained"
        )
    return path


def _resolve_hub_revision(model: str, revision: str | None) -> tuple[Any, str | None]:
    """The revision to load with (pinned to one commit when possible) and that commit."""
    try:
        from transformers.utils.hub import resolve_revision
    except ImportError:  # transformers before v5 resolves revisions itself, per file
        return revision, None
    resolved = resolve_revision(model, revision)
    return resolved, getattr(resolved, "resolved", None)


def _cached_commit(model: str, revision: Any) -> str | None:
    """The commit of the cached config.json, for offline loads that could not ask the hub."""
    try:
        from transformers.utils.hub import cached_file, extract_commit_hash

        path = cached_file(model, "config.json", revision=revision, local_files_only=True)
        return extract_commit_hash(path, None)
    except Exception:  # best effort: the revision asked for remains a usable key
        return None


def _float32_kwargs(transformers: Any, torch: Any) -> dict[str, Any]:
    # transformers 4.56 renamed torch_dtype to dtype; v5 defaults to the checkpoint's dtype,
    # which would silently run fp16 checkpoints in fp16.
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    return {key: torch.float32}


@contextlib.contextmanager
def _loading_errors(model: str, *, local: bool) -> Iterator[None]:
    """Turn transformers' loading failures into one-line labelfix errors."""
    try:
        yield
    except ImportError as exc:
        raise WorkError(
            f"--model {model}: loading it needs a package that is not installed "
            f"({one_line(exc)}); install it and retry"
        ) from exc
    except Exception as exc:
        if local:
            raise UsageError(
                f"--model {model}: cannot load a transformers model from this folder "
                f"({one_line(exc)}); pass a folder written by save_pretrained"
            ) from exc
        raise WorkError(
            f"--model {model}: could not be loaded from the Hugging Face hub ({one_line(exc)}); "
            "check the id and the connection, or pass a local folder written by save_pretrained"
        ) from exc


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' and huggingface_hub's logging and progress bars while loading."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hub_bars = not are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if hub_bars:
            enable_progress_bars()


_MALLOC_TUNED = False
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed blocks of up to 1 GiB instead of returning them to the OS.

    A batch's activations (tens of MB) are above glibc's mmap threshold, so by default every
    batch maps fresh pages and the kernel zero-fills each on first touch: on DistilBERT-base
    over 1,000 rows that was 1.7 million page faults and 18% of the wall time, all gone with
    the memory kept. The price is that the process keeps up to that much freed memory until it
    exits, which a scan does soon after. Once per process, Linux with glibc only.

    Returns:
        True when the setting is in force.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and \
            bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    except (OSError, AttributeError):
        return False
    _MALLOC_TUNED = tuned
    return tuned


@contextlib.contextmanager
def _cpu_threads(device: str, threads: int) -> Iterator[None]:
    """Let torch use ``threads`` threads on CPU, then restore its setting."""
    import torch

    if device != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


def _cpu_has_bf16() -> bool:
    import torch

    probes = [
        getattr(torch.cpu, name, None)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    known = [probe for probe in probes if probe is not None]
    # Without the probes (another torch build) assume support rather than warn wrongly.
    return not known or any(probe() for probe in known)


def _pad_batch(
    encoded: Encoded, rows: np.ndarray, *, pad_id: int, left: bool
) -> dict[str, np.ndarray]:
    width = int(encoded.lengths[rows].max())
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64) if encoded.token_type_ids else None
    for slot, row in enumerate(rows):
        n = int(encoded.lengths[row])
        cols = slice(width - n, width) if left else slice(0, n)
        ids[slot, cols] = encoded.input_ids[row]
        mask[slot, cols] = 1
        if types is not None:
            types[slot, cols] = encoded.token_type_ids[row]
    inputs = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        inputs["token_type_ids"] = types
    return inputs


def _report_agreement(
    agreement: float, rows: int, *, precision: str, quantize: str | None, on_event: EventCallback
) -> None:
    setting = "--quantize int8" if quantize else f"--precision {precision}"
    message = f"{setting}: argmax agrees with fp32 on {agreement:.1%} of the first {rows} rows"
    on_event(Event("info", message=message))
    if agreement < AGREEMENT_WARNING_BELOW:
        on_event(
            Event(
                "warning",
                message=f"{message}, below {AGREEMENT_WARNING_BELOW:.0%}; the reduced precision "
                "changes predictions, so prefer --precision fp32",
            )
        )
