"""A T5-style Unigram (SentencePiece-like) tokenizer trained locally with `tokenizers` (no hub).

Shaped like the T5 tokenizer of SD3 and FLUX.1: `<pad>`=0, `</s>`=1, `<unk>`=2, `▁` word-start
markers (Metaspace), case kept, `</s>` appended, 512 positions. Saved with
`T5TokenizerFast.save_pretrained` (tokenizer.json + tokenizer_config.json), so
`T5TokenizerFast.from_pretrained` loads it as the pipelines do. No sentinel `<extra_id_N>` tokens:
diffusion pipelines never use them.
"""

from __future__ import annotations

from pathlib import Path

from lora_pipeline.toy.tokenizer import _corpus

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
T5_MAX_LENGTH = 512  # the real T5 tokenizer's model_max_length, and FLUX.1's max_sequence_length cap
T5_VOCAB_SIZE = 2000  # an upper bound: the toy corpus yields a few hundred pieces
SCORE_DECIMALS = 6


def train_t5_tokenizer(out_dir: str | Path) -> Path:
    """Train the Unigram model deterministically and save it as a T5 tokenizer folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    out = Path(out_dir)
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    trainer = trainers.UnigramTrainer(
        vocab_size=T5_VOCAB_SIZE, special_tokens=[PAD, EOS, UNK], unk_token=UNK,
        max_piece_length=16, show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    t5 = T5TokenizerFast(vocab=_canonical_vocab(tok), extra_ids=0, model_max_length=T5_MAX_LENGTH)
    t5.save_pretrained(out)
    return out


def _canonical_vocab(tok) -> list[tuple[str, float]]:
    """The trained pieces with rounded scores, in a fixed order.

    The trainer's EM sums in parallel, so scores differ between runs in their last bits; rounding
    makes them stable (the piece set itself is stable). Order: the three specials at T5's ids, then
    by score (best first) and piece.
    """
    import json

    pieces = json.loads(tok.to_str())["model"]["vocab"]
    specials = [(PAD, 0.0), (EOS, 0.0), (UNK, 0.0)]
    rest = {p: round(float(s), SCORE_DECIMALS) for p, s in pieces if p not in (PAD, EOS, UNK)}
    return specials + sorted(rest.items(), key=lambda ps: (-ps[1], ps[0]))
