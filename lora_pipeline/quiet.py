"""Keep third-party chatter (import-time notices, loading progress bars) out of our output.

Our own progress is shown by the CLI's bars and Dagster's logs; diffusers' and transformers' bars
for loading a 5-component toy model only bury it. Call `quiet_libraries()` before heavy imports.
"""

from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: every path is local
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
