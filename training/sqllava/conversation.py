"""Conversation templates of the reference code (`sqllava/conversation.py`), kept exact."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

IMAGE_TOKEN = "<image>"

SYSTEM_V1 = ("A chat between a curious user and an artificial intelligence assistant. "
             "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# No space after "questions." -- verbatim from conv_vicuna_v1_sq.
SYSTEM_V1_SQ = (SYSTEM_V1 + "Also, the artificial intelligence assistant is a curious virtual user. "
                "The virtual user asks complex questions that are relevant to the content in the image, "
                "for example, asking about background knowledge of the objects in the image, asking to "
                "discuss about events happening in the image, etc. Again, do not ask about uncertain details.")

DESCRIBE_BRIEF = "Provide a brief description of the given image, your answer should be in one sentence."
DESCRIBE_DETAILED = "Can you describe the image in detail?"


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    roles: Tuple[str, ...]
    sep: str = " "
    sep2: str = "</s>"

    def prompt(self, messages: Sequence[Tuple[str, Optional[str]]]) -> str:
        """`Conversation.get_prompt()` for SeparatorStyle.TWO: seps alternate by message index;
        an empty message writes `ROLE:` and ends the prompt there."""
        seps = (self.sep, self.sep2)
        out = self.system + seps[0]
        for i, (role, message) in enumerate(messages):
            if message:
                out += role + ": " + message + seps[i % 2]
            else:
                out += role + ":"
        return out

    def as_json(self) -> dict:
        return {"system": self.system, "roles": list(self.roles), "sep": self.sep, "sep2": self.sep2}


V1 = Template("v1", SYSTEM_V1, ("USER", "ASSISTANT"))
V1_SQ = Template("v1_sq", SYSTEM_V1_SQ, ("USER", "ASSISTANT", "VUSER"))
TEMPLATES = {"v1": V1, "v1_sq": V1_SQ}


def first_user_message(question: str) -> str:
    return IMAGE_TOKEN + "\n" + question


def sq_training_text(turns: List[Tuple[str, str, str]]) -> str:
    """The trained v1_sq layout (`preprocess_v1_sq2`) from (role, question, answer) turns, role
    being USER or VUSER; a VUSER question is written `question</s>` and its answer follows
    ` ASSISTANT: `.

    {SYS} USER: <image>\\n{Q1} ASSISTANT: {A1}</s>VUSER: {Q2}</s> ASSISTANT: {A2}</s>...
    """
    out = SYSTEM_V1_SQ + " "
    for i, (role, q, a) in enumerate(turns):
        q = first_user_message(q) if i == 0 else q
        if role == "VUSER":
            out += "VUSER: " + q + "</s>" + " ASSISTANT: " + a + "</s>"
        else:
            out += "USER: " + q + " ASSISTANT: " + a + "</s>"
    return out
