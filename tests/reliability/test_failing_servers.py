"""Servers that fail at random requests (fixed seed): 500, 429 with Retry-After, a reset
connection, an answer slower than the timeout, malformed JSON. Sync reruns until it completes;
nothing is lost or doubled, and every failure is one line naming the server and the call."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers.argilla import ArgillaServer
from tests.servers.rubrix import RubrixServer

FAULTS: list[dict] = [
    {"status": 500}, {"status": 429}, {"mode": "reset"}, {"mode": "slow", "delay": 1.5},
    {"mode": "bad_json"}, {"status": 503},
]
ONE_LINE = re.compile(r"^Error: (rubrix|argilla) at http://127\.0\.0\.1:\d+: "
                      r"(GET|POST|PUT|PATCH) /api/\S+ ")


def _sync_until_done(run, backend: str, server, rng: random.Random, *, tries: int = 25
                     ) -> tuple[list[dict], list[str]]:
    """Rerun sync, each time with faults at random requests, until one run succeeds."""
    results, failures = [], []
    for _ in range(tries):
        fault = rng.choice(FAULTS)
        server.fail_every(rng.randint(2, 4), **fault)
        result = run("sync", "--backend", backend, "--json")
        if result.exit_code == 0:
            results.append(result.json())
            server.fail_every(0)
            return results, failures
        assert result.exit_code == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert ONE_LINE.match(lines[0]), lines[0]
        failures.append(lines[0])
    server.fail_every(0)
    raise AssertionError(f"sync never completed; failures: {failures}")


@pytest.fixture()
def flaky_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], None]:
    monkeypatch.setenv("LABELFIX_HTTP_BACKOFF", "0")
    monkeypatch.setenv("LABELFIX_HTTP_ATTEMPTS", "2")  # few retries, so that failures surface
    monkeypatch.setenv("LABELFIX_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("LABELFIX_PUSH_BATCH", "4")

    def point(prefix: str, url: str) -> None:
        monkeypatch.setenv(f"{prefix}_API_URL", url)
        monkeypatch.setenv(f"{prefix}_API_KEY", "k")

    return point


@pytest.mark.parametrize("seed", [1, 2])
def test_rubrix_failing_at_random_requests(run, csv_dataset: Path, probs_npy: Path, flaky_env,
                                           seed: int) -> None:
    rng = random.Random(seed)
    assert run("scan", str(csv_dataset), "--probs", str(probs_npy)).exit_code == 0
    candidates = run("candidates", "--json").json()
    with RubrixServer(api_key="k", workspaces=("rubrix",)) as server:
        flaky_env("RUBRIX", server.url)
        _sync_until_done(run, "rubrix", server, rng)
        assert len(server.records("reviews_label_errors")) == len(candidates)
        for index, candidate in enumerate(candidates[:10]):
            label = candidate["suggested_label"] if index < 7 else candidate["given_label"]
            server.annotate("reviews_label_errors", f"reviews-{candidate['row']}",
                            label=None if index == 9 else label, agent="alice",
                            status="Discarded" if index == 9 else "Validated")
        _sync_until_done(run, "rubrix", server, rng)
    history = run("history", "--json").json()
    assert len(history) == 7 and len({h["row"] for h in history}) == 7
    states = {c["review_state"] for c in run("candidates", "--json").json()}
    assert states <= {"pushed", "reviewed"}


def test_argilla_failing_at_random_requests(run, csv_dataset: Path, probs_npy: Path,
                                            flaky_env) -> None:
    rng = random.Random(7)
    assert run("scan", str(csv_dataset), "--probs", str(probs_npy)).exit_code == 0
    candidates = run("candidates", "--json").json()
    with ArgillaServer(api_key="k", workspaces=("argilla",)) as server:
        flaky_env("ARGILLA", server.url)
        _sync_until_done(run, "argilla", server, rng)
        records = server.records("reviews_label_errors")
        assert len(records) == len(candidates)
        assert len({r["external_id"] for r in records}) == len(candidates)
        for index, candidate in enumerate(candidates[:10]):
            label = candidate["suggested_label"] if index < 7 else candidate["given_label"]
            server.respond("reviews_label_errors", f"reviews-{candidate['row']}", user="ann",
                           label=None if index == 9 else label,
                           status="discarded" if index == 9 else "submitted")
        _sync_until_done(run, "argilla", server, rng)
    history = run("history", "--json").json()
    assert len(history) == 7 and len({h["row"] for h in history}) == 7
