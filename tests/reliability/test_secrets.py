"""API keys never reach output, logs, tracebacks or the database; the database is private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.servers.argilla import ArgillaServer
from tests.servers.rubrix import RubrixServer

KEYS = {
    "RUBRIX_API_KEY": "rubrix-SECRET-4f1c9e",
    "ARGILLA_API_KEY": "argilla-SECRET-77ab02",
    "LABEL_STUDIO_API_KEY": "studio-SECRET-a9d3e1",
    "HF_TOKEN": "hf_SECRET0b5e2c9d",
}


@pytest.fixture()
def servers(monkeypatch: pytest.MonkeyPatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LABELFIX_HTTP_BACKOFF", "0")
    monkeypatch.setenv("LABELFIX_HTTP_ATTEMPTS", "2")
    monkeypatch.setenv("LABELFIX_DEBUG", "1")  # tracebacks on, if any were printed
    with RubrixServer(api_key=KEYS["RUBRIX_API_KEY"], workspaces=("rubrix",)) as rubrix, \
            ArgillaServer(api_key=KEYS["ARGILLA_API_KEY"], workspaces=("argilla",)) as argilla:
        monkeypatch.setenv("RUBRIX_API_URL", rubrix.url)
        monkeypatch.setenv("ARGILLA_API_URL", argilla.url)
        yield rubrix, argilla


def _assert_clean(texts: list[str]) -> None:
    for text in texts:
        for name, value in KEYS.items():
            assert value not in text, f"{name} leaked: {text[:300]}"


def test_no_key_in_any_output_with_verbose_and_failing_servers(run, servers, db: Path,
                                                               csv_dataset: Path,
                                                               probs_npy: Path,
                                                               tmp_path: Path) -> None:
    rubrix, argilla = servers
    outputs: list[str] = []

    def record(*args: str, input: str | None = None) -> int:
        result = run("--verbose", *args, input=input)
        outputs.extend([result.stdout, result.stderr])
        return result.exit_code

    assert record("scan", str(csv_dataset), "--probs", str(probs_npy)) == 0
    assert record("sync", "--backend", "rubrix") == 0
    assert record("sync", "--backend", "argilla") == 0
    for candidate in run("candidates", "--json").json()[:3]:
        rubrix.annotate("reviews_label_errors", f"reviews-{candidate['row']}",
                        label=candidate["suggested_label"], agent="alice")
        argilla.respond("reviews_label_errors", f"reviews-{candidate['row']}", user="bob",
                        label=candidate["suggested_label"])
    # Failing servers: errors and retries are logged, keys must still not show.
    rubrix.fail_every(1, status=500)
    argilla.fail_every(1, mode="bad_json")
    assert record("sync", "--backend", "rubrix") == 1
    assert record("sync", "--backend", "argilla") == 1
    rubrix.fail_every(0)
    argilla.fail_every(0)
    assert record("sync", "--backend", "rubrix") == 0
    assert record("sync", "--backend", "argilla") == 0
    for command in (["audits"], ["candidates"], ["history"], ["history", "--versions"],
                    ["db", "current"], ["review", "--accept-suggested", "--top", "2"]):
        assert record(*command) == 0
    assert record("review", input="a\nq\n") == 0
    assert record("export", "reviews", "--out", str(tmp_path / "v1")) == 0
    assert record("export", "reviews", "--out", str(tmp_path / "v2"), "--push-to-hub",
                  "someone/repo") in (0, 1)
    assert record("report", "--out", str(tmp_path / "r.html")) == 0
    assert any("HTTP Request" in text or "attempt" in text for text in outputs)  # logs ran
    _assert_clean(outputs)
    for path in db.parent.glob("labelfix.db*"):
        data = path.read_bytes()
        for value in KEYS.values():
            assert value.encode() not in data
    _assert_clean([(tmp_path / "r.html").read_text()])


def test_the_database_file_is_private(run, db: Path) -> None:
    assert run("db", "upgrade").exit_code == 0
    for path in db.parent.glob("labelfix.db*"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
