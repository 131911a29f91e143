"""`lora-pipeline check-dataset PATH [--trigger T] [--resolution PX] [--json]`: the dataset checks on a
folder, with no config, no storage and no Dagster. Exit 0 with the findings printed (findings are
not failures); exit 2 with one line for a missing or empty dataset or a bad argument."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="the dataset folder (any layout of CONTRACT section 1)")
    p.add_argument("--trigger", metavar="T", default=None, help="the token every caption should carry")
    p.add_argument("--resolution", metavar="PX", type=int, default=512,
                   help="training resolution; images with a shorter side are reported (default 512)")
    p.add_argument("--min-images", metavar="N", type=int, default=10, help="minimum image count (default 10)")
    p.add_argument("--base", metavar="DIR", default=None,
                   help="a diffusers base model folder whose tokenizer counts caption tokens "
                        "(without it the count is an estimate)")
    p.add_argument("--max-file-mb", metavar="MB", type=float, default=256.0,
                   help="dataset files larger than this are refused unread and reported (default 256)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    from lora_pipeline.cli import UsageError
    from lora_pipeline.dataset.checks import CheckInput, notes, run_checks
    from lora_pipeline.dataset.guard import display_path
    from lora_pipeline.dataset.layout import DatasetError
    from lora_pipeline.dataset.scan import scan_dataset
    from lora_pipeline.findings import verdict

    if args.resolution < 1:
        raise UsageError(f"--resolution: must be a positive number of pixels, got {args.resolution}")
    if args.min_images < 1:
        raise UsageError(f"--min-images: must be at least 1, got {args.min_images}")
    if not 0 < args.max_file_mb < float("inf"):
        raise UsageError(f"--max-file-mb: must be a positive number of MiB, got {args.max_file_mb}")
    if args.base is not None:
        from pathlib import Path

        if not Path(args.base).is_dir():
            raise UsageError(f"--base {args.base}: not a folder")
    try:
        scan = scan_dataset(args.path, max_file_bytes=int(args.max_file_mb * 1024 * 1024))
    except DatasetError as e:
        raise UsageError(str(e)) from None
    assert scan.frame is not None
    root = display_path(str(scan.root))
    inp = CheckInput(scan.frame, root, scan.listing.orphan_captions, scan.listing.refused_symlinks,
                     trigger=args.trigger, resolution=args.resolution, min_images=args.min_images,
                     tokenizer_base=args.base, excluded=scan.listing.excluded)
    findings = run_checks(inp)
    note_lines = notes(inp, scan.listing.metadata_decode_errors)
    if args.json:
        doc = {
            "dataset": root, "content_id": scan.content_id,
            "counts": {"images": scan.frame.height, "files": len(scan.files),
                       "orphan_captions": len(scan.listing.orphan_captions),
                       "refused": len(scan.listing.refused_symlinks), "excluded_folders": len(scan.listing.excluded)},
            "codes": sorted({f.code for f in findings}),
            "verdict": verdict(findings),
            "findings": [f.to_dict() for f in findings],
            "notes": note_lines,
        }
        print(json.dumps(doc, indent=1, ensure_ascii=False))
        return 0
    print(f"{root}: {scan.frame.height} images, {len(scan.files)} files, content id {scan.content_id}")
    for f in findings:
        print(f"{f.severity:5} {f.code}: {f.message}")
        ex = f.evidence.get("examples") or []
        if ex:
            more = f" (+{f.evidence['count'] - len(ex)} more)" if f.evidence.get("count", 0) > len(ex) else ""
            print(f"      e.g. {', '.join(ex[:5])}{' ...' if len(ex) > 5 else ''}{more}")
        print(f"      fix: {f.fix}")
    for n in note_lines:
        print(f"note  {n}")
    print(f"verdict: {verdict(findings)} ({len(findings)} finding(s))")
    return 0
