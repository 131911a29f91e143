"""A CLIP-format BPE tokenizer trained locally with `tokenizers` (no hub, no download).

Written as vocab.json + merges.txt (+ tokenizer_config.json, special_tokens_map.json) so that
`transformers.CLIPTokenizer.from_pretrained` loads it like the real CLIP tokenizer: lower-cased,
byte-level symbols, `</w>` end-of-word suffix, `<|startoftext|>`/`<|endoftext|>`, 77 positions.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 77
VOCAB_SIZE = 4000  # above what the corpus can reach: training learns every possible merge
# CLIP's pre-tokenisation pattern (contractions, letter runs, single digits, punctuation runs).
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

_WORDS = """
a an the of on in at with and or to from by for photo picture image render studio product shot
chair table lamp vase mug bottle cup bowl sofa stool bench shelf clock plant book box ball cube
cone sphere pyramid ring red green blue yellow orange purple pink white black gray grey brown
wooden metal glass plastic ceramic stone soft bright dark light morning evening golden hour
living room kitchen bedroom office garden outdoor indoor background backdrop white-background
close-up closeup wide angle front side top view left right center centered small large tall
short round square modern vintage minimal simple plain textured striped dotted shiny matte
sks sks_chair ohwx tok zwx trigger style person dog cat car house tree sky sea mountain city
blurry lowres low quality worst bad anatomy watermark text signature jpeg artifacts deformed
masterpiece best high quality beautiful 8k 4k detailed ultra realistic photorealistic sharp focus
""".split()


def _corpus() -> list[str]:
    lines = [" ".join(_WORDS)]
    # Every printable ASCII character as a word of its own, so each has a `c</w>` symbol.
    lines.append(" ".join(string.ascii_letters + string.digits))
    lines.append(" ".join(string.punctuation))
    # Deterministic pseudo-captions to give the merges realistic frequencies.
    n = len(_WORDS)
    for i in range(400):
        words = [_WORDS[(i * 7 + k * 13) % n] for k in range(8)]
        lines.append("a photo of " + " ".join(words))
    return lines


def train_clip_tokenizer(out_dir: str | Path, vocab_size: int = VOCAB_SIZE, corpus: list[str] | None = None) -> Path:
    """Train the tokenizer deterministically (on `corpus`, the toy corpus by default) and write it in
    CLIP's file format."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=EOS, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(_corpus() if corpus is None else corpus, trainer=trainer)
    _write_canonical(tok, out)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
        "do_lower_case": True, "errors": "replace",
    }, indent=1) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
    }, indent=1) + "\n")
    return out


def _write_canonical(tok, out: Path) -> None:
    """Write vocab.json + merges.txt in a canonical order.

    The trainer learns the same *set* of merges on every run (the vocabulary budget exceeds what the
    corpus offers, so every merge is learned), but breaks frequency ties in hash-map order, so ids
    and merge ranks differ between runs. Ordering merges by the length of the merged token, then
    lexicographically, is deterministic and valid BPE (a merge's parts are shorter than its result).
    The vocabulary is laid out like CLIP's: byte symbols, byte symbols + `</w>`, merges, specials.
    """
    from tokenizers import pre_tokenizers

    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    merges.sort(key=lambda m: (len(m[0]) + len(m[1]), m[0] + m[1], m[0]))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for t in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(t, len(vocab))
    for a, b in merges:
        for t in (a, b, a + b):
            vocab.setdefault(t, len(vocab))
    for t in (BOS, EOS):
        vocab.setdefault(t, len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
