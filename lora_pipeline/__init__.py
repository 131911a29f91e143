"""lora-pipeline: prove the evaluation path of a diffusion LoRA, then judge it.

The domain core: it knows nothing of Dagster (see lora_pipeline/definitions.py for that layer).
"""

__version__ = "0.1.0"
