"""The token layout of a WiM reading, built around the model's own chat template.

    head           <chat header of a user turn> ```\\n          once, into the cache
    document       segment 0 | segment 1 | ...                  into the cache, one segment at a time
    margin ask     \\n```\\n <extract what bears on the query> <end of turn, assistant header>
                   generated, then cropped back out after each segment
    final ask      \\n```\\n [notes: relevant margins] <question> <end of turn, assistant header>

The baseline is the same layout with no notes, so WiM and baseline differ only by the margins.
The classifier is a separate, short conversation (no document).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ChatFrame",
    "chat_frame",
    "classifier_prompt",
    "encode",
    "final_request",
    "head",
    "margin_request",
]

_SENTINEL = "\x00WIM\x00"

MARGIN_ASK = (
    'Given the above context, extract all information relevant to the query: "{question}". '
    'If the context is not relevant to the query, answer "I don\'t know."'
)
CLASSIFY_ASK = (
    'I asked an assistant whether a piece of a document is related to the query: "{question}". '
    "This is its answer:\n```text\n{margin}\n```\n"
    "Answer YES if the answer contains information about the query, NO if it says the piece is not "
    "related to the query. Reply with YES or NO."
)
NOTES_HEADER = "Notes taken while reading the document:\n"


@dataclass(frozen=True)
class ChatFrame:
    user_header: str
    """Text before a user message's content (system prompt included, if the template adds one)."""
    generation_header: str
    """Text after the content: end of the user turn and the assistant's header."""


def chat_frame(tokenizer) -> ChatFrame:
    """The text around one user message in ``tokenizer``'s chat template (plain text without one)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return ChatFrame("", "\nAnswer: ")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True, tokenize=False
    )
    before, after = text.split(_SENTINEL)
    return ChatFrame(before, after)


def encode(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` with no BOS/EOS added (special tokens written in the text are parsed)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def head(tokenizer, frame: ChatFrame) -> list[int]:
    return encode(tokenizer, frame.user_header + "```\n")


def margin_request(tokenizer, frame: ChatFrame, question: str) -> list[int]:
    return encode(tokenizer, "\n```\n" + MARGIN_ASK.format(question=question) + frame.generation_header)


def final_request(tokenizer, frame: ChatFrame, question: str, notes: Sequence[str] = ()) -> list[int]:
    block = NOTES_HEADER + "".join(f"- {n.strip()}\n" for n in notes) + "\n" if notes else ""
    return encode(tokenizer, "\n```\n" + block + question + frame.generation_header)


def classifier_prompt(tokenizer, frame: ChatFrame, question: str, margin: str) -> list[int]:
    text = CLASSIFY_ASK.format(question=question, margin=margin.strip())
    return encode(tokenizer, frame.user_header + text + frame.generation_header)
