"""Arm prompts (CONTRACT section 2) and the prompt checks, counted with the pipeline's own tokenizers.

- `{trigger}` is replaced by the trigger (trigger arms) or removed with the punctuation around it
  tidied (`lora_no_trigger`); a prompt without `{trigger}` gets `"<trigger>, "` prepended.
- Token counts use every text encoder of the pipeline with the limit the pipeline applies and the
  text it really tokenizes (render/families.py: SDXL two CLIPs; SD3 two CLIPs + T5 at 256; FLUX.1
  CLIP + T5 at 512; FLUX.2 Klein Qwen at 512 inside its chat template), for the positive prompt and
  for the negative one where the pipeline uses it. Over the limit -> RUNTIME.PROMPT_TRUNCATED; the
  trigger's tokens past the limit -> RUNTIME.TRIGGER_TRUNCATED.
"""

from __future__ import annotations

import re
from typing import Any

from lora_pipeline.findings import Finding
from lora_pipeline.render.families import TextEncoder, guidance, negative_ignored, text_encoders
from lora_pipeline.render.spec import EvalSpec, RunFacts

_STOPWORDS = frozenset("""a an the of on in at with and or to from by for is are be this that it its as into
onto over under near very some any no not without""".split())


def arm_prompt(template: str, trigger: str | None, with_trigger: bool) -> str:
    trig = (trigger or "").strip()
    if "{trigger}" not in template:
        return f"{trig}, {template}" if (with_trigger and trig) else template
    if with_trigger and trig:
        return template.replace("{trigger}", trig)
    return tidy(template.replace("{trigger}", ""))


def tidy(text: str) -> str:
    """Collapse the gap a removed trigger leaves: doubled spaces/commas, leading/trailing punctuation."""
    s = re.sub(r"\s+", " ", text)
    s = re.sub(r"\s+([,.;:!?])", r"\1", s)
    s = re.sub(r"([,;:])(\s*[,;:])+", r"\1", s)
    s = re.sub(r"^[\s,;:.]+|[\s,;:]+$", "", s)
    return re.sub(r"\s+", " ", s).strip()


def _content_ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False, truncation=False).input_ids)


def _specials(tok: Any) -> tuple[int, int]:
    """(tokens added before, tokens added after) the content."""
    full = len(tok("a", truncation=False).input_ids)
    bare = len(_content_ids(tok, "a"))
    before = 1 if getattr(tok, "bos_token_id", None) is not None and full - bare >= 2 else 0
    return before, full - bare - before


def trigger_span(tok: Any, prompt: str, trigger: str) -> tuple[int, int] | None:
    """Token positions [start, end) of the trigger's last occurrence in the encoded prompt."""
    idx = prompt.rfind(trigger)
    if idx < 0 or not trigger:
        return None
    before, _ = _specials(tok)
    start = before + len(_content_ids(tok, prompt[:idx].rstrip()))
    return start, start + len(_content_ids(tok, trigger))


def encoder_words(name: str, enc: TextEncoder) -> str:
    """'the CLIP text encoder (tokenizer_2)': the tokenizer's family, then the pipeline attribute."""
    kind = type(enc.tokenizer).__name__.lower()
    family = next((f for f in ("CLIP", "T5", "Qwen", "Gemma", "Llama") if f.lower() in kind), None)
    return f"the {family} text encoder ({name})" if family else f"the text encoder of {name}"


def check_prompt(encoders: dict[str, TextEncoder], prompt: str, negative: str | None, trigger: str | None,
                 subject: str, where: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
    """Truncation findings for one resolved prompt (and its negative, None when the pipeline does not
    use it) and the token counts."""
    findings: list[Finding] = []
    texts = {"prompt": prompt, "negative_prompt": negative}
    counts = {kind: {name: len(enc.tokenizer(enc.frame(text), truncation=False).input_ids)
                     for name, enc in encoders.items()}
              for kind, text in texts.items() if text is not None}
    for kind, by_encoder in counts.items():
        for name, n in by_encoder.items():
            limit = encoders[name].limit
            if n > limit:
                findings.append(Finding("RUNTIME.PROMPT_TRUNCATED", subject,
                                        f"The {kind.replace('_', ' ')} is {n} tokens long for "
                                        f"{encoder_words(name, encoders[name])}, which reads only the first "
                                        f"{limit}: the last {n - limit} never reach the model.",
                                        {**where, "which": kind, "tokenizer": name, "tokens": n, "limit": limit,
                                         "text": texts[kind]}))
    if trigger and trigger in prompt:
        for name, enc in encoders.items():
            tok, limit = enc.tokenizer, enc.limit
            span = trigger_span(tok, enc.frame(prompt), trigger)
            _, after = _specials(tok)
            if span and span[1] > limit - after:
                findings.append(Finding("RUNTIME.TRIGGER_TRUNCATED", subject,
                                        f"The trigger {trigger!r} is at tokens {span[0] + 1}-{span[1]} of the "
                                        f"prompt for {encoder_words(name, enc)}, which reads only the first "
                                        f"{limit}: the model never sees the trigger.",
                                        {**where, "tokenizer": name, "trigger_tokens": list(span), "limit": limit,
                                         "prompt": prompt}))
    return findings, counts


def check_trigger(tokenizers: dict[str, Any], generation: str | None, references: dict[str, str | None],
                  subject: str) -> list[Finding]:
    """RUNTIME.TRIGGER_MISMATCH: the generation trigger against the captions' / metadata's trigger."""
    out = []
    if not generation:
        return out
    for source, ref in references.items():
        if not ref:
            continue
        ids = {name: (_content_ids(tok, generation), _content_ids(tok, ref)) for name, tok in tokenizers.items()}
        spelled = generation.strip() != ref.strip()
        tokens_differ = {n: {"generation": a, "reference": b} for n, (a, b) in ids.items() if a != b}
        if spelled or tokens_differ:
            out.append(Finding("RUNTIME.TRIGGER_MISMATCH", subject,
                               f"The generation trigger {generation!r} differs from the {source} trigger {ref!r}"
                               + (" in token ids" if tokens_differ else " in spelling") + ".",
                               {"generation": generation, "reference": ref, "source": source,
                                "spelling_differs": spelled, "token_ids": tokens_differ}))
    return out


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9][a-z0-9_'-]*", text.lower()) if w not in _STOPWORDS and len(w) > 1}


def check_negative(prompt: str, negative: str, subject: str, where: dict[str, Any]) -> list[Finding]:
    both = sorted(content_words(prompt) & content_words(negative))
    if not both:
        return []
    return [Finding("RUNTIME.NEGATIVE_CONTRADICTS", subject,
                    f"The negative prompt asks to avoid {', '.join(both)}, which the prompt asks for.",
                    {**where, "words": both, "prompt": prompt, "negative_prompt": negative})]


def check_spec_prompts(encoders: dict[str, TextEncoder], templates: tuple[str, ...] | list[str], negative: str,
                       trigger: str | None, references: dict[str, str | None], subject: str,
                       negative_used: bool = True) -> tuple[list[Finding], dict[tuple, dict]]:
    """Every prompt check of an eval spec for one run: the trigger against its references, each
    prompt with and without the trigger on every encoder (a finding once per code, encoder and
    prompt; once per negative text), and the negative prompt against each prompt where the pipeline
    uses it. Returns the findings and the token counts per (prompt index, with trigger)."""
    tokenizers = {name: enc.tokenizer for name, enc in encoders.items()}
    findings = check_trigger(tokenizers, trigger, references, subject)
    counts_by_arm: dict[tuple, dict] = {}
    seen: set[tuple] = set()
    for pi, template in enumerate(templates):
        for with_trigger in (True, False):
            text = arm_prompt(template, trigger, with_trigger)
            found, counts = check_prompt(encoders, text, negative if negative_used else None,
                                         trigger if with_trigger else None, subject,
                                         {"prompt_index": pi, "with_trigger": with_trigger})
            counts_by_arm[(pi, with_trigger)] = counts
            for f in found:
                ev = f.evidence
                key = (f.code, ev.get("which"), ev.get("tokenizer"),
                       ev.get("text") if ev.get("which") == "negative_prompt" else (pi, with_trigger))
                if key not in seen:
                    seen.add(key)
                    findings.append(f)
        if negative_used:
            findings += check_negative(arm_prompt(template, trigger, True), negative, subject, {"prompt_index": pi})
    return findings, counts_by_arm


def check_pipeline_prompts(pipe: Any, spec: EvalSpec, facts: RunFacts, report: Any, subject: str
                           ) -> tuple[dict[str, Any], list[Finding], dict[tuple, dict]]:
    """The prompt checks of one evaluation on its loaded pipeline: whether the negative prompt is applied
    (families.guidance), then `check_spec_prompts` with the trigger the captions and the LoRA file's
    metadata (lora/inspect.py's report, or None) declare. Returns (guidance, findings, token counts)."""
    sem = guidance(pipe, spec.guidance_scale, spec.negative_prompt)
    findings = negative_ignored(sem, spec.negative_prompt, subject)
    metadata_trigger = report.declared.get("trigger") if report is not None else None
    found, token_counts = check_spec_prompts(
        text_encoders(pipe), spec.prompts, spec.negative_prompt, facts.trigger,
        {"captions": facts.caption_trigger, "metadata": metadata_trigger}, subject,
        negative_used=sem["negative_prompt"] == "applied")
    return sem, findings + found, token_counts
