"""Prompt templates and the paper's sentence clean-up.

A TP template holds ``{text}`` (the sentence, after clean-up) and ``{pst}`` (where the
placeholder goes). With TP on, ``{pst}`` becomes ``"<PST> "`` (the placeholder token and one
space); with TP off it becomes ``""``, so TP off is the same prompt without the placeholder.

An HTP template (hierarchical Token Prepending, Ding et al., 2025) holds ``{text}`` only: the
placeholders go inside the text, a ``<PST>`` before each sentence and as many ``<B-PST>`` at its
start (``render_passage`` says where); HTP off is the same prompt without any placeholder.

The built-in templates are the exact strings of the Token Prepending paper's experiments
(Fu et al., ACL 2025), which in turn come from PromptEOL (Jiang et al., 2023), Pretended CoT and
Knowledge Enhancement (Zhang et al., 2024) and MetaEOL (Lei et al., 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

PLACEHOLDER = "<PST>"
"""The placeholder token added to the tokenizer, as in the paper."""
BOUNDARY_PLACEHOLDER = "<B-PST>"
"""HTP's second placeholder: one copy per sentence at the start of the text."""

_METAEOL_TAIL_ENHANCE = 'To enhance the performance of this task, this sentence : {pst}"{text}"'

BUILTIN_PROMPTS: dict[str, tuple[str, ...]] = {
    "prompteol": ('This sentence : {pst}"{text}" means in one word:"',),
    "pcot": ('After thinking step by step , this sentence : {pst}"{text}" means in one word:"',),
    "ke": (
        "The essence of a sentence is often captured by its main subjects and actions, while "
        "descriptive terms provide additional but less central details. With this in mind , this "
        'sentence : {pst}"{text}" means in one word:"',
    ),
    "metaeol": (
        "In this task, you're presented with a text excerpt. Your task is to categorize the "
        "excerpt into a broad category such as 'Education', 'Technology', 'Health', 'Business', "
        "'Environment', 'Politics', or 'Culture'. These categories help in organizing content for "
        'better accessibility and targeting. For this task, this sentence : {pst}"{text}" should '
        'be classified under one general category in one word:"',
        "In this task, you're given a statement and you need to determine whether it's presenting "
        "an 'Opinion' or a 'Fact'. This distinction is vital for information verification, "
        'educational purposes, and content analysis. For this task, this sentence : {pst}"{text}" '
        'discriminates between opinion and fact in one word:"',
        "In this task, you're given a review from an online platform. Your task is to generate a "
        "rating for the product based on the review on a scale of 1-5, where 1 means 'extremely "
        "negative' and 5 means 'extremely positive'. For this task, this sentence : "
        '{pst}"{text}" reflects the sentiment in one word:"',
        "In this task, you're reading a personal diary entry. Your task is to identify the "
        "predominant emotion expressed, such as joy, sadness, anger, fear, or love. For this task, "
        'this sentence : {pst}"{text}" conveys the emotion in one word:"',
        "In this task, you're presented with two sentences. Your task is to assess whether the "
        "sentences convey the same meaning. Use 'identical', 'similar', 'different', or "
        f"'unrelated' to describe the relationship. {_METAEOL_TAIL_ENHANCE} means in one word:\"",
        "In this task, you're given a sentence and a phrase. Your task is to determine if the "
        "phrase can be a contextual synonym within the given sentence. Options include 'yes', "
        f"'no', or 'partially'. {_METAEOL_TAIL_ENHANCE} means in one word:\"",
        "In this task, you're examining a news article. Your task is to extract the most critical "
        'fact from the article. For this task, this sentence : {pst}"{text}" encapsulates the key '
        'fact in one word:"',
        "In this task, you're reviewing a scientific abstract. Your task is to identify the main "
        "entities (e.g., proteins, diseases) and their relations (e.g., causes, treats). For this "
        'task, this sentence : {pst}"{text}" highlights the primary entity or relation in one '
        'word:"',
    ),
}
"""Built-in prompt name -> its templates (MetaEOL has 8, whose vectors are averaged)."""

HTP_PROMPTS: dict[str, tuple[str, ...]] = {
    "htp-document": ("{text}",),
    "htp-query": ("Retrieve relevant document. Text:{text}",),
}
"""Built-in HTP templates (the HTP paper's): documents are the text alone, queries carry the
retrieval instruction. The model's EOS token closes every HTP prompt."""

PROMPT_METHODS: dict[str, dict[str, tuple[str, ...]]] = {"tp": BUILTIN_PROMPTS, "htp": HTP_PROMPTS}
"""Method -> its built-in prompts."""


@dataclass(frozen=True)
class RenderedPrompt:
    """One prompt string and where the sentence and the placeholder sit in it (character spans)."""

    text: str
    text_span: tuple[int, int]
    """From the text's first character to its last (placeholders inside it included)."""
    placeholder_start: int | None
    """TP: where ``<PST>`` starts; ``None`` for TP off and for HTP."""
    sentence_starts: tuple[int, ...] = ()
    """HTP on: where each sentence starts (its ``<PST>`` goes before the token there)."""


def resolve_prompt(prompt: str, method: str = "tp") -> tuple[str, ...]:
    """Return the templates of a built-in prompt name, or validate a custom template.

    TP templates hold ``{text}`` and ``{pst}`` once each; HTP templates hold ``{text}`` once
    and no ``{pst}`` (HTP places its own placeholders).

    >>> resolve_prompt("prompteol")
    ('This sentence : {pst}"{text}" means in one word:"',)
    >>> resolve_prompt("htp-query", "htp")
    ('Retrieve relevant document. Text:{text}',)
    """
    if method not in PROMPT_METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(PROMPT_METHODS)}")
    builtin = PROMPT_METHODS[method]
    if prompt in builtin:
        return builtin[prompt]
    names = ", ".join(sorted(builtin))
    for other, prompts in PROMPT_METHODS.items():
        if other != method and prompt in prompts:
            raise ValueError(
                f"prompt {prompt!r} is a built-in {other.upper()} prompt, but method={method!r}; "
                f"use one of {method.upper()}'s ({names}) or set method={other!r}"
            )
    if method == "htp":
        if prompt.count("{text}") != 1 or "{pst}" in prompt:
            raise ValueError(
                f"prompt {prompt!r} is neither a built-in HTP prompt name ({names}) nor an HTP "
                "template: an HTP template contains {text} exactly once and no {pst} (HTP puts "
                "its placeholders inside the text), e.g. 'Represent this passage:{text}'."
            )
        return (prompt,)
    missing = [field for field in ("{text}", "{pst}") if prompt.count(field) != 1]
    if missing:
        raise ValueError(
            f"prompt {prompt!r} is neither a built-in prompt name "
            f"({names}) nor a custom template: a template must "
            f"contain {' and '.join(missing)} exactly once, e.g. "
            '\'This passage : {pst}"{text}" means in one word:"\'.'
        )
    return (prompt,)


def is_builtin(prompt: str) -> bool:
    """True for the names of the TP paper's prompts (those the sentence clean-up is for)."""
    return prompt in BUILTIN_PROMPTS


def clean_sentence(text: str) -> str:
    """The paper's clean-up: end with a full stop, no double quotes, no final question mark.

    Appends ``.`` unless the text ends in one of ``. ? " '``, replaces ``"`` with ``'`` (the
    template itself quotes the sentence), and turns a final ``?`` into ``.``.

    >>> clean_sentence('Is it "raining"?')
    "Is it 'raining'."
    """
    if text and text[-1] not in ".?\"'":
        text += "."
    text = text.replace('"', "'")
    if text.endswith("?"):
        text = text[:-1] + "."
    return text


def render(template: str, text: str, *, tp: bool) -> RenderedPrompt:
    """Fill a template with a (cleaned) sentence, with or without the placeholder.

    >>> render('S : {pst}"{text}" means', "Hi.", tp=True).text
    'S : <PST> "Hi." means'
    """
    before, after = template.split("{text}")
    pst = f"{PLACEHOLDER} " if tp else ""
    before_filled = before.replace("{pst}", pst)
    after_filled = after.replace("{pst}", pst)
    start = len(before_filled)
    if not tp:
        placeholder_start = None
    elif "{pst}" in before:
        placeholder_start = before.index("{pst}")
    else:  # placeholder after the sentence in a custom template
        placeholder_start = start + len(text) + after.index("{pst}")
    return RenderedPrompt(
        text=before_filled + text + after_filled,
        text_span=(start, start + len(text)),
        placeholder_start=placeholder_start,
    )


def render_passage(
    template: str, text: str, sentence_ends: list[int], *, tp: bool
) -> RenderedPrompt:
    """Fill an HTP template; with ``tp``, also say where each sentence starts.

    The prompt string never holds the placeholders: the encoder inserts their ids into the
    token ids of this string (``<B-PST>`` x n where the text starts, ``<PST>`` before the first
    token of each sentence). Added tokens are matched differently by each tokenizer (Llama-2's
    normalizer finds ``<PST>`` only after a space), whereas inserted ids leave the text's own
    tokens exactly as in running text, and HTP off is the same ids without the placeholders.

    ``sentence_ends`` are the character offsets in ``text`` where each sentence's last
    non-blank character ends (``tp_rag.sentences.sentence_ends``). Sentence ``k`` starts where
    sentence ``k - 1`` ends, so the blank between two sentences belongs to the later one, as
    its first word's leading space does in running text.

    >>> render_passage("Q:{text}", "Hi there. Bye.", [9, 14], tp=True).sentence_starts
    (2, 11)
    """
    before, after = template.split("{text}")
    start = len(before)
    starts = (start, *(start + end for end in sentence_ends[:-1])) if tp and sentence_ends else ()
    return RenderedPrompt(
        before + text + after, (start, start + len(text)), None, sentence_starts=starts
    )
