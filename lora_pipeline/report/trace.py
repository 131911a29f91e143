"""The backward walk (CONTRACT section 6): a render -> its manifest (from the PNG's own
`lora_pipeline` chunk, so a copied file works) -> the base model and the checkpoint file (path, sha256,
step) -> the training run (folder, format, config files) -> the dataset snapshot (id, manifest) ->
the source files and their stored copies (paths, sha256). Each step names the Dagster asset and
partition that produced it and the Dagster run id (the render's from its manifest; the others from the
instance, when one exists).

The chunk (and everything named only by it) is untrusted: its ids are used only when they name a run
and checkpoint storage holds, files are read only as trace_files.py allows, and every claim it makes is
checked against storage (the render is among the checkpoint's recorded renders, its settings are the
recorded ones, its manifest is the stored sidecar, its checkpoint hash and path are the run record's)
and every recorded hash against the disk now. `checks` lists each comparison with status
ok | mismatch | missing | unverifiable (with the reason); `summary` counts match / mismatch (missing
included) / unverifiable, and an unverifiable check is never counted as a match. A malformed field
gives `unverifiable: malformed manifest (field X)`. Stored snapshot objects are re-hashed (hash, not
size); a changed one is also a finding (`findings`, PROVENANCE.INCOMPLETE, naming the object).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_pipeline.config import Config
from lora_pipeline.report.trace_claims import Claims, malformed_under, parse_claims
from lora_pipeline.report.trace_files import (
    LIMITS,
    FileProblem,
    Roots,
    hash_file,
    hash_model,
    read_json,
)
from lora_pipeline.report.trace_format import format_trace
from lora_pipeline.storage import Storage, checkpoint_partition_key

__all__ = ["TraceError", "format_trace", "trace_image"]
SETTINGS = ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "scheduler")


class TraceError(Exception):
    """The image cannot be traced at all (unreadable, not a lora-pipeline render); one line."""


class _Checks:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, what: str, status: str, path: Any = None, expected: Any = None, now: Any = None,
            reason: str = "") -> dict[str, Any]:
        item = {"what": what, "path": None if path is None else str(path), "expected": expected, "now": now,
                "status": status, "reason": reason}
        self.items.append(item)
        return item

    def compare(self, what: str, expected: Any, now: Any, path: Any = None, reason: str = "") -> dict[str, Any]:
        ok = expected == now
        return self.add(what, "ok" if ok else "mismatch", path, expected, now, "" if ok else reason)

    def file(self, what: str, path: Any, expected: Any, roots: list[Path], where: str, limit: int,
             hasher: Callable[..., str] | None = None) -> dict[str, Any]:
        if not (isinstance(expected, str) and len(expected) == 64):
            return self.add(what, "unverifiable", path, expected, reason="no recorded sha256 to compare with")
        try:
            now = hasher() if hasher else hash_file(path, roots, where, limit)
        except FileProblem as e:
            return self.add(what, e.status, path, expected, reason=e.reason)
        return self.compare(what, expected, now, path, reason="the bytes on disk now hash differently")


RunLookup = Callable[[str, str], "str | None"]  # (asset, partition) -> Dagster run id of its latest materialization


def trace_image(config: Config, image: str | os.PathLike, run_lookup: RunLookup | None = None) -> dict[str, Any]:
    """The backward walk. `run_lookup` comes from the Dagster layer (assets/lookup.py); without it
    the walk works the same, with the run ids the files themselves record."""
    img = Path(image)
    if not img.is_file():
        raise TraceError(f"{img}: no such file")
    chunks = _read_chunks(img)
    m = chunks.get("lora_pipeline")
    if not isinstance(m, dict):
        raise TraceError(f"{img}: no lora_pipeline chunk: not a lora-pipeline render (or its metadata was stripped)")
    return _Walk(config, img, m, chunks.get("parameters"), run_lookup).run()


def _read_chunks(img: Path) -> dict[str, Any]:
    from lora_pipeline.render.manifest import read_png_chunks

    try:
        return read_png_chunks(img)
    except Exception as e:  # noqa: BLE001 - untrusted bytes: any parse failure means "not a render"
        raise TraceError(f"{img}: not a readable PNG with a lora_pipeline chunk ({type(e).__name__})") from None


class _Walk:
    def __init__(self, config: Config, img: Path, m: dict[str, Any], parameters: Any,
                 run_lookup: RunLookup | None) -> None:
        self.config, self.img, self.m, self.parameters = config, img, m, parameters
        self.roots = Roots.of(config)
        self.storage = Storage(self.roots.storage)
        self.lookup = run_lookup or (lambda _asset, _partition: None)
        self.checks = _Checks()
        self.c: Claims = parse_claims(m)
        self.record = self.ck = self.entry = None
        self.findings: list[dict[str, Any]] = []

    def runs(self, asset: str, partition: str | None) -> str | None:
        return self.lookup(asset, partition) if partition else None

    def run(self) -> dict[str, Any]:
        c = self.c
        for field_name, reason in c.malformed.items():
            self.checks.add(f"manifest field {field_name}", "unverifiable",
                            reason=f"malformed manifest (field {field_name}): {reason}")
        self._load_run()
        ids_ok = self.ck is not None
        ckey = checkpoint_partition_key(c.run_id, c.checkpoint_id) if ids_ok else None
        render = self._render(ckey)
        out: dict[str, Any] = {"image": str(self.img.resolve()), "render": render, "base_model": self._base(),
                               "checkpoint": self._checkpoint(ckey)}
        r = self.record
        if r is None:
            out["run"] = {"run_id": c.run_id, "missing": self._run_problem}
        else:
            out["run"] = {"run_id": r.run_id, "folder": r.folder, "format": r.format,
                          "run_json": str(self.storage.run_record(r.run_id)), "config_files": r.config_files,
                          "started_at": r.started_at, "trigger": r.trigger, "rank": r.rank, "alpha": r.alpha,
                          "learning_rate": r.learning_rate, "steps": r.steps, "resolution": r.resolution,
                          "sources": r.sources,
                          "dagster": {"asset": "training_run", "partition": r.run_id,
                                      "run_id": self.runs("training_run", r.run_id)}}
            from lora_pipeline.report.trace_snapshot import trace_snapshot

            out["dataset_snapshot"], out["source_files"], findings = trace_snapshot(
                self.storage, self.roots, r, self.checks, self.runs)
            self.findings += findings
        items = self.checks.items
        out["checks"] = items
        out["summary"] = {"match": sum(i["status"] == "ok" for i in items),
                          "mismatch": sum(i["status"] in ("mismatch", "missing") for i in items),
                          "unverifiable": sum(i["status"] == "unverifiable" for i in items)}
        out["mismatches"] = [i for i in items if i["status"] in ("mismatch", "missing")]
        out["unverifiable"] = [i for i in items if i["status"] == "unverifiable"]
        out["findings"] = self.findings
        return out

    # -- the run and its checkpoint, by validated id only -------------------------------------------
    def _load_run(self) -> None:
        from lora_pipeline.training.record import Roots as RecordRoots
        from lora_pipeline.training.record import RunRecord

        c, chk = self.c, self.checks
        self._run_problem = "the manifest names no valid run id"
        if c.run_id is None:
            return
        path = self.storage.run_record(c.run_id)
        try:
            known = c.run_id in os.listdir(self.storage.root / "runs")
        except OSError:
            known = False
        if not known:
            self._run_problem = f"no run {c.run_id!r} in storage ({self.storage.root / 'runs'})"
            chk.add("run record", "unverifiable", path, reason=self._run_problem)
            return
        try:
            doc = read_json(path, [self.roots.storage], "storage")
            doc.pop("schema_version", None)
            # its paths as they are in this workspace (a moved or copied one keeps tracing)
            self.record = RunRecord.from_dict(doc, RecordRoots.of(self.config))
        except FileProblem as e:
            self._run_problem = e.reason
        except Exception as e:  # noqa: BLE001 - a damaged record is reported, not raised
            self._run_problem = f"{path}: unreadable run record ({type(e).__name__})"
        if self.record is None:
            chk.add("run record", "unverifiable", path, reason=self._run_problem)
            return
        chk.add("run record", "ok", path)
        if c.checkpoint_id is None:
            return
        ids = [k.checkpoint_id for k in self.record.checkpoints]
        self.ck = self.record.checkpoint(c.checkpoint_id)
        if self.ck is None:
            chk.add("checkpoint in the run record", "unverifiable", path,
                     reason=f"run {c.run_id} records no checkpoint {c.checkpoint_id!r} (it has {', '.join(ids) or 'none'})")

    # -- the render: recorded for this checkpoint, same settings, same manifest as the stored sidecar --
    def _render(self, ckey: str | None) -> dict[str, Any]:
        c, chk = self.c, self.checks
        name = f"{c.prompt_index}-{c.seed}" if c.prompt_index is not None and c.seed is not None else None
        stored = (self.storage.renders_dir(c.run_id, c.checkpoint_id) / c.arm / f"{name}.png"
                  if self.ck is not None and c.arm and name else None)
        ev_path = self.storage.renders_dir(c.run_id, c.checkpoint_id) / "evaluation.json" if self.ck else None
        ev = self._json("render recorded for this checkpoint", ev_path) if ev_path else None
        if ev is not None:
            rows = [r for r in ev.get("renders") or [] if isinstance(r, dict)]
            self.entry = next((r for r in rows if r.get("arm") == c.arm and r.get("prompt_index") == c.prompt_index
                               and r.get("seed") == c.seed and not isinstance(r.get("seed"), bool)), None)
            if self.entry is not None:
                chk.add("render recorded for this checkpoint", "ok", ev_path)
            else:
                chk.add("render recorded for this checkpoint", "mismatch", ev_path,
                        reason=f"checkpoint {c.run_id}/{c.checkpoint_id} records no render arm {c.arm}, "
                               f"prompt {c.prompt_index}, seed {c.seed} (it records {len(rows)})")
        elif ev_path is None:
            chk.add("render recorded for this checkpoint", "unverifiable",
                    reason="the manifest names no run and checkpoint storage holds")
        e = self.entry
        img_real = self.img.resolve()
        chk.file("render file (as recorded by its evaluation)", str(img_real), e.get("sha256") if e else None,
                 [img_real], "the image", LIMITS["render"])
        if e is None:
            chk.add("render settings (as recorded by its evaluation)", "unverifiable",
                    reason="no recorded render to compare with")
        else:
            diff = [k for k in SETTINGS if getattr(c, k) is None or getattr(c, k) != e.get(k)]
            chk.add("render settings (as recorded by its evaluation)", "mismatch" if diff else "ok", ev_path,
                    reason=f"differs in {', '.join(diff)}" if diff else "")
        sidecar = self._json("render manifest (chunk vs stored sidecar)", stored.with_suffix(".json")) if stored \
            else None
        if stored is None:
            chk.add("render manifest (chunk vs stored sidecar)", "unverifiable",
                    reason="the manifest names no render storage holds")
        elif sidecar is not None:
            diff = sorted(k for k in set(sidecar) | set(self.m) if sidecar.get(k) != self.m.get(k))
            chk.add("render manifest (chunk vs stored sidecar)", "mismatch" if diff else "ok",
                    stored.with_suffix(".json"), reason=f"differs in {', '.join(diff[:12])}" if diff else "")
        self._parameters()
        return {"path": str(img_real), "stored_path": str(stored) if stored else None, "arm": c.arm,
                "prompt_index": c.prompt_index, "prompt": c.prompt, "negative_prompt": c.negative_prompt,
                "seed": c.seed, "size": f"{c.width}x{c.height}", "steps": c.steps, "scheduler": c.scheduler,
                "guidance_scale": c.guidance_scale, "created_at": c.created_at,
                "sidecar_matches_chunk": sidecar == self.m if sidecar is not None else None,
                "parameters": self.parameters if isinstance(self.parameters, str) else None,
                "dagster": {"asset": "eval_renders", "partition": ckey, "run_id": c.dagster_run_id}}

    def _parameters(self) -> None:
        """The A1111 `parameters` chunk says the same prompt, negative prompt, steps, seed, size, CFG
        and model hash as the manifest (compared by meaning: the infotext's exact wording may differ
        between lora-pipeline versions)."""
        from lora_pipeline.render.infotext import parse_infotext

        what, c = "A1111 parameters chunk (vs the manifest)", self.c
        if not isinstance(self.parameters, str):
            self.checks.add(what, "unverifiable", reason="no parameters chunk")
            return
        try:
            p = parse_infotext(self.parameters)
            params = {str(k): str(v) for k, v in p["params"].items()}
            cfg = float(params["CFG scale"]) if "CFG scale" in params else None
        except Exception:  # noqa: BLE001 - untrusted text: unparsable is reported, not raised
            self.checks.add(what, "mismatch", reason="not parsable as A1111 infotext")
            return
        said = {"prompt": (p["prompt"], c.prompt), "negative_prompt": (p["negative_prompt"], c.negative_prompt),
                "steps": (params.get("Steps"), None if c.steps is None else str(c.steps)),
                "seed": (params.get("Seed"), None if c.seed is None else str(c.seed)),
                "size": (params.get("Size"), None if c.width is None or c.height is None else f"{c.width}x{c.height}"),
                "guidance_scale": (cfg, c.guidance_scale),
                "model hash": (params.get("Model hash") or None, (c.base_model.get("sha256") or "")[:10] or None)}
        unknown = [k for k, (_, claimed) in said.items() if claimed is None]
        diff = [k for k, (there, claimed) in said.items() if claimed is not None and there != claimed]
        if diff:
            self.checks.add(what, "mismatch", reason=f"it says another {', '.join(diff)} than the manifest")
        elif unknown:
            self.checks.add(what, "unverifiable", reason=f"the manifest's {', '.join(unknown)} is malformed")
        else:
            self.checks.add(what, "ok")

    def _json(self, what: str, path: Path) -> dict[str, Any] | None:
        try:
            return read_json(path, [self.roots.storage], "storage")
        except FileProblem as e:
            status = "unverifiable" if e.status == "missing" and what.startswith("render recorded") else e.status
            self.checks.add(what, status, path, reason=e.reason)
            return None

    # -- the checkpoint: the render's claims vs the run record, the record vs the file now ----------
    def _checkpoint(self, ckey: str | None) -> dict[str, Any]:
        c, ck, chk = self.c, self.ck, self.checks
        lora = c.lora
        if ck is not None and c.arm is not None and not malformed_under(c, "lora"):
            if c.arm == "base":
                if lora is not None:
                    chk.add("checkpoint in the render manifest", "mismatch",
                            reason="a base-arm render names LoRA facts (base renders use no LoRA)")
            elif lora is None:
                chk.add("checkpoint in the render manifest", "mismatch", reason=f"a {c.arm} render names no LoRA")
            else:
                chk.compare("checkpoint sha256 (render manifest vs run record)", ck.sha256, lora["sha256"],
                            reason="the render names another checkpoint's bytes")
                known = [x for x in [ck.path, *(ck.aliases if isinstance(ck.aliases, list) else [])]
                         if isinstance(x, str)]
                same = lora["path"] in known
                chk.add("checkpoint path (render manifest vs run record)", "ok" if same else "mismatch",
                        lora["path"], ck.path, lora["path"],
                        "" if same else f"the run record's file for {c.checkpoint_id} is {ck.path}")
        check = None
        if ck is not None:
            check = chk.file("checkpoint file", ck.path, ck.sha256, [self.roots.training_runs],
                             f"training_runs ({self.roots.training_runs})", LIMITS["checkpoint"])
        return {"checkpoint_id": c.checkpoint_id, "path": ck.path if ck else None,
                "claimed_path": lora["path"] if lora else None,
                "sha256_at_render": lora["sha256"] if lora else None,
                "sha256_at_ingestion": ck.sha256 if ck else None, "step": ck.step if ck else None,
                "epoch": ck.epoch if ck else None, "used_by_this_render": lora is not None, "check": check,
                "dagster": {"asset": "lora_checkpoint", "partition": ckey,
                            "run_id": self.runs("lora_checkpoint", ckey)}}

    # -- the base model: a configured entry only, hashed there ------------------------------------
    def _base(self) -> dict[str, Any]:
        b, chk = self.c.base_model, self.checks
        out = {"name": b.get("name"), "path": b.get("path"), "sha256": b.get("sha256"),
               "architecture": b.get("architecture"), "check": None}
        if malformed_under(self.c, "base_model"):
            return out
        entry = self._base_entry(b)
        if entry is None:
            out["check"] = chk.add("base model", "unverifiable", b.get("path"), b.get("sha256"),
                                   reason=f"{b.get('name')!r} at {b.get('path')!r} is not a configured "
                                          "base_models entry; not read")
            return out
        name, real, declared = entry
        out["configured_entry"] = name
        item = chk.file("base model", str(real), b.get("sha256"), [real], f"base model {name}", LIMITS["model"],
                        hasher=lambda: hash_model(real, declared))
        if item["status"] == "ok" and b.get("path") is not None and not _same_path(b["path"], declared, real):
            item.update(status="mismatch", reason=f"same bytes, but the render names {b['path']}, "
                                                  f"the configured entry {name} is {declared}")
        out["check"] = item
        return out

    def _base_entry(self, b: dict[str, Any]) -> tuple[str, Path, Path] | None:
        cfg = self.config.base_models
        for name, real in self.roots.base_models.items():
            declared = Path(os.path.abspath(cfg[name]))
            if b.get("name") == name or (b.get("path") and _same_path(b["path"], declared, real)):
                return name, real, declared
        return None


def _same_path(claimed: str, declared: Path, real: Path) -> bool:
    try:
        return os.path.abspath(claimed) == str(declared) or Path(os.path.realpath(claimed)) == real
    except (ValueError, OSError):
        return False

