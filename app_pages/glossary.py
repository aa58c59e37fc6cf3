"""The app's terms in plain words, once: each page opens a popover with the ones it uses."""

from __future__ import annotations

import streamlit as st

from analyses.ablation import CONDITION_WORDS
from analyses.stability import MEASURES

TERMS = {
    "KFH": "**Key-Focus Head**: an attention head whose attention, while the model writes its final answer, "
           "goes to the reasoning steps that matter. KFHs are the top-N heads by SRA on the discovery split.",
    "F": "**F**: the final answer: the tokens after `</think>`, EOS included. |F| is their number.",
    "S_k": "**S_k** (step score): how much the answer F looks at step k: the attention of every answer token "
           "to the step's tokens, summed over the answer tokens and averaged over the step's tokens. "
           "*KFH mean* averages it over the chosen KFHs.",
    "S_base": "**S_base** (AttnPO's step baseline) = p^β · |F| / (|q| + |o|): the score a step would get if "
              "the answer spread its attention evenly over the whole prompt q and response o, scaled by the "
              "pass rate p. Steps above it are *protected* on a wrong rollout (no penalty), steps below "
              "it are *attenuated* on a right one (less credit).",
    "SRA": "**SRA** (Step Ranking Accuracy) of a head: over each trace's pairs of (critical step, redundant "
           "step), the share where the head gives the critical step the higher score S_k (ties count "
           "half), averaged over traces. **0.5 is chance** (a coin flip), 1.0 a perfect ranking, below 0.5 "
           "the head prefers the redundant steps.",
    "split": "**Discovery / held-out**: the traces are split in two halves. Heads are ranked, and KFHs chosen, "
             "on the *discovery* half; the SRA shown by default is measured on the *held-out* half, so a "
             "head's number is not inflated by having been picked on the same traces.",
    "CI": "**95% CI**: a bootstrap confidence interval of the held-out SRA, resampling traces.",
    "sra_redundant_first": "**sra_redundant_first**: held-out SRA on the traces where some redundant step "
                           "comes *before* some critical step. There, a head that simply prefers early "
                           "steps cannot win, so this tells position from content.",
    "baselines": "**Trivial rankers**: score steps without the model (*earlier* ranks earlier steps higher, "
                 "*longer* longer steps, *random* at random). A head is interesting only above them.",
    "labels": "**Step labels**: *critical* steps compute something the answer needs; *redundant* ones "
              "(re-checks, restatements, detours) do not; *plan* is the organism's opening line, left out "
              "of SRA. Organism labels are exact; uploaded traces are labelled by counterfactual log-prob "
              "drops or by Thought Anchors chunk tags.",
    "ablation": "**Step ablation**: from a correct trace, remove m steps (never the plan), then sample "
                "answers and count how many are right (pass@k), and/or score the trace's own answer after "
                "the cut trace (log p). Conditions: "
                + "; ".join(f"*{k}*: {v}" for k, v in CONDITION_WORDS.items())
                + ". High scores should matter: removing them should cost the most.",
    "forced": "**forced** mode: after the cut trace, `</think>` is appended and only the answer is sampled. "
              "**continue** mode: the model may keep reasoning from the cut trace first.",
    "pass@k": "**pass@k**: the chance that at least one of k sampled answers is right (unbiased estimate "
              "from n samples per trace), averaged over traces; error bars are 95% CIs over traces.",
    "log p": "**log p** (log-prob measure): the trace's own answer F is teacher-forced right after the cut "
             "trace and `</think>`, and its log-probability read (in total and per token; also the reference "
             "answer's, right after F's `\\boxed{`). No sampling, so it moves even on a model that never "
             "gets the answer right; the table gives means over traces with 95% bootstrap CIs, the gaps "
             "are paired per trace (e.g. *low - high*: how much more removing the high-score steps costs).",
    "stability": "**Stability**: on one fixed trace set, each checkpoint's per-head SRA and KFH step scores, "
                 "compared with the first checkpoint: "
                 + "; ".join(f"*{v}* (`{k}`)" for k, v in MEASURES.items()) + ".",
    "training": "**Training metrics** (per RL step, on the training rollouts): *accuracy*, *response tokens*, "
                "*reward*; *share of steps attenuated* (Pos-Adv scaled down their credit) and *protected* "
                "(Neg-Adv removed their penalty); *attenuated steps truly redundant*: of the attenuated "
                "steps, the share the organism's labels call redundant.",
}


def glossary(*names: str) -> None:
    """A popover with the definitions of ``names`` (keys of ``TERMS``)."""
    with st.popover("Glossary", icon=":material/help:"):
        for name in names:
            st.markdown(TERMS[name])


def page_header(title: str, *names: str) -> None:
    """The page title with its glossary popover beside it."""
    left, right = st.columns([5, 1], vertical_alignment="bottom")
    left.title(title)
    with right:
        glossary(*names)
