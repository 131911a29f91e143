"""Metadata the Dagster UI shows on an asset page: images, report links, findings tables.

What Dagster 1.13.27's UI does with each metadata type (dagster-webserver's bundled ui-core,
`metadata/MetadataEntry.tsx`; the asset page passes `expandSmallValues`):

- there is no image metadata type; `MetadataValue.md` renders inline only when the markdown is under
  1,000 characters, else it hides behind "[Show Markdown]" (a dialog). Markdown images are allowed
  (http(s), data: and relative URLs pass the UI's sanitizer), so an image shows inline only as a
  short markdown image whose URL serves the PNG. A data: URI of any useful image is far over 1,000.
- `MetadataValue.url` is a link opened in a new tab; `MetadataValue.path` is text with a copy
  button; a `file://` URL from the http page is blocked by the browser.
- `MetadataValue.table` renders every column inline, each cell as plain text.

The webserver itself serves files at `/logs/<key...>/<extension>`: the compute-log download route,
which returns any file under the instance's local compute-log folder (`$DAGSTER_HOME/storage` by
default) as an attachment. `served()` writes a copy there under `lora_pipeline/`, named by its
content hash (each materialization keeps the image it showed), and returns that root-relative URL,
which works on any host and port the UI is opened on (`lora-pipeline ui`, `dagster dev`,
`dagster-webserver`) as long as the step and the webserver share the instance folder, as they do on
one machine. With another compute-log manager (cloud storage), `served()` returns None and the
callers fall back to what needs no server: the image as a data: URI behind "[Show Markdown]".
Not handled: a webserver started with `--path-prefix` (the URLs have no prefix).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg

NAMESPACE = "lora_pipeline"


def served(instance: dg.DagsterInstance | None, key: list[str], data: bytes, extension: str) -> str | None:
    """Copy `data` to where the Dagster webserver serves it; the URL path, or None when it cannot."""
    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

    from lora_pipeline.fsutil import atomic_write_bytes

    manager = getattr(instance, "compute_log_manager", None)
    if not isinstance(manager, LocalComputeLogManager):
        return None
    full = [NAMESPACE, *key[:-1], f"{key[-1]}-{hashlib.sha256(data).hexdigest()[:16]}"]
    path = Path(manager.get_captured_local_path(full, extension))
    if not path.is_file():
        atomic_write_bytes(path, data)
    return "/logs/" + "/".join(full) + "/" + extension


def image(instance: dg.DagsterInstance | None, key: list[str], png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG shown inline on the asset page (see the module docstring for where it is served from)."""
    import base64

    alt = alt.replace("[", "(").replace("]", ")")
    url = served(instance, key, png, "png")
    if url:
        return dg.MetadataValue.md(f"![{alt}]({url})")
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def report_link(instance: dg.DagsterInstance | None, key: list[str], html_file: Path) -> dg.MetadataValue | None:
    """A link to a copy of a report.html that the webserver hands out as a download (a click saves the
    self-contained page; it opens from the downloads folder in any browser). None when not servable."""
    try:
        data = html_file.read_bytes()
    except OSError:
        return None
    url = served(instance, key, data, "html")
    return dg.MetadataValue.url(url) if url else None


FINDING_COLUMNS = (
    ("code", "the finding code (docs/findings.md)"),
    ("severity, message and fix", "error, warn or info; what was observed; what to do about it. The subject, "
                                  "whole, is in report.json and the HTML report"),
)
_SCHEMA = dg.TableSchema(columns=[dg.TableColumn(name, "string", description=d) for name, d in FINDING_COLUMNS])
_ORDER = {"error": 0, "warn": 1, "info": 2}


def findings_table(findings: list[dict]) -> dg.MetadataValue:
    """The findings, errors first, as a table that keeps the message and the fix readable.

    The UI renders each cell as monospace text in a pane that is ~450 px wide on a partition's page of
    a 1400 px window, and every column takes at least its longest unbreakable word: a code ~250 px,
    a path more. Message and fix beside severity, code and subject columns got ~80 px each (one word
    a line). So: two columns, the code, and one text that wraps in what is left."""
    if not findings:
        return dg.MetadataValue.text("no findings")
    rows = sorted(findings, key=lambda f: _ORDER.get(f.get("severity"), 3))
    return dg.MetadataValue.table(
        [dg.TableRecord({"code": str(f.get("code")), "severity, message and fix":
                         f"{f.get('severity')}: {str(f.get('message'))[:600]}"
                         + (f" Fix: {str(f.get('fix'))[:400]}" if f.get("fix") else "")}) for f in rows],
        schema=_SCHEMA)
