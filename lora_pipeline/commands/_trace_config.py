"""Which config `trace IMAGE` walks with when none was named (no --config, no LORA_PIPELINE_CONFIG).

A render's chunk names its run and checkpoint, and the LoRA file it used; the walk needs the config
whose storage holds that run. Candidates, first that holds it wins:
1. `./lora_pipeline.yaml` (the usual case: trace run from the folder holding the config);
2. a `lora_pipeline.yaml` in the image's folder or any folder above it (a render still in storage);
3. a `lora_pipeline.yaml` in the folder of the LoRA file the chunk names, or any folder above it (the
   run folders sit inside the workspace: a copied render finds its workspace this way);
4. the embedded demo config (the demo workspace).
"Holds" = storage has `runs/<run_id>/run.json` for the chunk's (validated) run id. The chunk is
untrusted: only its ids that pass the CONTRACT alphabet are used, a path it names is only walked up
(at most MAX_UP folders) looking for a regular file of that one name, and each candidate is a config
file parsed with the bounded loader. Nothing found: one line naming the run and what was searched,
and how to name the config (exit 2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MAX_UP = 40
MAX_PATH = 4096


def _ups(path: Any) -> list[Path]:
    if not isinstance(path, str) or not path or len(path) > MAX_PATH or "\x00" in path:
        return []
    try:
        p = Path(os.path.abspath(path))
    except (ValueError, OSError):
        return []
    return [p.parent, *p.parent.parents][:MAX_UP]


def _holds(config, run_id: str) -> bool:
    from lora_pipeline.storage import Storage

    try:
        return Storage(Path(config.storage)).run_record(run_id).is_file()
    except OSError:
        return False


def config_for_image(image: str, cli_config: str | None) -> tuple[Any, str | None]:
    """(config, how it was found: None when named or in the current folder). Raises UsageError /
    ConfigError (one line each)."""
    from lora_pipeline.cli import UsageError
    from lora_pipeline.config import (
        CONFIG_ENV,
        CONFIG_FILENAME,
        ConfigError,
        demo_dir,
        find_config_file,
        load_config,
    )
    from lora_pipeline.report.trace_files import valid_id

    if cli_config or os.environ.get(CONFIG_ENV):
        return load_config(cli_config), None
    m = _chunk(image)
    run_id = m.get("run_id") if m else None
    local = find_config_file(None)
    if not valid_id(run_id):  # not a render, or no valid run id: the walk says so
        return load_config(None), None
    lora = m.get("lora") if m else None
    tried: list[str] = []
    candidates: list[tuple[Path | None, str]] = [(local, "the current folder")] if local is not None else []
    candidates += [(d / CONFIG_FILENAME, "a folder holding the image") for d in _ups(str(Path(image).resolve()))]
    candidates += [(d / CONFIG_FILENAME, "a folder holding the LoRA file its manifest names")
                   for d in _ups(lora.get("path") if isinstance(lora, dict) else None)]
    candidates.append((None, "the demo workspace"))
    seen: set[Path | None] = set()
    for path, how in candidates:
        if path in seen or (path is not None and not path.is_file()):
            continue
        seen.add(path)
        try:
            config = load_config(path) if path is not None else _demo_config()
        except ConfigError as e:
            tried.append(f"{path} ({e})")
            continue
        if _holds(config, run_id):
            return config, None if path == local else f"{config.source_label}, found in {how}"
        tried.append(str(path) if path is not None else f"the demo workspace {demo_dir()}")
    raise UsageError(f"{image}: its manifest names run {run_id!r}, which the storage of no config found holds "
                     f"(tried: {'; '.join(tried)}): run trace from the folder holding the lora_pipeline.yaml whose "
                     f"storage has that run, or name it with --config FILE (or {CONFIG_ENV})")


def _demo_config():
    from lora_pipeline.config import demo_config_text, demo_dir, parse_config

    return parse_config(demo_config_text(), root=demo_dir(), source=None)


def _chunk(image: str) -> dict[str, Any] | None:
    from lora_pipeline.render.manifest import read_png_chunks

    if not Path(image).is_file():
        return None
    try:
        m = read_png_chunks(Path(image)).get("lora_pipeline")
    except Exception:  # noqa: BLE001 - untrusted bytes: trace_image reports it
        return None
    return m if isinstance(m, dict) else None
