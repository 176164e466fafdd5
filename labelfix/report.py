"""The report use case: an audit and what reviewers did with it, as one self-contained HTML page.

Two halves that meet in :class:`ReportData`: :func:`gather` reads the store and computes every
number (no matplotlib needed, so the numbers are testable on their own), and
:func:`write_report` draws the figures with matplotlib (Agg, no display) and writes the page,
whose images are inline PNG data URIs so that it opens offline, as an attachment, anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelfix import __version__
from labelfix.errors import UsageError
from labelfix.events import EventCallback, Task, ignore
from labelfix.store import Store
from labelfix.store import probabilities as stored_probs
from labelfix.store.models import Annotation, Audit, DatasetVersion, ProbabilitySet, Report
from labelfix.store.queries import get_audit, list_candidates
from labelfix.sync import standing_verdicts

# Page order; also the "sections" of --json.
SECTIONS = ("summary", "noise_matrix", "label_quality", "class_pairs", "review", "annotators",
            "facts")
# Annotators named by `labelfix review --accept-suggested` when no --annotator is given: their
# "corrections" are the model agreeing with itself, so they are shown apart from people's.
AUTOMATIC_PREFIX = "auto:"
# Beyond these many classes a heatmap's cells are unreadable: show the classes most involved
# in label noise and say so.
MAX_MATRIX_CLASSES = 30
MAX_PAIR_BARS = 15
MAX_PAIR_ROWS = 40
DPI = 150
INSTALL_HINT = "pip install 'labelfix[report]'"

# Colour-blind safe (Okabe-Ito), one meaning each on every figure and table.
COLOURS = {"corrected": "#0072B2", "confirmed": "#E69F00", "discarded": "#999999",
           "pending": "#DDDDDD"}
OUTCOMES = ("corrected", "confirmed", "discarded", "pending")


@dataclass(frozen=True)
class Tally:
    """Candidates by the standing verdict on their row (none: pending)."""

    corrected: int = 0
    confirmed: int = 0
    discarded: int = 0
    pending: int = 0
    # Reviewed rows whose standing verdict came from an automatic annotator (auto:...).
    automatic: int = 0
    automatic_corrected: int = 0

    @property
    def reviewed(self) -> int:
        return self.corrected + self.confirmed + self.discarded

    @property
    def total(self) -> int:
        return self.reviewed + self.pending

    @property
    def precision(self) -> float | None:
        """corrected / (corrected + confirmed); None before any of either."""
        judged = self.corrected + self.confirmed
        return self.corrected / judged if judged else None

    @property
    def precision_people(self) -> float | None:
        """The precision over verdicts of people only (automatic ones left out)."""
        corrected = self.corrected - self.automatic_corrected
        judged = corrected + self.confirmed
        return corrected / judged if judged else None

    def count(self, outcome: str) -> int:
        return int(getattr(self, outcome))


@dataclass(frozen=True)
class Bucket:
    """Candidates ranked ``first``..``last`` (1-based, inclusive) and their verdicts."""

    first: int
    last: int
    tally: Tally


@dataclass(frozen=True)
class ClassPair:
    """Candidates given ``given`` for which the model suggests ``suggested``."""

    given: str
    suggested: str
    tally: Tally


@dataclass(frozen=True)
class AnnotatorRow:
    """One annotator's latest standing verdict on each row of the audit they judged."""

    annotator: str
    rows: int
    corrected: int
    confirmed: int
    discarded: int
    undone: int
    automatic: bool


@dataclass(frozen=True)
class Agreement:
    """Rows both annotators judged, and on how many their latest verdicts name the same
    outcome (the same label, or both discard)."""

    first: str
    second: str
    shared: int
    agreed: int

    @property
    def fraction(self) -> float | None:
        return self.agreed / self.shared if self.shared else None


@dataclass(frozen=True)
class ReportData:
    """Every number on the page.

    ``joint`` is cleanlab's (K, K) estimate of P(given label = i, true label = j), rows given,
    columns true, summing to 1 (None with ``joint_note`` saying why when it cannot be
    computed); ``label_quality`` is (N,) float32 of every scanned row and
    ``candidate_quality`` (C,) float of the candidates, in rank order.
    """

    audit_id: int
    dataset: str
    version: int
    rows: int
    label_names: list[str]
    model: str
    accuracy: float | None
    filter_by: str | None
    rank_by: str | None
    joint: np.ndarray | None
    joint_note: str | None
    label_quality: np.ndarray | None
    candidate_quality: np.ndarray
    threshold: float | None
    below_threshold: int | None
    tally: Tally
    buckets: list[Bucket]
    bucket_size: int
    pairs: list[ClassPair]
    annotators: list[AnnotatorRow]
    agreements: list[Agreement]
    facts: list[tuple[str, str]]
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def candidates(self) -> int:
        return self.tally.total

    @property
    def estimated_noise(self) -> float | None:
        """The estimated fraction of rows whose given label is wrong: 1 - trace(joint)."""
        return None if self.joint is None else float(1.0 - np.trace(self.joint))


@dataclass(frozen=True)
class ReportResult:
    audit_id: int
    dataset: str
    version: int
    path: Path
    png_dir: Path | None
    pngs: list[Path]
    sections: list[str]
    tally: Tally
    created_at: datetime


# --------------------------------------------------------------------------------------------
# The numbers


def gather(session: Session, audit_id: int | None = None, *, bucket_size: int = 50
           ) -> ReportData:
    """Read an audit, its candidates and the verdicts on them, and compute the report's numbers.

    A row counts as reviewed when a standing verdict (the newest one not undone, as in
    :func:`labelfix.sync.standing_verdicts`) is on it, whichever audit or backend it came from.

    Raises:
        NotFoundError: no such audit, or no complete audit yet.
        UsageError: the audit is not complete, or ``bucket_size`` < 1.
    """
    if bucket_size < 1:
        raise UsageError("--bucket-size must be at least 1")
    audit = get_audit(session, audit_id)
    if audit.status != "complete":
        raise UsageError(f"audit {audit.id} is {audit.status}; report on a complete audit "
                         "(list them with `labelfix audits`)")
    version = audit.dataset_version
    dataset = version.dataset
    names = list(dataset.label_names)
    candidates = list_candidates(session, audit_id=audit.id)
    standing = standing_verdicts(session, dataset_id=dataset.id)

    def outcome(row: int) -> tuple[str, bool]:
        verdict = standing.get(row)
        if verdict is None:
            return "pending", False
        kind = {"relabel": "corrected", "confirm": "confirmed"}.get(verdict.decision,
                                                                    "discarded")
        return kind, verdict.annotator.startswith(AUTOMATIC_PREFIX)

    outcomes = [outcome(c.row) for c in candidates]
    tally = _tally(outcomes)
    buckets = [
        Bucket(first=start + 1, last=min(start + bucket_size, len(candidates)),
               tally=_tally(outcomes[start:start + bucket_size]))
        for start in range(0, len(candidates), bucket_size)
    ]
    by_pair: dict[tuple[int, int], list[tuple[str, bool]]] = {}
    for candidate, result in zip(candidates, outcomes, strict=True):
        by_pair.setdefault((candidate.given_label, candidate.suggested_label), []).append(result)
    pairs = sorted(
        (ClassPair(given=names[g], suggested=names[s], tally=_tally(found))
         for (g, s), found in by_pair.items()),
        key=lambda p: (-p.tally.total, p.given, p.suggested),
    )
    annotators, agreements = _annotators(session, dataset_id=dataset.id,
                                         rows={c.row for c in candidates})

    quality = (None if audit.label_quality is None
               else np.frombuffer(audit.label_quality, dtype="<f4"))
    candidate_quality = np.array([c.label_quality for c in candidates], dtype=np.float64)
    threshold = float(candidate_quality.max()) if len(candidate_quality) else None
    below = (None if quality is None or threshold is None
             else int((quality <= np.float32(threshold)).sum()))
    joint, note = _joint(session, audit, version, n_classes=len(names))
    parameters = audit.parameters or {}
    return ReportData(
        audit_id=audit.id, dataset=dataset.name, version=version.version,
        rows=audit.total if audit.total is not None else version.row_count,
        label_names=names, model=audit.model, accuracy=audit.accuracy,
        filter_by=parameters.get("filter_by"), rank_by=parameters.get("rank_by"),
        joint=joint, joint_note=note, label_quality=quality,
        candidate_quality=candidate_quality, threshold=threshold, below_threshold=below,
        tally=tally, buckets=buckets, bucket_size=bucket_size, pairs=pairs,
        annotators=annotators, agreements=agreements, facts=_facts(audit, version),
    )


def _tally(outcomes: Sequence[tuple[str, bool]]) -> Tally:
    counts = Counter(kind for kind, _ in outcomes)
    return Tally(
        corrected=counts["corrected"], confirmed=counts["confirmed"],
        discarded=counts["discarded"], pending=counts["pending"],
        automatic=sum(1 for kind, auto in outcomes if auto and kind != "pending"),
        automatic_corrected=sum(1 for kind, auto in outcomes if auto and kind == "corrected"),
    )


def _annotators(session: Session, *, dataset_id: int, rows: set[int]
                ) -> tuple[list[AnnotatorRow], list[Agreement]]:
    """Per annotator, the latest verdict they hold on each of ``rows`` (undone ones dropped),
    and pairwise agreement on the rows two annotators share."""
    # The whole dataset's annotations, filtered here: an IN list of every candidate row could
    # pass the database's limit on bound parameters.
    annotations = [
        a for a in session.scalars(
            select(Annotation).where(Annotation.dataset_id == dataset_id)
            .order_by(Annotation.annotated_at, Annotation.id))
        if a.row in rows
    ]
    undone = {a.retracts_id for a in annotations if a.decision == "undo"}
    latest: dict[str, dict[int, Annotation]] = {}
    undone_by: Counter[str] = Counter()
    for a in annotations:
        if a.decision == "undo":
            continue
        if a.id in undone:
            undone_by[a.annotator] += 1
            continue
        latest.setdefault(a.annotator, {})[a.row] = a
    table = []
    # People first, then automatic annotators, each alphabetically.
    for name in sorted(set(latest) | set(undone_by),
                       key=lambda n: (n.startswith(AUTOMATIC_PREFIX), n)):
        held = latest.get(name, {})
        decisions = Counter(a.decision for a in held.values())
        table.append(AnnotatorRow(
            annotator=name, rows=len(held), corrected=decisions["relabel"],
            confirmed=decisions["confirm"], discarded=decisions["discard"],
            undone=undone_by[name], automatic=name.startswith(AUTOMATIC_PREFIX),
        ))
    agreements = []
    for first, second in combinations(sorted(latest), 2):
        shared = set(latest[first]) & set(latest[second])
        if not shared:
            continue
        agreed = sum(1 for row in shared if _said(latest[first][row]) == _said(latest[second][row]))
        agreements.append(Agreement(first=first, second=second, shared=len(shared),
                                    agreed=agreed))
    return table, agreements


def _said(annotation: Annotation) -> int | None:
    """What a verdict says the row's label is; None for discard (as in sync.disagreements)."""
    return None if annotation.decision == "discard" else annotation.label


def _joint(session: Session, audit: Audit, version: DatasetVersion, *, n_classes: int
           ) -> tuple[np.ndarray | None, str | None]:
    if version.labels is None:
        return None, ("the labels of this dataset version were recorded before labelfix kept "
                      "them; scan it again to see the noise matrix")
    if audit.probability_set_id is None:
        return None, "the audit has no stored probabilities; scan again to see the noise matrix"
    labels = np.frombuffer(version.labels, dtype="<i4").astype(np.int64)
    probs = stored_probs.load(session, session.get_one(ProbabilitySet, audit.probability_set_id))
    if probs.shape != (len(labels), n_classes):
        return None, (f"the stored probabilities are {probs.shape[0]} x {probs.shape[1]} but "
                      f"the version has {len(labels)} rows of {n_classes} classes; scan again")
    from cleanlab.count import estimate_joint

    return np.asarray(estimate_joint(labels, probs), dtype=np.float64), None


def _facts(audit: Audit, version: DatasetVersion) -> list[tuple[str, str]]:
    dataset = version.dataset
    where = ", ".join(x for x in (dataset.source, dataset.config and f"config {dataset.config}",
                                  dataset.split and f"split {dataset.split}") if x)
    model = audit.model + (f" @ {audit.model_revision}" if audit.model_revision else "")
    reused = " (reused from an earlier scan)" if audit.probabilities_reused else ""
    total = audit.total or 0
    flagged = audit.candidates or 0
    share = f" ({100 * flagged / total:.1f}%)" if total else ""
    parameters = ", ".join(f"{k}={v}" for k, v in sorted((audit.parameters or {}).items()))
    timings = " · ".join(f"{k} {v:.1f} s" for k, v in (audit.timings or {}).items())
    return [
        ("Dataset", f"{dataset.name} — {where}"),
        ("Version", f"{version.version} · {version.row_count:,} rows · fingerprint "
                    f"{version.fingerprint[:12]}"),
        ("Labels", ", ".join(dataset.label_names)),
        ("Model", model),
        ("Probabilities", f"{audit.prob_source}{reused}"),
        ("Accuracy", "n/a" if audit.accuracy is None else
         f"{100 * audit.accuracy:.1f}% (argmax of the probabilities vs. the given labels)"),
        ("Candidates", f"{flagged:,} of {total:,}{share}"),
        ("Parameters", parameters or "none"),
        ("labelfix / cleanlab", f"{audit.labelfix_version} / {audit.cleanlab_version or '?'}"),
        ("Created", _when(audit.created_at)),
        ("Finished", _when(audit.finished_at)),
        ("Timings", timings or "n/a"),
    ]


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "n/a"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# --------------------------------------------------------------------------------------------
# The page


def require_matplotlib() -> None:
    """Raises UsageError (exit 2) naming the extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            f"labelfix report draws its figures with matplotlib, which is not installed; "
            f"run {INSTALL_HINT}"
        ) from None


def write_report(
    store: Store,
    audit_id: int | None = None,
    *,
    out: Path,
    png_dir: Path | None = None,
    bucket_size: int = 50,
    on_event: EventCallback = ignore,
) -> ReportResult:
    """Write the report of an audit to ``out`` (HTML, replaced atomically if it exists) and,
    with ``png_dir``, each figure as a PNG there.

    Raises:
        UsageError: matplotlib is missing, ``out`` is a folder, a bad bucket size, an audit
            that is not complete.
        NotFoundError: no such audit.
    """
    require_matplotlib()
    out = Path(out).expanduser()
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the HTML file to write, e.g. "
                         f"{out / 'report.html'}")
    if png_dir is not None:
        png_dir = Path(png_dir).expanduser()
        if png_dir.exists() and not png_dir.is_dir():
            raise UsageError(f"--png-dir {png_dir} is a file; give a folder")
    with Task(on_event, "Reading the audit and its review", total=None), \
            store.session() as session:
        data = gather(session, audit_id, bucket_size=bucket_size)
    with Task(on_event, "Drawing figures", total=None):
        figures = draw_figures(data)
    page = render_html(data, figures)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(out)
    pngs = []
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        for name, png in figures.items():
            path = png_dir / f"{name}.png"
            path.write_bytes(png)
            pngs.append(path.resolve())
    # Recorded so that `labelfix audits` and `history --versions` can point at it.
    with store.session() as session:
        session.add(Report(audit_id=data.audit_id, path=str(out.resolve()),
                           png_dir=None if png_dir is None else str(png_dir.resolve()),
                           labelfix_version=__version__, created_at=data.created_at))
    return ReportResult(
        audit_id=data.audit_id, dataset=data.dataset, version=data.version, path=out.resolve(),
        png_dir=None if png_dir is None else png_dir.resolve(), pngs=pngs,
        sections=list(SECTIONS), tally=data.tally, created_at=data.created_at,
    )


def draw_figures(data: ReportData) -> dict[str, bytes]:
    """The report's figures as PNG bytes by name; a figure with nothing to show is left out."""
    import matplotlib
    from matplotlib.figure import Figure

    style = {
        "font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold",
        "axes.spines.top": False, "axes.spines.right": False, "axes.titlelocation": "left",
        "font.family": "DejaVu Sans",
    }
    figures: dict[str, bytes] = {}
    # No pyplot: Figure objects draw with Agg without touching the global backend or a display.
    with matplotlib.rc_context(style):
        if data.joint is not None:
            figures["noise_matrix"] = _png(_noise_figure(Figure, data))
        if data.label_quality is not None and len(data.label_quality):
            figures["label_quality"] = _png(_quality_figure(Figure, data))
        if data.pairs:
            figures["class_pairs"] = _png(_pairs_figure(Figure, data))
        if data.buckets:
            figures["review"] = _png(_review_figure(Figure, data))
        if any(a.rows for a in data.annotators):
            figures["annotators"] = _png(_annotators_figure(Figure, data))
    return figures


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    # No Software/date metadata: the same data gives the same bytes.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _matrix_classes(joint: np.ndarray) -> np.ndarray:
    """Indexes of the classes to draw: all, or the MAX_MATRIX_CLASSES most involved in noise."""
    k = len(joint)
    if k <= MAX_MATRIX_CLASSES:
        return np.arange(k)
    off = joint - np.diag(np.diag(joint))
    involvement = off.sum(axis=0) + off.sum(axis=1)
    return np.sort(np.argsort(-involvement, kind="stable")[:MAX_MATRIX_CLASSES])


def _noise_figure(Figure: Any, data: ReportData) -> Any:  # noqa: N803 -- the class itself
    from matplotlib.colors import PowerNorm

    assert data.joint is not None
    keep = _matrix_classes(data.joint)
    pct = 100 * data.joint[np.ix_(keep, keep)]
    names = [data.label_names[i] for i in keep]
    k = len(keep)
    annotate = k <= 20
    # Cells wide enough for "23.47% / ≈1,784 rows" when few classes, smaller beyond.
    side = min(13.0, max(5.0, 0.5 * k + 2.4 if k > 8 else 0.95 * k + 1.6))
    # Annotated cells say their value; a colour bar is needed only when they cannot.
    figure = Figure(figsize=(side + (0.3 if annotate else 1.2), side), layout="constrained")
    ax = figure.add_subplot()
    # A power scale: the diagonal holds most of the mass and would wash out the errors.
    image = ax.imshow(pct, cmap="Blues", norm=PowerNorm(gamma=0.35, vmin=0, vmax=pct.max()))
    ax.set_xticks(range(k), labels=names, rotation=35 if k > 4 else 0,
                  ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("True label (estimated by confident learning)")
    ax.set_ylabel("Given label")
    ax.spines[:].set_visible(False)
    subset = f" ({k} of {len(data.joint)} classes)" if k < len(data.joint) else ""
    ax.set_title(f"Given vs. true label, % of all rows{subset}")
    if annotate:
        size = 9 if k <= 8 else 8 if k <= 14 else 6.5
        cut = PowerNorm(gamma=0.35, vmin=0, vmax=pct.max())(pct.max() * 0.45)
        for i in range(k):
            for j in range(k):
                value = pct[i, j]
                count = value / 100 * data.rows
                rows = "1 row" if round(count) == 1 else f"{count:,.0f} rows"
                text = f"{value:.1f}%" if k > 8 else f"{value:.2f}%\n≈{rows}"
                dark = PowerNorm(gamma=0.35, vmin=0, vmax=pct.max())(value) > cut
                ax.text(j, i, text, ha="center", va="center", fontsize=size,
                        color="white" if dark else "#222222",
                        fontweight="bold" if i == j else "normal")
    else:
        figure.colorbar(image, ax=ax, shrink=0.8, label="% of all rows")
    return figure


def _quality_figure(Figure: Any, data: ReportData) -> Any:  # noqa: N803
    assert data.label_quality is not None
    figure = Figure(figsize=(6.6, 4.0), layout="constrained")
    ax = figure.add_subplot()
    bins = np.linspace(0.0, 1.0, 51)
    ax.hist(np.clip(data.label_quality, 0, 1), bins=bins, color="#B8CCE0",
            label=f"all rows ({len(data.label_quality):,})")
    if len(data.candidate_quality):
        ax.hist(np.clip(data.candidate_quality, 0, 1), bins=bins, color=COLOURS["corrected"],
                label=f"candidates ({len(data.candidate_quality):,})")
    if data.threshold is not None:
        ax.axvline(data.threshold, color="#D55E00", linestyle="--", linewidth=1.5,
                   label=f"threshold ({data.threshold:.3f})")
    ax.set_yscale("log")
    # Down to a single row: the few rows in a sparse bin are the interesting ones.
    ax.set_ylim(bottom=0.7)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"Label quality ({data.rank_by or 'cleanlab score'}, low = suspect)")
    ax.set_ylabel("Rows (log scale)")
    ax.set_title("Label quality of every row")
    ax.legend(loc="upper left", frameon=False)
    ax.grid(axis="y", color="#EEEEEE")
    ax.set_axisbelow(True)
    return figure


def _stacked_bars(ax: Any, labels: list[str], tallies: list[Tally]) -> None:
    """Horizontal bars of candidates by outcome, the first label on top."""
    y = np.arange(len(labels))
    left = np.zeros(len(labels))
    for outcome in OUTCOMES:
        values = np.array([t.count(outcome) for t in tallies], dtype=float)
        if values.any():
            ax.barh(y, values, left=left, color=COLOURS[outcome], label=outcome,
                    edgecolor="white", linewidth=0.5, height=0.7)
        left += values
    for i, total in enumerate(left):
        ax.text(total, i, f" {total:.0f}", va="center", fontsize=9, color="#333333")
    ax.set_yticks(y, labels=labels)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, left.max()) * 1.1)
    ax.grid(axis="x", color="#EEEEEE")
    ax.set_axisbelow(True)


def _legend(figure: Any, ax: Any) -> None:
    """The outcome legend under the figure, where it can never hide a bar."""
    handles, labels = ax.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False,
                  fontsize=9)


def _pairs_figure(Figure: Any, data: ReportData) -> Any:  # noqa: N803
    shown = data.pairs[:MAX_PAIR_BARS]
    figure = Figure(figsize=(8.5, max(3.0, 0.38 * len(shown) + 1.5)), layout="constrained")
    ax = figure.add_subplot()
    _stacked_bars(ax, [f"{p.given} → {p.suggested}" for p in shown], [p.tally for p in shown])
    more = f" (top {len(shown)} of {len(data.pairs)})" if len(data.pairs) > len(shown) else ""
    ax.set_title(f"Candidates by given → suggested label{more}")
    ax.set_xlabel("Candidates")
    _legend(figure, ax)
    return figure


def _review_figure(Figure: Any, data: ReportData) -> Any:  # noqa: N803
    n = len(data.buckets)
    figure = Figure(figsize=(8.5, 6.0), layout="constrained")
    figure.get_layout_engine().set(hspace=0.12)
    top, bottom = figure.subplots(2, 1, height_ratios=[1, 3.6])
    _stacked_bars(top, ["all candidates"], [data.tally])
    top.set_title(f"Review progress: {data.tally.reviewed} of {data.tally.total} candidates "
                  "reviewed")
    _legend(figure, top)
    x = np.arange(n)
    base = np.zeros(n)
    for outcome in OUTCOMES:
        values = np.array([b.tally.count(outcome) for b in data.buckets], dtype=float)
        bottom.bar(x, values, bottom=base, color=COLOURS[outcome], edgecolor="white",
                   linewidth=0.5, width=0.75)
        base += values
    labels = [f"{b.first}–{b.last}" for b in data.buckets]
    bottom.set_xticks(x, labels=labels, rotation=35 if n > 8 else 0,
                      ha="right" if n > 8 else "center")
    bottom.set_xlabel(f"Candidate rank (buckets of {data.bucket_size})")
    bottom.set_ylabel("Candidates")
    bottom.set_title("Verdicts and measured precision by rank")
    bottom.grid(axis="y", color="#EEEEEE")
    bottom.set_axisbelow(True)
    share = bottom.twinx()
    precision = [b.tally.precision for b in data.buckets]
    px = [i for i, p in enumerate(precision) if p is not None]
    py = [100 * p for p in precision if p is not None]
    share.plot(px, py, color="#D55E00", marker="o", linewidth=2, label="precision")
    for i, p in zip(px, py, strict=True):
        share.annotate(f"{p:.0f}%", (i, p), textcoords="offset points", xytext=(0, 7),
                       ha="center", fontsize=9, color="#D55E00")
    share.set_ylim(0, 112)
    share.set_ylabel("Precision (%)", color="#D55E00")
    share.tick_params(axis="y", colors="#D55E00")
    share.spines["right"].set_visible(True)
    share.spines["top"].set_visible(False)
    return figure


def _annotators_figure(Figure: Any, data: ReportData) -> Any:  # noqa: N803
    shown = [a for a in data.annotators if a.rows]
    figure = Figure(figsize=(8.5, max(2.8, 0.45 * len(shown) + 1.7)), layout="constrained")
    ax = figure.add_subplot()
    tallies = [Tally(corrected=a.corrected, confirmed=a.confirmed, discarded=a.discarded)
               for a in shown]
    _stacked_bars(ax, [a.annotator for a in shown], tallies)
    ax.set_title("Latest verdicts by annotator")
    ax.set_xlabel("Rows")
    _legend(figure, ax)
    return figure


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _image(figures: dict[str, bytes], name: str, alt: str) -> str:
    png = figures.get(name)
    if png is None:
        return ""
    width, _ = png_size(png)
    encoded = base64.b64encode(png).decode("ascii")
    # Drawn at DPI, shown at 100 px an inch: sharp on high-density screens, sized on others.
    shown = round(width * 100 / DPI)
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{_e(alt)}" '
            f'width="{shown}"></figure>')


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], *,
           numeric: Sequence[int] = (), css: str = "") -> str:
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{_e(h)}</th>'
                   for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{_e(c)}</td>'
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tally_cells(t: Tally) -> list[object]:
    return [t.total, t.reviewed, t.corrected, t.confirmed, t.discarded, t.pending,
            _pct(t.precision)]


TALLY_HEADERS = ("Candidates", "Reviewed", "Corrected", "Confirmed", "Discarded", "Pending",
                 "Precision")


def render_html(data: ReportData, figures: dict[str, bytes]) -> str:
    """The whole page: no external CSS, scripts, fonts or images."""
    t = data.tally
    title = f"labelfix report — {data.dataset} v{data.version}, audit {data.audit_id}"
    sections = [_summary(data), _noise_section(data, figures), _quality_section(data, figures),
                _pairs_section(data, figures), _review_section(data, figures),
                _annotators_section(data, figures), _facts_section(data)]
    toc = "".join(f'<a href="#{s}">{_e(_TITLES[s])}</a>' for s in SECTIONS)
    subtitle = (f"{data.rows:,} rows · {data.candidates:,} candidates · {t.reviewed:,} reviewed "
                f"· model {data.model}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="labelfix {_e(__version__)}">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<div class="wrap">
<p class="kicker">labelfix report</p>
<h1>{_e(data.dataset)} <span>version {data.version} · audit {data.audit_id}</span></h1>
<p class="sub">{_e(subtitle)}</p>
<nav>{toc}</nav>
</div>
</header>
<main class="wrap">
{"".join(sections)}
</main>
<footer class="wrap">Written by labelfix {_e(__version__)} on {_e(_when(data.created_at))}.
Self-contained: open it offline, attach it to a pull request, keep it beside the dataset version.
</footer>
</body>
</html>
"""


_TITLES = {
    "summary": "Summary", "noise_matrix": "Noise matrix", "label_quality": "Label quality",
    "class_pairs": "Class pairs", "review": "Review", "annotators": "Annotators",
    "facts": "Audit facts",
}


def _section(name: str, body: str, intro: str = "") -> str:
    lead = f'<p class="intro">{intro}</p>' if intro else ""
    return f'<section id="{name}"><h2>{_e(_TITLES[name])}</h2>{lead}{body}</section>\n'


def _card(label: str, value: str, note: str = "") -> str:
    small = f"<small>{_e(note)}</small>" if note else ""
    return f'<div class="card"><b>{_e(value)}</b><span>{_e(label)}</span>{small}</div>'


def _summary(data: ReportData) -> str:
    t = data.tally
    noise = data.estimated_noise
    share = data.candidates / data.rows if data.rows else None
    cards = [
        _card("rows scanned", f"{data.rows:,}"),
        _card("candidates", f"{data.candidates:,}", f"{_pct(share)} of rows"),
        _card("estimated label noise", _pct(noise),
              "" if noise is None else f"≈{noise * data.rows:,.0f} rows"),
        _card("reviewed", f"{t.reviewed:,}", f"{t.pending:,} pending"),
        _card("corrected / confirmed / discarded", f"{t.corrected} / {t.confirmed} / "
              f"{t.discarded}"),
        _card("measured precision", _pct(t.precision),
              f"people only: {_pct(t.precision_people)} ({t.automatic} automatic verdicts)"
              if t.automatic else "corrected / (corrected + confirmed)"),
    ]
    return _section("summary", f'<div class="cards">{"".join(cards)}</div>')


def _noise_section(data: ReportData, figures: dict[str, bytes]) -> str:
    intro = ("cleanlab's estimate of how often each given label stands for each true label "
             "(<code>cleanlab.count.estimate_joint</code> of the given labels and the audit's "
             "predicted probabilities). The diagonal is correctly labelled data; every other "
             "cell is an estimated share of mislabelled rows. The cells sum to 100%.")
    if data.joint is None:
        return _section("noise_matrix", f'<p class="note">Not available: {_e(data.joint_note)}.'
                        "</p>", intro)
    keep = _matrix_classes(data.joint)
    cut = ""
    if len(keep) < len(data.joint):
        cut = (f'<p class="note">{len(data.joint)} classes: the {len(keep)} most involved in '
               "label noise are drawn.</p>")
    off = data.joint - np.diag(np.diag(data.joint))
    flat = [(off[i, j], i, j) for i in range(len(off)) for j in range(len(off)) if off[i, j] > 0]
    flat.sort(reverse=True)
    rows = [[data.label_names[i], data.label_names[j], f"{100 * v:.2f}%",
             f"{v * data.rows:,.0f}"] for v, i, j in flat[:10]]
    table = _table(("Given", "True (estimated)", "Share of rows", "≈ Rows"), rows,
                   numeric=(2, 3)) if rows else ""
    noise = data.estimated_noise
    lead = (f"<p>Estimated label noise: <b>{_pct(noise, 2)}</b> of rows "
            f"(≈{(noise or 0) * data.rows:,.0f} of {data.rows:,}).</p>"
            "<p>Largest off-diagonal cells:</p>")
    body = (f'<div class="split">{_image(figures, "noise_matrix", "estimated noise matrix")}'
            f"<div>{lead}{table}</div></div>{cut}")
    return _section("noise_matrix", body, intro)


def _quality_section(data: ReportData, figures: dict[str, bytes]) -> str:
    intro = (f"cleanlab's label quality of every row (<code>{_e(data.rank_by or '?')}</code>; "
             "0 = the label looks wrong, 1 = it looks right). The candidates were chosen by "
             f"<code>{_e(data.filter_by or '?')}</code>; the dashed line is the largest label "
             "quality among them.")
    if data.label_quality is None:
        return _section("label_quality", '<p class="note">Not available: this audit was '
                        "recorded before labelfix kept every row's label quality; scan again."
                        "</p>", intro)
    q = data.label_quality
    stats = [
        ("Rows", f"{len(q):,}"),
        ("Median label quality", f"{float(np.median(q)):.3f}" if len(q) else "n/a"),
        ("Rows below 0.5", f"{int((q < 0.5).sum()):,}"),
        ("Threshold (largest candidate quality)",
         "n/a" if data.threshold is None else f"{data.threshold:.4f}"),
        ("Rows at or below the threshold",
         "n/a" if data.below_threshold is None else f"{data.below_threshold:,}"),
        ("Candidates", f"{data.candidates:,}"),
    ]
    body = (f'<div class="split">{_image(figures, "label_quality", "label quality histogram")}'
            f'{_table(("", "Value"), stats, numeric=(1,))}</div>')
    return _section("label_quality", body, intro)


def _pairs_section(data: ReportData, figures: dict[str, bytes]) -> str:
    intro = ("Candidates by the label they were given and the label the model suggests, largest "
             "first, with what reviewers decided.")
    if not data.pairs:
        return _section("class_pairs", '<p class="note">This audit has no candidates.</p>',
                        intro)
    shown = data.pairs[:MAX_PAIR_ROWS]
    rows = [[p.given, p.suggested, *_tally_cells(p.tally)] for p in shown]
    more = (f'<p class="note">and {len(data.pairs) - len(shown)} more pairs.</p>'
            if len(data.pairs) > len(shown) else "")
    body = (_image(figures, "class_pairs", "candidates by class pair")
            + _table(("Given", "Suggested", *TALLY_HEADERS), rows, numeric=range(2, 9)) + more)
    return _section("class_pairs", body, intro)


def _review_section(data: ReportData, figures: dict[str, bytes]) -> str:
    t = data.tally
    intro = ("A candidate is <b>reviewed</b> when a verdict stands on its row (the newest one "
             "not undone, from any backend). <b>Corrected</b>: its label was changed; "
             "<b>confirmed</b>: its given label was kept, so the detector was wrong; "
             "<b>discarded</b>: the row was set aside. <b>Precision</b> = corrected / (corrected "
             "+ confirmed): the share of judged candidates that really were label errors, i.e. "
             "the measured precision of the detector on this dataset. Where it falls by rank, "
             "the candidates stop being worth reviewing.")
    if not t.total:
        return _section("review", '<p class="note">This audit has no candidates.</p>', intro)
    overall = _table(TALLY_HEADERS, [_tally_cells(t)], numeric=range(7))
    auto = ""
    if t.automatic:
        auto = (f'<p class="note">{t.automatic} of the reviewed rows were judged automatically '
                f"(annotator <code>{AUTOMATIC_PREFIX}…</code>, from <code>labelfix review "
                "--accept-suggested</code>); they count as corrections above although they only "
                f"repeat the model. Precision over people's verdicts only: "
                f"<b>{_pct(t.precision_people)}</b>.</p>")
    rows = [[f"{b.first}–{b.last}", *_tally_cells(b.tally)] for b in data.buckets]
    by_rank = _table(("Ranks", *TALLY_HEADERS), rows, numeric=range(1, 8))
    body = (_image(figures, "review", "review progress and precision by rank") + overall + auto
            + f"<h3>By rank (buckets of {data.bucket_size})</h3>" + by_rank)
    return _section("review", body, intro)


def _annotators_section(data: ReportData, figures: dict[str, bytes]) -> str:
    intro = ("Each annotator's latest verdict on each candidate row they judged (verdicts they "
             "undid left out). Agreement: of the rows two annotators both judged, the share on "
             "which their latest verdicts name the same label (or both discard).")
    if not data.annotators:
        return _section("annotators", '<p class="note">No verdicts yet: run '
                        "<code>labelfix review</code> or <code>labelfix sync</code>.</p>", intro)
    rows = [[a.annotator + (" (automatic)" if a.automatic else ""), a.rows, a.corrected,
             a.confirmed, a.discarded, a.undone,
             _pct(a.corrected / (a.corrected + a.confirmed)
                  if a.corrected + a.confirmed else None)]
            for a in data.annotators]
    table = _table(("Annotator", "Rows", "Corrected", "Confirmed", "Discarded", "Undone",
                    "Precision"), rows, numeric=range(1, 7))
    if data.agreements:
        agree = "<h3>Agreement</h3>" + _table(
            ("Annotator", "Annotator", "Shared rows", "Agreed", "Agreement"),
            [[a.first, a.second, a.shared, a.agreed, _pct(a.fraction)] for a in data.agreements],
            numeric=(2, 3, 4))
    else:
        agree = '<p class="note">No row was judged by more than one annotator.</p>'
    body = _image(figures, "annotators", "verdicts by annotator") + table + agree
    return _section("annotators", body, intro)


def _facts_section(data: ReportData) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in data.facts)
    return _section("facts", f'<table class="facts"><tbody>{rows}</tbody></table>')


_CSS = """
:root { --ink:#1f2933; --muted:#5f6b7a; --line:#e3e8ee; --accent:#0072B2; --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; color:var(--ink); background:#fff; }
.wrap { max-width: 1080px; margin: 0 auto; padding: 0 24px; }
header { background: var(--bg); border-bottom: 1px solid var(--line); padding: 28px 0 14px; }
.kicker { margin:0; text-transform: uppercase; letter-spacing: .08em; font-size: 12px;
  color: var(--accent); font-weight: 600; }
h1 { margin: 4px 0 4px; font-size: 28px; }
h1 span { font-weight: 400; color: var(--muted); font-size: 20px; }
.sub { margin: 0 0 12px; color: var(--muted); }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; font-size: 14px; }
nav a:hover { text-decoration: underline; }
section { padding: 22px 0 10px; border-bottom: 1px solid var(--line); }
h2 { font-size: 21px; margin: 0 0 6px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.intro { color: var(--muted); margin: 0 0 12px; max-width: 820px; }
.note { color: var(--muted); font-style: italic; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: var(--bg); padding: 1px 4px; border-radius: 3px; }
figure { margin: 8px 0 14px; }
.split { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
.split > figure { flex: 0 1 auto; }
.split > div, .split > table { flex: 1 1 280px; }
.split p { margin-top: 8px; }
figure img { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { padding: 5px 12px 5px 0; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
thead th { color: var(--muted); font-weight: 600; border-bottom: 2px solid var(--line); }
.num { text-align: right; font-variant-numeric: tabular-nums; padding-left: 12px; }
table.facts th { color: var(--muted); font-weight: 600; white-space: nowrap; padding-right: 24px; }
table.facts td { word-break: break-word; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(145px, 1fr)); gap: 12px; }
.card { background: var(--bg); border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 14px; }
.card b { display: block; font-size: 24px; font-variant-numeric: tabular-nums; }
.card span { display: block; color: var(--muted); font-size: 13px; }
.card small { display: block; color: var(--muted); font-size: 12px; margin-top: 2px; }
footer { color: var(--muted); font-size: 13px; padding: 18px 24px 40px; }
"""
