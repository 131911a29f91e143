"""Evaluation renders: prove the runtime applies the LoRA, then render the controlled comparison.

Dagster-free core (the asset in assets/evaluation.py and the resource in resources/ only call it):

- spec.py       the explicit inputs: eval spec, run facts, base model choice, arms
- prompts.py    arm prompts, token counts with the pipeline's own tokenizers, prompt/trigger checks
- contract.py   base model and LoRA file checks before anything is loaded
- pipeline.py   device/dtype resolution, base pipeline loading and the per-process cache
- ../lora/load.py  the one path that loads a LoRA and proves it applied (counts, probe), and unloads it
- render_one.py one image: phases, per-step progress, heartbeat, observed settings
- manifest.py   the render manifest: one pandera schema, A1111 infotext, PNG chunks, sidecar
- ops.py        phase clock, heartbeat files, OOM classification, stale-worker scan, warm-up
- evaluate.py   one checkpoint end to end -> renders + evaluation.json
"""
