"""`DiffusionRuntime`: the diffusion runtime as a Dagster resource (device and dtype from config).

The work is in the Dagster-free core (lora_pipeline/render): the base pipeline is loaded lazily, once
per process, cached by (base identity, dtype, device) in a module-level cache, so an in-process run
reuses it across all its checkpoints (`base_loads()` counts real loads). Per checkpoint the LoRA is
loaded under a unique adapter name, made the only active adapter, verified, rendered and deleted;
never fused. After any exception it is unloaded and emptiness asserted, or the pipeline discarded.
Only `.safetensors` files are loaded (extension checked by us). Nothing heavy is imported at module
level: the code location loads without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

if TYPE_CHECKING:
    from lora_pipeline.render.evaluate import EvaluationInputs, EvaluationResult


class DiffusionRuntime(dg.ConfigurableResource):
    """device: auto | cpu | cuda | cuda:N | mps; dtype: auto | float32 | float16 | bfloat16."""

    device: str = "auto"
    dtype: str = "auto"
    _resolved: tuple[str, str] | None = PrivateAttr(default=None)

    def resolved(self) -> tuple[str, str]:
        """(device, dtype) actually used on this worker; PipelineLoadError (one line) if unavailable."""
        if self._resolved is None:
            from lora_pipeline.render.pipeline import resolve_device, resolve_dtype

            device = resolve_device(self.device)
            self._resolved = (device, resolve_dtype(self.dtype, device))
        return self._resolved

    def evaluate(self, inputs: EvaluationInputs, log: Callable[[str], None] = lambda _m: None,
                 call_hook: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> EvaluationResult:
        from dataclasses import replace

        from lora_pipeline.render.evaluate import evaluate_checkpoint

        device, dtype = self.resolved()
        return evaluate_checkpoint(replace(inputs, device=device, dtype=dtype), log=log, call_hook=call_hook)

    @staticmethod
    def base_loads() -> int:
        from lora_pipeline.render.pipeline import BASE_LOADS

        return BASE_LOADS["count"]

    @staticmethod
    def adapters_loaded() -> dict[str, dict[str, list[str]]]:
        """Adapters in place on every cached pipeline (empty between checkpoints)."""
        from lora_pipeline.lora.load import adapters_in_place
        from lora_pipeline.render.pipeline import _CACHE

        return {str(k): adapters_in_place(e.pipe) for k, e in list(_CACHE.items()) if e.pipe is not None}
