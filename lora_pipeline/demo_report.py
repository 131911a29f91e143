"""What `lora-pipeline demo` prints after the graph ran, and the parts `evaluate`'s summary shares
(lora_pipeline/commands/_summary.py).

`print_summary(storage, summary=None)`: one row per checkpoint (run, checkpoint, verdict with the
latest review beside it, top findings), the run verdicts, best checkpoints and run-wide findings, the
failed blocking checks (given the launch's `summary`), what a run verdict is next to a checkpoint
verdict, and where the reports are.

Verdicts and findings come only from the files of CONTRACT section 3 (`reports/<run>/<ckpt>/report.json`,
`reports/<run>/report.json`) and reviews from `reviews.jsonl` read now, so a review recorded after a
report was written still shows (a rejected checkpoint reads as rejected and is never shown as best).
Failed blocking checks come from the Dagster instance the launch ran in (`summary.dagster_home`): such a
run is marked failed there even though its asset was materialized, and the summary says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lora_pipeline.findings import VERDICT_ORDER

RUN_WIDE_LAYERS = ("dataset", "training")
DATASET_ASSET = "dataset_snapshot"  # the asset with a blocking check (assets/dataset.py: pairing)
_SEVERITY_RANK = {"error": 0, "warn": 1, "info": 2}
_LAYER_RANK = {layer: i for i, layer in enumerate(
    [ly for layers, _ in VERDICT_ORDER for ly in layers] + ["review"])}
VERDICTS_NOTE = ("verdicts: a checkpoint's is decided by all its findings (the first layer with an error: "
                 "evaluation path, dataset, training, quality);\n"
                 "  a run's by its run-wide findings only (dataset, training, progression), so the two can differ. "
                 "A review shows beside a verdict and never changes it.")


def top_codes(findings: list[dict[str, Any]], n: int = 4) -> list[str]:
    """The most important distinct codes: errors first, then by the verdict's layer order."""
    out: list[str] = []
    for f in _ranked(findings):
        label = f"{f['code']}({str(f.get('severity') or '?')[0]})"
        if label not in out:
            out.append(label)
    return out[:n]


def _ranked(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((f for f in findings if isinstance(f, dict) and f.get("code")),
                  key=lambda f: (_SEVERITY_RANK.get(f.get("severity"), 3), _LAYER_RANK.get(f.get("layer"), 99),
                                 f.get("code", "")))


def main_finding(findings: list[dict[str, Any]], width: int = 90) -> str:
    """The finding that decides the verdict (else the most severe one), its message clipped, + the rest."""
    ranked = _ranked(findings)
    if not ranked:
        return "-"
    f = ranked[0]
    rest = len({g["code"] for g in ranked}) - 1
    msg = " ".join(str(f.get("message") or "").split())
    text = f"{f['code']}({str(f.get('severity') or '?')[0]}): {msg}"
    more = f" (+{rest} more)" if rest else ""
    return (text if len(text) <= width else text[: width - 3] + "...") + more


def read_doc(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def with_review(verdict: str | None, said: str | None) -> str:
    """`quality_problem, REJECTED by ana` / `ok, accepted by bo` / `ok` (`said`: reviews.standing)."""
    if said and said.startswith("rejected"):
        said = "REJECTED" + said[len("rejected"):]
    return f"{verdict or '(no report)'}{', ' + said if said else ''}"


class Standing:
    """The latest review decision of each checkpoint, from reviews.jsonl as it is now."""

    def __init__(self, storage: Path) -> None:
        from lora_pipeline.report import reviews as rv

        self._rv = rv
        self.reviews = rv.read_review_log(storage).reviews

    def of(self, run_id: str, checkpoint_id: str) -> str | None:
        return self._rv.standing(self._rv.reviews_for(self.reviews, run_id, checkpoint_id))

    def verdict(self, verdict: str | None, run_id: str, checkpoint_id: str) -> str:
        return with_review(verdict, self.of(run_id, checkpoint_id))

    def rejected(self, run_id: str, checkpoint_id: str) -> bool:
        return (self.of(run_id, checkpoint_id) or "").startswith("rejected")


def best_of(run_doc: dict[str, Any] | None, standing: Standing) -> str | None:
    """The run report's best checkpoint, unless a review rejected it after the report was written (then
    the next candidate not rejected)."""
    run_id = str((run_doc or {}).get("run_id") or "")
    return next((c["checkpoint_id"] for c in (run_doc or {}).get("candidates") or []
                 if isinstance(c, dict) and c.get("checkpoint_id") and not standing.rejected(run_id, c["checkpoint_id"])),
                None)


def best_text(run_doc: dict[str, Any] | None, standing: Standing) -> str:
    if not run_doc:
        return "best checkpoint: (no run report)"
    best = best_of(run_doc, standing)
    if best:
        return f"best checkpoint {best}"
    if run_doc.get("best"):
        return f"best checkpoint: none ({run_doc['best']} was rejected by a reviewer)"
    return "best checkpoint: none (no checkpoint without an error, a collapse or a rejection)"


def summarise(storage: Path) -> tuple[list[tuple[str, ...]], list[str], list[Path]]:
    """(table rows, run-level lines, run report paths) from the reports under `storage`."""
    rows: list[tuple[str, ...]] = []
    lines: list[str] = []
    paths: list[Path] = []
    reports = storage / "reports"
    standing = Standing(storage)
    for run_dir in sorted(p for p in reports.iterdir() if p.is_dir()) if reports.is_dir() else []:
        for ck in sorted(p for p in run_dir.iterdir() if p.is_dir()):
            doc = read_doc(ck / "report.json")
            if doc is None:
                rows.append((run_dir.name, ck.name, "(no report)", ""))
                continue
            # Dataset and training findings hold for the whole run: they are listed once per run below.
            own = [f for f in doc.get("findings", []) if f.get("layer") not in RUN_WIDE_LAYERS]
            run_id, ck_id = str(doc.get("run_id", run_dir.name)), str(doc.get("checkpoint_id", ck.name))
            rows.append((run_id, ck_id, standing.verdict(doc.get("verdict", "?"), run_id, ck_id),
                         " ".join(top_codes(own)) or "-"))
        run_doc = read_doc(run_dir / "report.json")
        if run_doc is not None:
            paths.append(run_dir / "report.html")
            codes = top_codes(run_doc.get("findings", []), n=6)
            lines.append(f"{run_dir.name}: run verdict {run_doc.get('verdict')}; {best_text(run_doc, standing)}; "
                         f"{' '.join(codes) if codes else 'no run-level findings'}")
    return rows, lines, paths


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    all_rows = [header, *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    for i, r in enumerate(all_rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_summary(storage: Path, summary: Any = None) -> int:
    """Print the demo's closing summary; returns the number of checkpoints with a report. With the
    launch's `summary`, failed blocking checks are listed as the instance shows them."""
    rows, lines, paths = summarise(storage)
    print()
    print_table(rows, ("run", "checkpoint", "verdict", "checkpoint findings (e=error, w=warn, i=info)"))
    if lines:
        print("\nrun-wide findings (dataset, training, progression):")
        for line in lines:
            print(f"  {line}")
    for line in blocking_lines(summary) if summary is not None else []:
        print(line)
    print(f"\n{VERDICTS_NOTE}")
    if paths:
        print("\nrun reports:")
        for p in paths:
            print(f"  {p}")
    return sum(1 for r in rows if r[2] != "(no report)")


# -- failed blocking checks, as the Dagster instance records them -------------------------------------
def failed_blocking_checks(summary: Any) -> dict[tuple[str, str | None], list[str]]:
    """(asset, partition) -> one line per failed blocking check, as the instance of the launch records
    them: in the runs of its materialized outcomes, and in the latest materialization run of each dataset
    snapshot it found up to date (Dagster marks those runs failed). Empty when the instance is unreadable."""
    try:
        import dagster as dg

        from assets.launch_guard import open_instance

        instance = open_instance(Path(summary.dagster_home))
    except Exception:  # noqa: BLE001 - the summary must not fail on an unreadable instance
        return {}
    out: dict[tuple[str, str | None], list[str]] = {}
    try:
        runs = {o.dagster_run_id: o for o in summary.outcomes if o.status == "materialized" and o.dagster_run_id}
        for o in summary.outcomes:
            if o.status == "up_to_date" and o.asset == DATASET_ASSET and o.partition:
                recs = instance.fetch_materializations(dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey(DATASET_ASSET), asset_partitions=[o.partition]), limit=1).records
                if recs:
                    runs.setdefault(recs[0].run_id, o)
        for run_id, outcome in runs.items():
            conn = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            for rec in conn.records:
                ev = rec.event_log_entry.dagster_event
                data = ev.event_specific_data if ev is not None else None
                if data is None or data.passed or not getattr(data, "blocking", False):
                    continue
                codes = getattr((data.metadata or {}).get("codes"), "text", None) or ""
                why = " ".join(str(data.description or "").split())[:160]
                key = (data.asset_key.to_user_string(), getattr(data, "partition", None) or outcome.partition)
                out.setdefault(key, []).append(
                    f"blocking check {data.check_name} failed{f' ({codes})' if codes else ''}: {why or 'see the UI'}")
    except Exception:  # noqa: BLE001 - what was read so far is still said
        return out
    finally:
        instance.dispose()
    return out


def blocking_lines(summary: Any) -> list[str]:
    failed = failed_blocking_checks(summary)
    lines = []
    for (asset, partition), said in sorted(failed.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        for s in said:
            lines.append(f"{asset}[{partition}]: {s}")
    if lines:
        lines = ["\nfailed blocking checks (the Dagster UI shows these runs as failed; the asset was stored, "
                 "the evaluation went on, and every report of a run trained on it carries the finding):"] + \
                [f"  {line}" for line in lines]
    return lines
