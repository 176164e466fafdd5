"""The inference engine on a Ray actor pool: ``scan --model/--embed ... --engine ray``.

Rows travel through Ray Data as blocks of ``(index, text[, pair])``; ``map_batches`` hands each
block to one of a pool of actors, each of which loads the model once and scores its blocks with
the local engine's own functions (``tokenize``, ``run_engine``, the same forward and label
mapping). The driver tokenizes once for the lengths and cuts the blocks along the local engine's
own length-sorted batches, so every row is computed in the same batch, padded to the same width,
as in a local scan: the probabilities agree to float noise and near-ties rank the same. The
results stream back with their row indices into a preallocated matrix in the original order.

Ray is an optional extra (``pip install 'labelfix[ray]'``) and is imported inside the functions.
Nothing here prints: progress goes through ``on_event``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from labelfix.errors import LabelfixError, UsageError, WorkError
from labelfix.events import EventCallback, Task, ignore

if TYPE_CHECKING:
    from labelfix.models.inference import InferenceOptions

INSTALL_HINT = "pip install 'labelfix[ray]'"
# Blocks per actor: enough that a slow block (long texts) does not leave the others idle at the
# end, few enough that each block still fills the engine's token-budget batches.
BLOCKS_PER_WORKER = 4
MAX_BLOCK_ROWS = 4096
# Without --num-workers, CPU actors get this many cores each: fewer, larger actors load the
# model fewer times and keep torch's matrix products efficient.
DEFAULT_CPUS_PER_WORKER = 4


def check_options(options: InferenceOptions) -> None:
    """Refuse Ray settings that cannot run, before anything is loaded or written.

    Raises:
        UsageError: Ray is not installed, a bad --num-workers or --num-gpus-per-worker, a
            --device that contradicts --num-gpus-per-worker, or --check-agreement (local only).
    """
    engine = options.engine
    engine.check()
    _import_ray()
    gpus = engine.num_gpus_per_worker
    if options.device == "cuda" and gpus == 0:
        raise UsageError("--device cuda with --engine ray: give the workers GPUs with "
                         "--num-gpus-per-worker 1 (or a fraction to share one)")
    if options.device == "cpu" and gpus > 0:
        raise UsageError(f"--device cpu with --num-gpus-per-worker {gpus}: drop one of the two")
    if options.check_agreement:
        raise UsageError("--check-agreement runs with --engine local only; drop it or run the "
                         "check locally")
    from labelfix.models import transformers as local

    device = "cuda" if gpus > 0 else "cpu"
    if options.quantize is not None and options.quantize not in local.QUANTIZATIONS:
        raise UsageError(f"--quantize {options.quantize}: unknown; use --quantize int8 or "
                         "leave it out")
    if device == "cpu":
        local.check_precision(device, options.precision, quantize=options.quantize)
    elif options.precision not in local.PRECISIONS:
        raise UsageError(f"--precision {options.precision}: unknown; use one of "
                         f"{', '.join(local.PRECISIONS)}")


def classifier_probabilities(texts: Sequence[str], pairs: Sequence[str] | None,
                             options: InferenceOptions, label_names: Sequence[str], *,
                             on_event: EventCallback = ignore) -> np.ndarray:
    """The classifier's probabilities of every row, computed by a Ray actor pool.

    Args:
        texts: N texts; pairs: N second texts or None.
        label_names: the dataset's K labels; the columns follow this order.

    Returns:
        ``(N, K) float32`` in row order, rows summing to 1: the local engine's values.

    Raises:
        UsageError: bad options or Ray missing (before Ray starts).
        DataError: a text that is not a string.
        WorkError: Ray cannot start or reach ``--ray-address``, or a worker failed.
    """
    names = [str(name) for name in label_names]
    return _score(texts, pairs, options, task="classifier", label_names=names,
                  width=len(names), title="Scoring rows", on_event=on_event)


def embeddings(texts: Sequence[str], pairs: Sequence[str] | None, options: InferenceOptions,
               *, on_event: EventCallback = ignore) -> np.ndarray:
    """The encoder's embeddings of every row, computed by a Ray actor pool.

    Returns:
        ``(N, D) float32`` L2-normalised mean-pooled vectors in row order.

    Raises:
        UsageError, DataError, WorkError: as :func:`classifier_probabilities`.
    """
    return _score(texts, pairs, options, task="encoder", label_names=None, width=None,
                  title="Embedding rows", on_event=on_event)


class Scorer:
    """A Ray Data actor: loads the model once, then scores blocks of rows.

    ``__call__`` takes ``{"index": (b,) int64, "text": (b,) str[, "pair": (b,) str]}`` and
    returns ``{"index": (b,) int64, "values": (b, D) float32}`` (D = K dataset labels for a
    classifier, the hidden size for an encoder).
    """

    def __init__(self, *, model: str, revision: str | None, task: str,
                 label_names: list[str] | None, label_map: Mapping[str, str] | None,
                 max_length: int | None, batch_size: int | None, device: str, precision: str,
                 quantize: str | None, threads: int) -> None:
        import torch

        from labelfix.models import embed
        from labelfix.models import transformers as local

        if device == "cpu":
            # Actors sharing a node must keep to their own share of its cores, or they
            # oversubscribe it several times over (run_engine would take every core).
            torch.set_num_threads(threads)
        self._threads = threads
        loaded = local.load_model(model, revision=revision, task=task)
        net = loaded.model
        if task == "encoder" and getattr(loaded.config, "is_encoder_decoder", False):
            net = net.get_encoder()
        self._length = local.resolve_max_length(loaded.tokenizer, loaded.config, max_length)
        self._columns: list[int] | None = None
        self._width = 0
        if task == "classifier" and label_names is not None:
            self._columns = local._label_columns(local._model_labels(loaded.config),
                                                 label_names, label_map or None)
            self._width = len(label_names)
        self._net = local.reduce_precision(net.to(device), device=device, precision=precision,
                                           quantize=quantize)
        self._forward = local.classifier_forward if task == "classifier" \
            else embed.mean_pool_forward
        self._tokenizer = loaded.tokenizer
        self._device, self._precision, self._batch_size = device, precision, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from labelfix.models import transformers as local

        texts = [str(t) for t in batch["text"]]
        pairs = [str(t) for t in batch["pair"]] if "pair" in batch else None
        encoded = local.tokenize(self._tokenizer, self._net, texts, pairs,
                                 max_length=self._length)
        values = local.run_engine(self._net, encoded, self._forward, tokenizer=self._tokenizer,
                                  device=self._device, precision=self._precision,
                                  batch_size=self._batch_size, task="Scoring rows",
                                  threads=self._threads)
        if self._columns is not None:
            # Summed in the same order as the local engine, so the floats are the same.
            mapped = np.zeros((values.shape[0], self._width), dtype=np.float32)
            for model_index, data_index in enumerate(self._columns):
                mapped[:, data_index] += values[:, model_index]
            values = mapped
        return {"index": np.asarray(batch["index"], dtype=np.int64), "values": values}


def _score(texts: Sequence[str], pairs: Sequence[str] | None, options: InferenceOptions, *,
           task: str, label_names: list[str] | None, width: int | None, title: str,
           on_event: EventCallback) -> np.ndarray:
    from labelfix.models import transformers as local

    check_options(options)
    rows, second = local.check_texts(texts, pairs)
    n = len(rows)
    if n == 0:
        return np.zeros((0, width or 0), dtype=np.float32)
    engine = options.engine
    gpus = engine.num_gpus_per_worker
    device = "cuda" if gpus > 0 else "cpu"
    with _ray_session(engine.address) as ray, _quiet_ray_data(ray):
        workers, cpus = _pool_size(ray, num_workers=engine.num_workers, gpus=gpus)
        order = _block_rows(rows, second, options, device=device, workers=workers,
                            on_event=on_event)
        blocks = _blocks(rows, second, order)
        # Few rows make fewer blocks than workers: an actor without a block would only load
        # the model for nothing.
        workers = min(workers, len(blocks))
        dataset = ray.data.from_arrow(blocks)
        with warnings.catch_warnings():
            # max_restarts=0 is the way Ray Data's own code names to turn restarts off, though
            # the keyword is deprecated for Ray 2.64; restarts would also make the driver log
            # a warning about actors whose arguments live in the object store.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            scored = dataset.map_batches(
                Scorer,
                fn_constructor_kwargs={
                    "model": options.model, "revision": options.revision, "task": task,
                    "label_names": label_names, "label_map": dict(options.label_map) or None,
                    "max_length": options.max_length, "batch_size": options.batch_size,
                    "device": device, "precision": options.precision,
                    "quantize": options.quantize, "threads": max(1, int(cpus)),
                },
                # One block is one call: blocks are already sized to spread over the pool.
                batch_size=None, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=cpus, num_gpus=gpus or None,
                # A worker that dies fails the scan (run it again) instead of restarting.
                max_restarts=0,
            )
        out: np.ndarray | None = None
        seen = 0
        label = f"{title} (Ray, {workers} worker{'s' if workers > 1 else ''})"
        with _worker_errors(ray), Task(on_event, label, total=n) as progress:
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
                index = np.asarray(batch["index"], dtype=np.int64)
                values = np.asarray(batch["values"], dtype=np.float32)
                if out is None:
                    out = np.empty((n, values.shape[1]), dtype=np.float32)
                out[index] = values
                seen += len(index)
                progress.advance(len(index))
    if out is None or seen != n:
        raise WorkError(f"the Ray workers returned {seen} of {n} rows; run the scan again")
    return out


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 -- Ray without the data extra lacks it
    except ImportError as exc:
        raise UsageError(
            f"--engine ray needs Ray Data, which is not installed ({exc.name or exc}); "
            f"{INSTALL_HINT}") from exc
    return ray


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[Any]:
    """Ray, connected: an already running session as is, else one started here (local and
    sized to this machine without ``address``) and shut down afterwards."""
    import logging

    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    from labelfix.models.transformers import cpu_cores, one_line

    settings: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                "logging_level": logging.ERROR}
    if address is None:
        settings["num_cpus"] = cpu_cores()
    try:
        ray.init(address=address, **settings)
    except Exception as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise WorkError(f"cannot start {where} ({one_line(exc)}); check --ray-address and "
                        "that the cluster runs the same Ray version") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """No Ray Data progress bars or execution banners: the CLI shows its own progress."""
    import logging

    logger = logging.getLogger("ray.data")
    level = logger.level
    # Ray Data warns that progress bars are off, and logs each execution at INFO.
    logger.setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    saved = {name: getattr(context, name) for name in (
        "enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start",
        "enable_auto_log_stats") if hasattr(context, name)}
    for name in saved:
        setattr(context, name, False)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        logger.setLevel(level)


def _pool_size(ray: Any, *, num_workers: int | None, gpus: float) -> tuple[int, float]:
    """Actors and CPUs per actor: the cluster's CPUs shared evenly (fractions allowed, so more
    workers than CPUs still start), one CPU per GPU actor for its tokenizing.

    Raises:
        UsageError: GPUs asked for on a cluster without enough of them.
    """
    resources = ray.cluster_resources()
    total_cpus = float(resources.get("CPU", 1.0)) or 1.0
    total_gpus = float(resources.get("GPU", 0.0))
    if gpus > 0:
        if total_gpus < gpus:
            raise UsageError(f"--num-gpus-per-worker {gpus}: the Ray cluster has "
                             f"{total_gpus:g} GPU(s); lower it or use --num-gpus-per-worker 0")
        workers = num_workers or max(1, int(total_gpus // gpus))
        if workers * gpus > total_gpus:
            raise UsageError(f"--num-workers {workers} x --num-gpus-per-worker {gpus} needs "
                             f"{workers * gpus:g} GPUs; the cluster has {total_gpus:g}")
        return workers, min(1.0, total_cpus / workers)
    workers = num_workers or max(1, int(total_cpus // DEFAULT_CPUS_PER_WORKER))
    return workers, total_cpus / workers


def _block_rows(texts: list[str], pairs: list[str] | None, options: InferenceOptions, *,
                device: str, workers: int, on_event: EventCallback) -> list[np.ndarray]:
    """Row indices of each block: whole batches of the local engine's plan, in its order
    (longest first), about BLOCKS_PER_WORKER blocks per worker.

    Within a block the rows stay in that order, so the actor's ``run_engine`` plans exactly
    these batches again; a row's batch mates and padded width, and hence its floats, are those
    of a local scan.
    """
    from labelfix.models import transformers as local

    reference = local.open_model(options.model, revision=options.revision)
    length = local.resolve_max_length(reference.tokenizer, reference.config, options.max_length)
    tokenizer = reference.tokenizer
    lengths = np.empty(len(texts), dtype=np.int64)
    with Task(on_event, "Tokenizing", total=len(texts)) as progress:
        for start in range(0, len(texts), local.TOKENIZE_CHUNK):
            stop = min(start + local.TOKENIZE_CHUNK, len(texts))
            try:
                ids = tokenizer(texts[start:stop],
                                pairs[start:stop] if pairs is not None else None,
                                truncation=True, max_length=length, padding=False,
                                return_attention_mask=False,
                                return_token_type_ids=False)["input_ids"]
            except Exception as exc:
                raise UsageError(f"cannot tokenize rows {start}-{stop - 1} "
                                 f"({local.one_line(exc)}); try a larger --max-length") from exc
            lengths[start:stop] = [len(row) for row in ids]
            progress.advance(stop - start)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = getattr(reference.config, "pad_token_id", None)
    budget = local.CUDA_TOKEN_BUDGET if device == "cuda" else local.CPU_TOKEN_BUDGET
    batches = local.plan_batches(lengths, batch_size=options.batch_size, token_budget=budget,
                                 same_length=pad_id is None)
    target = max(1, min(MAX_BLOCK_ROWS, math.ceil(len(texts) / (workers * BLOCKS_PER_WORKER))))
    blocks: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += len(batch)
        if count >= target:
            blocks.append(np.concatenate(pending))
            pending, count = [], 0
    if pending:
        blocks.append(np.concatenate(pending))
    return blocks


def _blocks(texts: list[str], pairs: list[str] | None, order: list[np.ndarray]) -> list[Any]:
    """One Arrow table of ``(index, text[, pair])`` per block, so that Ray Data hands each
    block to one actor call."""
    import pyarrow as pa

    text_column = pa.array(texts, type=pa.large_string())
    pair_column = pa.array(pairs, type=pa.large_string()) if pairs is not None else None
    tables = []
    for rows in order:
        take = pa.array(rows, type=pa.int64())
        columns: dict[str, Any] = {"index": take, "text": text_column.take(take)}
        if pair_column is not None:
            columns["pair"] = pair_column.take(take)
        tables.append(pa.table(columns))
    return tables


@contextlib.contextmanager
def _worker_errors(ray: Any) -> Iterator[None]:
    """A labelfix error raised in an actor surfaces as itself; anything else as WorkError."""
    try:
        yield
    except LabelfixError:
        raise
    except Exception as exc:
        from labelfix.models.transformers import one_line

        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, LabelfixError):
                raise type(cause)(str(cause)) from exc
            inner = getattr(cause, "cause", None)
            cause = inner if isinstance(inner, BaseException) else cause.__cause__
        raise WorkError(f"the Ray workers failed ({one_line(exc)}); see the Ray logs") from exc
