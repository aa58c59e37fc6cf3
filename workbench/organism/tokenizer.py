"""The organism's word-level tokenizer: one token per space-separated word, saved as ``tokenizer.json``.

Step-opening words carry their newline (``"\\nNow"``), so decoding (tokens joined by single
spaces) gives back exactly the canonical text that was encoded, and character offsets map to
token ids with no drift.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from workbench.organism import task

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"


def vocabulary(extra_words: Sequence[str] = ()) -> list[str]:
    """Every word the task can write, specials first, then an organism's ``extra_words`` (ids are
    stable across rebuilds, and an organism with extra words keeps the base ids)."""
    words = [PAD, BOS, EOS, UNK]
    words += [str(i) for i in range(10)] + task.VARIABLES
    words += [task.value_word(v) for v in range(10)] + [task.op_word(op, k) for op, k in task.OPERATIONS]
    words += [task.ref_word(n, op, k) for n in task.VARIABLES for op, k in task.OPERATIONS]
    words += ["=", ";", ".", ",", "?", "What", "is", task.THINK_OPEN, task.THINK_CLOSE,
              task.BOX_OPEN, task.BOX_CLOSE, "\nNeed", *task.PROGRESS_WORDS]
    for opener, closer in task.RECHECK_FORMS + task.RESTATE_FORMS:
        words += opener + closer
    return list(dict.fromkeys([*words, *extra_words]))


def build_tokenizer(extra_words: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A fast tokenizer that splits on single spaces only (newlines stay inside their word) and
    prepends ``<bos>`` when asked for special tokens, as a Llama tokenizer does."""
    words = vocabulary(extra_words)
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
    bos_id = words.index(BOS)
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        clean_up_tokenization_spaces=False, model_max_length=512,
    )
    # AutoTokenizer maps model_type "qwen2" to Qwen2Tokenizer, which rebuilds a byte-level BPE and
    # ignores this tokenizer.json.  An auto_map naming the generic backend skips that mapping (for
    # qwen2, transformers never runs remote code from it), so AutoTokenizer loads this file as is.
    tok.init_kwargs["auto_map"] = {"AutoTokenizer": [None, "TokenizersBackend"]}
    return tok
