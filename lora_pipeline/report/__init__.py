"""Reports (issue 7): the diagnosis of each checkpoint and of each run, from the evidence the dataset,
training and evaluation layers left in storage, plus the backward walk (trace) and review decisions.
No Dagster here; assets/reports.py and the CLI call these modules.

- `diagnosis`: findings of every layer for one checkpoint -> verdict -> report.json (CONTRACT section 4)
- `checkpoint_html` / `run_html`: self-contained report.html files (images inline, links relative)
- `run`: the run report (progression, signals over steps, candidates for the best checkpoint)
- `reviews`: the append-only reviews.jsonl
- `trace`: render -> manifest -> checkpoint -> run -> snapshot -> source files, hashes re-checked
"""
