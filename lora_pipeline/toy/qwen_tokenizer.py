"""A Qwen-style byte-level BPE tokenizer trained locally with `tokenizers` (no hub), for FLUX.2.

Shaped like Qwen3's: Qwen's pre-tokenisation regex, byte-level symbols with no end-of-word suffix,
NFC, `<|endoftext|>` as pad, `<|im_start|>`/`<|im_end|>` chat markers (`<|im_end|>` is eos), and
`<think>`/`</think>`. The chat template reproduces what Qwen3's renders for the only conversation
`Flux2KleinPipeline` builds (one user turn, `add_generation_prompt=True`, `enable_thinking=False`).
Saved with `Qwen2TokenizerFast.save_pretrained`, which the pipeline's `from_pretrained` loads.
"""

from __future__ import annotations

from pathlib import Path

from lora_pipeline.toy.tokenizer import _corpus

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
THINK, END_THINK = "<think>", "</think>"
# The pipeline pads and truncates every prompt to max_sequence_length=512 tokens, chat markup
# included; model_max_length says the same so that token counts warn where the pipeline truncates.
QWEN_MAX_LENGTH = 512
QWEN_VOCAB_SIZE = 4000  # above what the corpus can reach: training learns every possible merge
# Qwen2/3's pre-tokenisation pattern (transformers' Qwen2Tokenizer uses the same).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


def train_qwen_tokenizer(out_dir: str | Path) -> Path:
    """Train the BPE deterministically and save it as a Qwen2 tokenizer folder."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    out = Path(out_dir)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=QWEN_VOCAB_SIZE, min_frequency=1, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    # Chat markup goes through the BPE too (role names, newlines), so it is part of the corpus.
    tok.train_from_iterator(_corpus() + ["user\n assistant\n \n\n"], trainer=trainer)
    vocab, merges = _canonical(tok)
    qwen = Qwen2TokenizerFast(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=IM_END,
        pad_token=ENDOFTEXT, model_max_length=QWEN_MAX_LENGTH, errors="replace",
    )
    # The markers' ids follow the BPE vocabulary in Qwen's order (see _canonical); the think markers
    # are plain (non-special) added tokens there.
    qwen.add_tokens([AddedToken(t, special=True, normalized=False) for t in (ENDOFTEXT, IM_START, IM_END)],
                    special_tokens=True)
    qwen.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK, END_THINK)])
    qwen.chat_template = CHAT_TEMPLATE
    qwen.save_pretrained(out)
    return out


def _canonical(tok) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab + merges in a canonical order (the trainer breaks frequency ties in hash-map order;
    see toy/tokenizer.py): byte symbols, merges by merged length then lexicographically, markers."""
    import json

    from tokenizers import pre_tokenizers

    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    merges.sort(key=lambda m: (len(m[0]) + len(m[1]), m[0] + m[1], m[0]))
    vocab: dict[str, int] = {}
    for t in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(t, len(vocab))
    for a, b in merges:
        for t in (a, b, a + b):
            vocab.setdefault(t, len(vocab))
    for t in (ENDOFTEXT, IM_START, IM_END, THINK, END_THINK):
        vocab.setdefault(t, len(vocab))
    return vocab, merges
