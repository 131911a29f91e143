"""The files of the by-value test, shared by conftest.py and the tests (one module object, so the
verdict table filled by the fixtures is the one the tests and the terminal summary see)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.lora_files import builders as B
from tests.lora_files import builders_peft as P


@dataclass(frozen=True)
class Case:
    name: str
    arch: str
    build: Callable[..., B.Built]
    source: str | None = None  # aligned copies: the file they copy


# Every file of the acceptance test, in build order. LoRA-family files (diffusers/peft can represent
# them exactly) are listed in LORA_FAMILY; LoHa/LoKr/DoRA may be refused (recorded in the table).
CASES = [
    Case("kohya_sd1", "sd1", B.kohya_sd1),
    Case("kohya_sd1_block_alpha_dynamic", "sd1", B.kohya_sd1_block_alpha_dynamic),
    Case("kohya_sd1_locon_conv", "sd1", B.kohya_sd1_locon),
    Case("kohya_sdxl_sgm", "sdxl", B.kohya_sdxl),
    Case("lycoris_locon", "sd1", B.lycoris_locon),
    Case("lycoris_loha", "sd1", B.lycoris_loha),
    Case("lycoris_lokr", "sd1", B.lycoris_lokr),
    Case("lycoris_dora", "sd1", B.lycoris_dora),
    Case("lycoris_sdxl_loha", "sdxl", B.lycoris_sdxl_loha),
    Case("lycoris_sdxl_lokr", "sdxl", B.lycoris_sdxl_lokr),
    Case("peft_sd1", "sd1", P.peft_sd1),
    Case("peft_sd1_tf5_names", "sd1", P.peft_sd1_tf5),
    Case("peft_sdxl", "sdxl", P.peft_sdxl),
    Case("peft_rank_alpha_pattern", "sd1", P.peft_patterns_sd1),
    Case("native", "sd1", P.native_sd1),
    Case("header_len_0x80", "sd1", lambda src, out: P.aligned_kohya(src, out, b"\x80"), source="kohya_sd1"),
    Case("header_len_PK", "sd1", lambda src, out: P.aligned_kohya(src, out, b"PK"), source="kohya_sd1"),
]
RENDERED = [c.name for c in CASES]
LORA_FAMILY = ["kohya_sd1", "kohya_sd1_block_alpha_dynamic", "kohya_sd1_locon_conv", "kohya_sdxl_sgm",
               "lycoris_locon", "peft_sd1", "peft_sd1_tf5_names", "peft_sdxl", "peft_rank_alpha_pattern",
               "native", "header_len_0x80", "header_len_PK"]
PICKLES = {"pickle_zip": False, "pickle_legacy": True}  # name -> legacy (pre-zip) torch.save format
KNOWN_UNSUPPORTED = {"lycoris_dora": "RUNTIME.LORA_PARTIAL"}  # dora_scale has no diffusers/peft carrier

TABLE: dict[str, dict[str, Any]] = {}
