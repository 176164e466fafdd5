"""The ``scan --model`` engine against a plain transformers forward pass, on a tiny BERT."""

from __future__ import annotations

import platform
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from labelfix.errors import DataError, UsageError, WorkError
from labelfix.events import Event
from labelfix.models.transformers import (
    ModelProbabilities,
    check_precision,
    in_sample_warning,
    parse_label_map,
    plan_batches,
    predict_probabilities,
    resolve_device,
)
from tests.tiny_model import FIXTURE_TEXTS, LABELS, save_tiny_classifier, save_tiny_encoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Rows from 1 word to far past the tiny model's 128-token limit, in no particular order.
TEXTS = [
    FIXTURE_TEXTS[0],
    "goal",
    " ".join(FIXTURE_TEXTS),
    FIXTURE_TEXTS[6] + " " + FIXTURE_TEXTS[9],
    "",
    FIXTURE_TEXTS[3],
    " ".join(FIXTURE_TEXTS * 3),
    "shares",
    FIXTURE_TEXTS[10],
    FIXTURE_TEXTS[11] + " " + FIXTURE_TEXTS[2] + " " + FIXTURE_TEXTS[5],
]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("models") / "tiny-classifier")


def plain_probabilities(folder: Path, texts: list[str], pairs: list[str] | None = None):
    """Row-by-row softmax from the model loaded the ordinary way: the reference."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        folder, dtype=torch.float32
    ).eval()
    rows = []
    with torch.no_grad():
        for i, text in enumerate(texts):
            second = pairs[i] if pairs is not None else None
            inputs = tokenizer(text, second, truncation=True, max_length=128, return_tensors="pt")
            rows.append(model(**inputs).logits.softmax(-1)[0].numpy())
    return np.stack(rows)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_probabilities_equal_a_plain_forward_pass_in_input_order(
    classifier_dir: Path, batch_size: int | None
) -> None:
    events: list[Event] = []
    result = predict_probabilities(
        TEXTS,
        None,
        model=str(classifier_dir),
        label_names=list(LABELS),
        batch_size=batch_size,
        device="cpu",
        on_event=events.append,
    )
    assert isinstance(result, ModelProbabilities)
    assert result.probs.shape == (len(TEXTS), len(LABELS))
    assert result.probs.dtype == np.float32
    expected = plain_probabilities(classifier_dir, TEXTS)
    assert np.abs(result.probs - expected).max() < 1e-5
    # The rows differ, so a row put back in the wrong place would not go unnoticed.
    assert len({int(row.argmax()) for row in expected}) > 1
    assert np.allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert result.agreement is None
    assert result.model == str(classifier_dir) and result.revision is None
    scored = [e for e in events if e.task == "Scoring rows"]
    assert scored[0].kind == "begin" and scored[0].total == len(TEXTS)
    assert sum(e.amount for e in scored if e.kind == "advance") == len(TEXTS)
    assert scored[-1].kind == "end"


def test_batches_are_length_sorted_and_fit_the_token_budget() -> None:
    lengths = np.array([5, 40, 7, 40, 3, 12, 9, 1])
    batches = plan_batches(lengths, batch_size=None, token_budget=80)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for rows in batches:
        assert len(rows) * lengths[rows].max() <= 80 or len(rows) == 1
    assert lengths[batches[0]].tolist() == [40, 40]
    same = plan_batches(np.array([3, 3, 2, 3]), batch_size=8, token_budget=0, same_length=True)
    assert [sorted(b.tolist()) for b in same] == [[0, 1, 3], [2]]


def test_sentence_pairs(classifier_dir: Path) -> None:
    # A single-row tokenizer call drops an empty second text, a batched one keeps its [SEP]:
    # the reference must not meet that quirk.
    pairs = [text[::-1] or "nothing" for text in TEXTS]
    result = predict_probabilities(
        TEXTS, pairs, model=str(classifier_dir), label_names=list(LABELS), device="cpu"
    )
    expected = plain_probabilities(classifier_dir, TEXTS, pairs)
    assert np.abs(result.probs - expected).max() < 1e-5
    alone = predict_probabilities(
        TEXTS, None, model=str(classifier_dir), label_names=list(LABELS), device="cpu"
    )
    assert np.abs(alone.probs - result.probs).max() > 1e-3


def test_columns_follow_the_dataset_label_order_exact_and_case_insensitive(
    classifier_dir: Path,
) -> None:
    base = predict_probabilities(
        TEXTS, None, model=str(classifier_dir), label_names=list(LABELS), device="cpu"
    ).probs
    order = [2, 0, 3, 1]
    shuffled = predict_probabilities(
        TEXTS,
        None,
        model=str(classifier_dir),
        label_names=[LABELS[i] for i in order],
        device="cpu",
    )
    np.testing.assert_array_equal(shuffled.probs, base[:, order])
    folded = predict_probabilities(
        TEXTS,
        None,
        model=str(classifier_dir),
        label_names=[LABELS[i].upper() for i in order],
        device="cpu",
    )
    np.testing.assert_array_equal(folded.probs, base[:, order])
    # The column mapping is part of the cache key.
    assert shuffled.source_key.endswith("labels=1,3,0,2")
    assert folded.source_key == shuffled.source_key


def test_label_map_renames_and_merges(tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path / "anon", labels=["LABEL_0", "LABEL_1", "b", "c"])
    names = ["World", "Sports", "Business", "Sci/Tech"]
    mapped = predict_probabilities(
        TEXTS,
        None,
        model=str(folder),
        label_names=names,
        label_map=parse_label_map("LABEL_0=World, LABEL_1=Sports,b=Business,c=sci/tech"),
        device="cpu",
    )
    expected = plain_probabilities(folder, TEXTS)
    assert np.abs(mapped.probs - expected).max() < 1e-5
    # Only the names that differ need mapping; two model labels may feed one dataset label.
    merged = predict_probabilities(
        TEXTS,
        None,
        model=str(folder),
        label_names=["World", "b", "c"],
        label_map={"LABEL_0": "World", "LABEL_1": "World"},
        device="cpu",
    )
    assert merged.probs.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(merged.probs[:, 0], expected[:, 0] + expected[:, 1], atol=1e-5)
    np.testing.assert_allclose(merged.probs[:, 1:], expected[:, 2:], atol=1e-5)


def test_label_names_that_differ_list_both_sides(classifier_dir: Path) -> None:
    with pytest.raises(UsageError) as caught:
        predict_probabilities(
            TEXTS,
            None,
            model=str(classifier_dir),
            label_names=["politics", "sport", "money", "science"],
            device="cpu",
        )
    message = str(caught.value)
    assert "[World, Sports, Business, Sci/Tech]" in message
    assert "[politics, sport, money, science]" in message
    assert "--label-map" in message and "\n" not in message


def test_a_different_number_of_labels_needs_a_map(classifier_dir: Path) -> None:
    with pytest.raises(UsageError, match=r"4 labels .* but the dataset has 2 .*--label-map"):
        predict_probabilities(
            TEXTS, None, model=str(classifier_dir), label_names=["World", "Sports"], device="cpu"
        )
    with pytest.raises(UsageError, match="not a label of the model"):
        predict_probabilities(
            TEXTS,
            None,
            model=str(classifier_dir),
            label_names=list(LABELS),
            label_map={"nope": "World"},
            device="cpu",
        )
    with pytest.raises(UsageError, match=r"no model label maps onto dataset labels \[Extra\]"):
        predict_probabilities(
            TEXTS,
            None,
            model=str(classifier_dir),
            label_names=[*LABELS, "Extra"],
            label_map={"World": "World"},
            device="cpu",
        )


@pytest.mark.parametrize("kind", ["missing", "file", "no-config", "garbage"])
def test_a_path_that_is_not_a_model_is_a_usage_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "not-a-model"
    if kind == "file":
        path.write_text("hello")
    elif kind == "no-config":
        path.mkdir()
        (path / "weights.bin").write_bytes(b"\0" * 16)
    elif kind == "garbage":
        path.mkdir()
        (path / "config.json").write_text("{ this is not json")
    with pytest.raises(UsageError) as caught:
        predict_probabilities(["a"], None, model=str(path), label_names=["x", "y"], device="cpu")
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_model_without_a_trained_head_is_refused(tmp_path: Path) -> None:
    folder = save_tiny_encoder(tmp_path / "encoder")
    with pytest.raises(UsageError, match="no trained classification head.*--embed"):
        predict_probabilities(
            ["a"], None, model=str(folder), label_names=["LABEL_0", "LABEL_1"], device="cpu"
        )


def test_a_hub_id_that_cannot_be_downloaded_is_a_work_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    # Offline mode makes the hub client fail at once, without any network traffic.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WorkError, match="could not be loaded.*local folder") as caught:
        predict_probabilities(
            ["a"],
            None,
            model="labelfix-tests/no-such-model",
            label_names=["x", "y"],
            device="cpu",
        )
    assert caught.value.exit_code == 1


def test_cuda_without_a_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError) as caught:
        resolve_device("cuda")
    assert str(caught.value) == (
        "--device cuda: no CUDA device is available here; use --device cpu or auto"
    )
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("tpu")


def test_precision_and_quantization_combinations() -> None:
    with pytest.raises(UsageError, match="fp16 is only fast on CUDA"):
        check_precision("cpu", "fp16")
    with pytest.raises(UsageError, match="CPU only"):
        check_precision("cuda", "fp32", quantize="int8")
    with pytest.raises(UsageError, match="drop one of the two"):
        check_precision("cpu", "bf16", quantize="int8")
    with pytest.raises(UsageError, match="unknown"):
        check_precision("cpu", "fp8")


def test_bf16_runs_and_reports_agreement(classifier_dir: Path) -> None:
    events: list[Event] = []
    reference = predict_probabilities(
        TEXTS, None, model=str(classifier_dir), label_names=list(LABELS), device="cpu"
    )
    result = predict_probabilities(
        TEXTS,
        None,
        model=str(classifier_dir),
        label_names=list(LABELS),
        device="cpu",
        precision="bf16",
        check_agreement=6,
        on_event=events.append,
    )
    assert result.agreement is not None and 0.0 <= result.agreement <= 1.0
    expected = np.mean(reference.probs[:6].argmax(1) == result.probs[:6].argmax(1))
    assert result.agreement == pytest.approx(expected)
    assert result.probs.dtype == np.float32
    assert np.allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(result.probs - reference.probs).max() < 0.1
    assert any(e.kind == "info" and "agrees with fp32" in e.message for e in events)
    assert any(e.task == "Checking fp32 agreement" and e.total == 6 for e in events)
    assert result.source_key != reference.source_key


def test_int8_runs_and_reports_agreement(classifier_dir: Path) -> None:
    result = predict_probabilities(
        TEXTS,
        None,
        model=str(classifier_dir),
        label_names=list(LABELS),
        device="cpu",
        quantize="int8",
        check_agreement=100,
    )
    assert result.agreement is not None and 0.0 <= result.agreement <= 1.0
    assert result.probs.shape == (len(TEXTS), len(LABELS))
    assert np.allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert "quantize=int8" in result.source_key


def test_source_key_is_stable_and_tracks_the_weights(tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path / "m")

    def key(**options) -> str:
        return predict_probabilities(
            ["a b"], None, model=str(folder), label_names=list(LABELS), device="cpu", **options
        ).source_key

    first = key()
    assert key() == first
    assert key(max_length=16) != first
    assert key(max_length=128) == first  # the model's own limit, spelled out
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes())
    assert key() != first


def test_options_and_data_are_checked(classifier_dir: Path) -> None:
    model = str(classifier_dir)
    with pytest.raises(UsageError, match="at most 128 tokens"):
        predict_probabilities(["a"], None, model=model, label_names=LABELS, max_length=4096)
    with pytest.raises(UsageError, match="--batch-size 0"):
        predict_probabilities(["a"], None, model=model, label_names=LABELS, batch_size=0)
    with pytest.raises(DataError, match="row 1: the text is NoneType"):
        predict_probabilities(["a", None], None, model=model, label_names=LABELS)  # type: ignore[list-item]
    with pytest.raises(DataError, match="1 pair texts for 2 texts"):
        predict_probabilities(["a", "b"], ["c"], model=model, label_names=LABELS)
    empty = predict_probabilities([], None, model=model, label_names=LABELS, device="cpu")
    assert empty.probs.shape == (0, len(LABELS))


def test_revision_is_ignored_for_a_local_folder(classifier_dir: Path) -> None:
    events: list[Event] = []
    predict_probabilities(
        ["a"],
        None,
        model=str(classifier_dir),
        label_names=LABELS,
        revision="main",
        device="cpu",
        on_event=events.append,
    )
    assert any(e.kind == "warning" and "--revision main" in e.message for e in events)


def test_parse_label_map() -> None:
    assert parse_label_map("a=World, b = Sports") == {"a": "World", "b": "Sports"}
    for bad in ["a", "a=", "=b", "a=b,,c=d", "a=b=c"]:
        with pytest.raises(UsageError, match="MODEL=DATASET"):
            parse_label_map(bad)
    with pytest.raises(UsageError, match="mapped twice"):
        parse_label_map("a=x,a=y")


def test_in_sample_warning() -> None:
    assert in_sample_warning(0.995) == (
        "held-out accuracy 0.995 > 0.99: the model was probably trained on this split; "
        "in-sample probabilities hide label errors — use --embed or scan a held-out split"
    )
    assert in_sample_warning(0.99) is None
    assert in_sample_warning(0.7) is None


def test_importing_the_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, labelfix.models.transformers, labelfix.models.embed; "
        "print(any(m in sys.modules for m in ('torch', 'transformers', 'sklearn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_folder_under_home_is_found(
    classifier_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(classifier_dir.parent))
    result = predict_probabilities(
        ["a"], None, model=f"~/{classifier_dir.name}", label_names=LABELS, device="cpu"
    )
    assert result.probs.shape == (1, len(LABELS))
    assert result.model == f"~/{classifier_dir.name}"


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)
def test_batches_reuse_freed_memory_instead_of_faulting_in_fresh_pages() -> None:
    # In a child process, so that this one keeps glibc's defaults. A 64 MiB tensor per
    # "batch", as a batch's activations are: by default each is mapped and zero-filled anew.
    script = textwrap.dedent("""
        import resource, torch
        from labelfix.models.transformers import keep_freed_memory

        def steady_state_faults():
            counts = []
            for _ in range(30):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                activations = torch.ones(16 << 20)
                del activations
                counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            # glibc takes a few rounds to settle where the heap grows; the last 10 tell.
            return sum(counts[-10:])

        default = steady_state_faults()
        print(default, keep_freed_memory(), steady_state_faults())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    default, tuned, kept = int(out[0]), out[1], int(out[2])
    assert tuned == "True"
    pages = (64 << 20) // resource.getpagesize()
    assert default > 10 * pages // 2  # every batch faulted its pages in anew
    assert kept < pages // 4  # the batches reused memory already faulted in
