"""`scan --engine ray`: the same probabilities and candidates as a local scan, on a local Ray.

Ray starts once for the module (about 8 s, and each scan starts its actors), so the Ray tests
are few and each compares a whole scan.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from labelfix.cli import app
from tests.conftest import db_exists_with_data, make_synthetic
from tests.tiny_model import save_tiny_classifier, save_tiny_encoder

CLASSES = ("Business", "SciTech", "Sports", "World")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ray_models")
    texts = make_synthetic(120).texts
    return {"classifier": save_tiny_classifier(base / "classifier", labels=CLASSES,
                                               texts=texts),
            "encoder": save_tiny_encoder(base / "encoder", texts=texts)}


@pytest.fixture()
def small_csv(tmp_path: Path) -> Path:
    return make_synthetic(150).write(tmp_path / "small.csv")


def scan(db: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--db", str(db), "scan", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def stored(db: Path) -> dict[str, object]:
    """The first audit's candidates (row, rank, suggested) and parameters, and every stored
    matrix by its key."""
    from labelfix.store import Store, resolve_url
    from labelfix.store import probabilities as probability_store
    from labelfix.store.models import ProbabilitySet

    with sqlite3.connect(db) as connection:
        candidates = connection.execute(
            "select row, rank, suggested_label from candidates where audit_id = 1 order by rank"
        ).fetchall()
        parameters = json.loads(connection.execute(
            "select parameters from audits where id = 1").fetchone()[0])
    with Store(resolve_url(db)).session() as session:
        matrices = {s.source_key: probability_store.load(session, s)
                    for s in session.query(ProbabilitySet).all()}
    return {"candidates": candidates, "parameters": parameters, "matrices": matrices}


def test_ray_scan_equals_the_local_scan_and_its_probabilities_are_reused_locally(
    local_ray: None, tmp_path: Path, small_csv: Path, models: dict[str, Path]
) -> None:
    model = str(models["classifier"])
    code, _, err = scan(tmp_path / "local.db", str(small_csv), "--model", model)
    assert code == 0, err
    code, out, err = scan(tmp_path / "ray.db", str(small_csv), "--model", model,
                          "--engine", "ray", "--num-workers", "2", "--batch-size", "16")
    assert code == 0, err
    assert "Candidates:" in out and err.strip() in ("", f"Loading model {model}")
    local, ray = stored(tmp_path / "local.db"), stored(tmp_path / "ray.db")
    # --batch-size only changes how rows are batched, not the key.
    assert local["matrices"].keys() == ray["matrices"].keys()
    (key,) = local["matrices"]
    np.testing.assert_allclose(ray["matrices"][key], local["matrices"][key], atol=1e-5)
    assert ray["candidates"] == local["candidates"] and len(local["candidates"]) > 0
    assert ray["parameters"]["engine"] == "ray" and ray["parameters"]["num_workers"] == 2
    assert "engine" not in local["parameters"]
    code, _, err = scan(tmp_path / "ray.db", str(small_csv), "--model", model)
    assert code == 0 and "Reusing the probabilities" in err


def test_ray_embed_equals_the_local_embed(
    local_ray: None, tmp_path: Path, small_csv: Path, models: dict[str, Path]
) -> None:
    encoder = str(models["encoder"])
    # Batches of 16 rows make several blocks, so both workers score some.
    args = (str(small_csv), "--embed", encoder, "--folds", "3", "--batch-size", "16")
    code, _, err = scan(tmp_path / "local.db", *args)
    assert code == 0, err
    code, _, err = scan(tmp_path / "ray.db", *args, "--engine", "ray", "--num-workers", "2")
    assert code == 0, err
    local, ray = stored(tmp_path / "local.db"), stored(tmp_path / "ray.db")
    assert local["matrices"].keys() == ray["matrices"].keys()
    for key, matrix in local["matrices"].items():
        np.testing.assert_allclose(ray["matrices"][key], matrix, atol=1e-5, err_msg=key)
    assert any(k.startswith("embeddings|") for k in local["matrices"])
    assert ray["candidates"] == local["candidates"] and len(local["candidates"]) > 0


@pytest.mark.parametrize("args, message", [
    (["--engine", "ray"], "--engine ray runs a model: add --model or --embed"),
    (["--model", "{model}", "--engine", "ray", "--num-workers", "0"],
     "--num-workers 0: must be at least 1"),
    (["--model", "{model}", "--num-workers", "2"], "--num-workers: Ray options; add --engine ray"),
    (["--model", "{model}", "--engine", "ray", "--num-gpus-per-worker", "-1"],
     "--num-gpus-per-worker -1.0: must be 0"),
    (["--model", "{model}", "--engine", "ray", "--device", "cuda"], "--num-gpus-per-worker 1"),
    (["--model", "{model}", "--engine", "spark"], "--engine spark: unknown"),
])
def test_bad_engine_options_are_one_line_exit_2_and_write_nothing(
    tmp_path: Path, small_csv: Path, models: dict[str, Path], args: list[str], message: str
) -> None:
    db = tmp_path / "bad.db"
    filled = [a.format(model=models["classifier"]) for a in args]
    code, _, err = scan(db, str(small_csv), *filled)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not db_exists_with_data(db)


def test_missing_ray_names_the_extra(tmp_path: Path, small_csv: Path, models: dict[str, Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import ray` raise ImportError, as when it is not installed.
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    db = tmp_path / "noray.db"
    code, _, err = scan(db, str(small_csv), "--model", str(models["classifier"]),
                        "--engine", "ray")
    assert code == 2
    assert "pip install 'labelfix[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not db_exists_with_data(db)


class FakeCluster:
    """What _pool_size asks of ray: the cluster's resources."""

    def __init__(self, **resources: float) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


@pytest.mark.parametrize("resources, workers, gpus, expected", [
    ({"CPU": 8.0}, None, 0.0, (2, 4.0)),
    ({"CPU": 2.0}, None, 0.0, (1, 2.0)),
    ({"CPU": 2.0}, 4, 0.0, (4, 0.5)),
    ({"CPU": 16.0, "GPU": 2.0}, None, 1.0, (2, 1.0)),
    ({"CPU": 16.0, "GPU": 1.0}, 2, 0.5, (2, 1.0)),
])
def test_pool_size_shares_the_cluster(resources: dict[str, float], workers: int | None,
                                      gpus: float, expected: tuple[int, float]) -> None:
    from labelfix.models.ray_engine import _pool_size

    assert _pool_size(FakeCluster(**resources), num_workers=workers, gpus=gpus) == expected


@pytest.mark.parametrize("resources, workers, gpus, message", [
    ({"CPU": 8.0}, None, 1.0, "the Ray cluster has 0 GPU(s)"),
    ({"CPU": 8.0, "GPU": 1.0}, 2, 1.0, "needs 2 GPUs; the cluster has 1"),
])
def test_gpus_the_cluster_lacks_are_a_usage_error(resources: dict[str, float],
                                                  workers: int | None, gpus: float,
                                                  message: str) -> None:
    from labelfix.errors import UsageError
    from labelfix.models.ray_engine import _pool_size

    with pytest.raises(UsageError, match=re.escape(message)):
        _pool_size(FakeCluster(**resources), num_workers=workers, gpus=gpus)


def test_worker_errors_surface_as_labelfix_errors() -> None:
    from labelfix.errors import UsageError, WorkError
    from labelfix.models.ray_engine import _worker_errors

    class Wrapped(Exception):  # as Ray wraps an actor's exception: the original in .cause
        def __init__(self, cause: BaseException) -> None:
            super().__init__(f"task failed: {cause}")
            self.cause = cause

    with pytest.raises(UsageError, match="^--model m: bad$"), _worker_errors(None):
        raise RuntimeError("execution failed") from Wrapped(UsageError("--model m: bad"))
    with pytest.raises(WorkError, match="the Ray workers failed"), _worker_errors(None):
        raise Wrapped(MemoryError("out of memory"))
