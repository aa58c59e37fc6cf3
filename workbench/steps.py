"""Split a response into reasoning steps and find its final-answer span F (attnpo-method.md §1).

The think block is the text before the first ``</think>``; everything after it is the answer.
Two presets cut the think block into steps:

- ``r1``: the official AttnPO segmenter.  One regex alternation of trigger phrases (longest
  first, case-sensitive, no word boundaries, ``finditer``); progression and summary phrases count
  only right after a ``"\\n"``; then segments under 80 characters are merged by kind.  The
  official phrase list fuses ``"No,"`` and ``"Let me double-check"`` into one string through a
  missing comma; ``fused_phrase_bug=True`` (default) keeps that, False uses the two phrases.
- ``organism``: one step per newline-led word (``"\\nNow"``, ``"\\nWait"``, ...), no merging.
  A step's span starts at its ``"\\n"`` and runs to the next step's ``"\\n"``, so it ends with
  the space that separates it from the next step; ``text.strip()`` gives its words.

Token spans follow §1.6 and always index the ids that were actually scored: each token's
characters come from decoding those ids (`token_char_offsets`), never from re-tokenising text,
which can give different ids.  Step k = [tok(c_k), tok(c_{k+1})), the first step starts at 0, the
last ends at the token holding the ``"<"`` of ``</think>``, and F runs from the token after the
one holding its ``">"`` to the end (EOS included).  ``</think>`` may be one token or several.

Responses that cannot be segmented come back with ``ok=False`` and a reason, never an exception.
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass, field
from collections.abc import Sequence

THINK_CLOSE = "</think>"
MIN_SEGMENT_CHARS = 80  # official min_segment_chars: shorter segments get merged
MIN_OTHER_CHARS = 15  # official min_onther_chars: a summary this short past its trigger merges right
PRESETS = ("r1", "organism")

# Trigger kinds: 1 confused/branch (split anywhere), 2 progression and 3 summary (only after "\n"),
# 4 the final-answer heading (split anywhere, never absorbed rightwards).
CONFUSED = (
    "Wait", "But", "However", "Hold on", "Looking back", "I don't see any errors", "Hmm, wait", "Hmm, no",
    "Hmm, but", "Hmm, just", "Hmm, let me double-check", "Hmm, let me verify", "Hmm, let me make sure",
    "Hmm, let me check", "No,Let me double-check", "Let me just double-check", "Let's double-check",
    "Let's just double-check", "Just to double-check", "Let me verify", "Let me just verify", "Let's verify",
    "Let's just verify", "Just to verify", "Let me confirm", "Let me just confirm", "Let's confirm",
    "Let's just confirm", "Just to confirm", "Let me check", "Let me just check", "Let's check",
    "Let's just check", "Just to check", "Let me recap", "Let me just recap", "Let's recap", "Let's just recap",
    "Just to recap", "Let me make sure", "Let me just make sure", "Let's make sure", "Just to make sure",
    "So, is", "Is it", "Is that right?", "Is there", "Right?",
)
BRANCH = (
    "Alternatively", "Another approach", "Another way", "Another idea", "Another thought", "I guess another way",
    "I guess another approach", "Let me just think if there",
)
PROGRESSION = (
    "Let me", "Let's", "I ", "We ", "Okay", "Hmm", "Now", "Alright", "First,", "First off,", "Second,", "Third,",
    "Starting", "Then", "Next", "Finally", "Similarly", "Again", "In this case", "Because", "Given that",
    "The problem gives", "To ", "Since",
)
SUMMARY = ("So", "Therefore", "Thus", "Hence", "Hmm, so", "Okay, so", "Putting it all together")
FINAL_ANSWER = ("**Final Answer",)
FUSED_PHRASE = "No,Let me double-check"
UNFUSED_PHRASES = ("No,", "Let me double-check")


@dataclass
class Segmentation:
    """Steps and answer span of one response.  Spans are meaningful only when ``ok``.

    `segment_text` fills the character fields only (``steps == []``, ``answer == (0, 0)``,
    ``think_close is None``); `segment_ids` fills both.
    """

    ok: bool
    reason: str | None
    step_texts: list[str] = field(default_factory=list)
    step_char_spans: list[tuple[int, int]] = field(default_factory=list)  # into the response text
    step_kinds: list[int] = field(default_factory=list)
    steps: list[tuple[int, int]] = field(default_factory=list)  # token spans, relative to the response
    answer: tuple[int, int] = (0, 0)  # F: (tok(</think>) + 1, len(response_ids))
    think_close: int | None = None  # index of the token holding the "<" of </think>

    def absolute(self, prompt_len: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
        """Step spans and F shifted into prompt + response coordinates."""
        if not self.ok or self.think_close is None:
            raise ValueError(f"no token spans to shift (ok={self.ok}, reason={self.reason!r}; "
                             "segment_text gives character spans only)")
        steps = [(s + prompt_len, e + prompt_len) for s, e in self.steps]
        return steps, (self.answer[0] + prompt_len, self.answer[1] + prompt_len)


@functools.lru_cache(maxsize=2)
def r1_phrases(fused_phrase_bug: bool = True) -> tuple[re.Pattern, dict[str, int]]:
    """The official trigger regex (longest phrase first) and each phrase's kind."""
    confused = [p for phrase in CONFUSED
                for p in ((phrase,) if fused_phrase_bug or phrase != FUSED_PHRASE else UNFUSED_PHRASES)]
    kinds: dict[str, int] = {}
    for kind, phrases in ((4, FINAL_ANSWER), (3, SUMMARY), (2, PROGRESSION), (1, BRANCH), (1, confused)):
        kinds.update(dict.fromkeys(phrases, kind))  # confused last: the official classifier tests it first
    # Python's alternation takes the first alternative that matches, so longest-first = longest match.
    pattern = re.compile("|".join(map(re.escape, sorted(kinds, key=len, reverse=True))))
    return pattern, kinds


@dataclass
class _Segment:
    start: int
    end: int
    trigger: str | None
    kind: int


def _r1_segments(think: str, fused_phrase_bug: bool) -> list[_Segment]:
    """attnpo-method.md §1.2-1.4: trigger boundaries, then the merging of short segments."""
    pattern, kinds = r1_phrases(fused_phrase_bug)
    triggers: dict[int, str | None] = {0: None}  # the first segment has no trigger and counts as kind 2
    for m in pattern.finditer(think):  # a rejected match still consumes its characters, as officially
        if kinds[m.group()] in (2, 3) and (m.start() == 0 or think[m.start() - 1] != "\n"):
            continue
        triggers[m.start()] = m.group()
    starts = list(triggers) + [len(think)]
    segs = [_Segment(s, e, triggers[s], 2 if triggers[s] is None else kinds[triggers[s]])
            for s, e in zip(starts, starts[1:])]

    def merge(j: int) -> None:  # segment j absorbs segment j + 1 and keeps its own trigger and kind
        segs[j : j + 2] = [_Segment(segs[j].start, segs[j + 1].end, segs[j].trigger, segs[j].kind)]

    i = 0
    while i < len(segs):  # after any merge the same index is tested again
        seg, n = segs[i], len(segs)
        length = seg.end - seg.start
        can_merge_right = i + 1 < n and segs[i + 1].kind != 4
        if length < MIN_SEGMENT_CHARS and seg.kind != 4:
            if seg.kind == 1:
                if can_merge_right:
                    merge(i)
                    continue
            elif i + 1 < n - 1 and segs[i + 1].kind == 1:  # kind 2/3 before a confused step joins the left
                if i > 0:
                    merge(i - 1)
                    i -= 1
                    continue
            elif seg.kind == 2:
                if can_merge_right:
                    merge(i)
                    continue
            else:  # kind 3
                if length - len(seg.trigger or "") <= MIN_OTHER_CHARS and can_merge_right:
                    merge(i)
                    continue
                if i > 0:
                    merge(i - 1)
                    i -= 1
                    continue
        i += 1
    return segs


_NEWLINE_WORD = re.compile(r"(?<![^ ])\n")  # a "\n" at the start of the text or right after a space


def _organism_segments(think: str, fused_phrase_bug: bool) -> list[_Segment]:
    """One step per newline-led word; its kind is that of the r1 phrase it opens with (default 2)."""
    pattern, kinds = r1_phrases(fused_phrase_bug)
    starts = sorted({0, *(m.start() for m in _NEWLINE_WORD.finditer(think))}) + [len(think)]
    segs = []
    for s, e in zip(starts, starts[1:]):
        m = pattern.match(think, s + (think[s] == "\n"), e)
        segs.append(_Segment(s, e, m and m.group(), kinds[m.group()] if m else 2))
    return segs


_SEGMENTERS = {"r1": _r1_segments, "organism": _organism_segments}


def _check_preset(preset: str) -> None:
    if preset not in _SEGMENTERS:
        raise ValueError(f"unknown segmentation preset {preset!r}; choose one of {PRESETS}")


def segment_text(response: str, preset: str = "r1", fused_phrase_bug: bool = True) -> Segmentation:
    """Character-level steps of a decoded response (special tokens already removed)."""
    _check_preset(preset)
    if not isinstance(response, str):
        raise TypeError(f"segment_text needs the response text, got {type(response).__name__}")
    if THINK_CLOSE not in response:
        return Segmentation(False, "no </think>")
    think, answer_text = response.split(THINK_CLOSE, 1)
    if not think:
        return Segmentation(False, "empty think block")
    segs = _SEGMENTERS[preset](think, fused_phrase_bug)
    seg = Segmentation(True, None, [think[s.start : s.end] for s in segs], [(s.start, s.end) for s in segs],
                       [s.kind for s in segs])
    if len(segs) < 2:
        seg.ok, seg.reason = False, "fewer than two steps"
    elif not answer_text.strip():
        seg.ok, seg.reason = False, "no answer after </think>"
    return seg


def token_char_offsets(tokenizer, ids: Sequence[int], context: int = 8) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of ``ids`` (special tokens skipped) and each token's [start, end) in it.

    A token's characters are what decoding adds when the token is appended to up to ``context``
    preceding tokens (which gives decoders their word separators and leading-space rules).  A
    byte-level piece that ends inside a UTF-8 character adds nothing yet; the character belongs to
    the token that completes it.  Special tokens get empty spans.  The pieces must add up to the
    decode of all ids, else ValueError: the offsets are exact or not given.
    """
    ids = [int(t) for t in ids]
    windows = []
    for i in range(len(ids)):
        j = max(0, i - context)
        windows += [ids[j:i], ids[j : i + 1]]
    texts = tokenizer.batch_decode(windows + [ids], skip_special_tokens=True)
    full = texts.pop()
    offsets, pieces = [], []
    for i in range(len(ids)):
        before = texts[2 * i].rstrip("\ufffd")  # drop a trailing partial character
        after = texts[2 * i + 1] if i == len(ids) - 1 else texts[2 * i + 1].rstrip("\ufffd")
        if not after.startswith(before):
            raise ValueError(f"token {i} (id {ids[i]}): decoding is not incremental here "
                             f"({before[-20:]!r} -> {after[-20:]!r}); cannot place its characters")
        start = offsets[-1][1] if offsets else 0
        pieces.append(after[len(before) :])
        offsets.append((start, start + len(pieces[-1])))
    if "".join(pieces) != full:
        raise ValueError("decoding the ids token by token does not reproduce their decoded text; "
                         "cannot place the tokens' characters")
    return full, offsets


def segment_ids(tokenizer, response_ids: Sequence[int], preset: str = "r1",
                fused_phrase_bug: bool = True) -> Segmentation:
    """Token-exact steps and F of a response's actual ids (EOS included when present).

    Raises ValueError only when the ids' characters cannot be placed (see `token_char_offsets`).
    """
    text, offsets = token_char_offsets(tokenizer, response_ids)
    seg = segment_text(text, preset, fused_phrase_bug)
    if not seg.ok:
        return seg
    ends = [e for _, e in offsets]

    def tok(c: int) -> int:  # the token whose characters include c (empty special tokens hold none)
        return bisect.bisect_right(ends, c)

    close = text.index(THINK_CLOSE)
    seg.think_close = tok(close)
    starts = [0] + [tok(s) for s, _ in seg.step_char_spans[1:]] + [seg.think_close]
    seg.steps = list(zip(starts, starts[1:]))
    seg.answer = (tok(close + len(THINK_CLOSE) - 1) + 1, len(offsets))
    empty = [k for k, (s, e) in enumerate(seg.steps) if e <= s]
    if empty:
        seg.ok, seg.reason = False, f"step {empty[0]} has no token of its own (its start shares a token)"
    elif seg.answer[0] >= seg.answer[1]:
        seg.ok, seg.reason = False, "no tokens after </think>"
    return seg


def segment_batch(items: Sequence[str] | Sequence[Sequence[int]], tokenizer=None, preset: str = "r1",
                  fused_phrase_bug: bool = True) -> list[Segmentation]:
    """Segment many responses: texts, or id lists when a tokenizer is given.

    One bad item never stops the batch: it comes back with ``ok=False`` and a reason naming it.
    """
    _check_preset(preset)
    out = []
    for i, item in enumerate(items):
        try:
            if tokenizer is None:
                out.append(segment_text(item, preset, fused_phrase_bug))
            else:
                out.append(segment_ids(tokenizer, item, preset, fused_phrase_bug))
        except Exception as e:  # noqa: BLE001 -- the batch must survive any single item
            out.append(Segmentation(False, f"item {i}: {type(e).__name__}: {e}"))
    return out
