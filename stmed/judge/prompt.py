"""The judge prompt, in the paper's layout, with the rubric in our own words.

The layout follows STLLaVA-Med's GPT-4o call: one user message holding ``[Question]``, the two
answers between ``[Answer k]`` and ``[End of Answer k]`` markers, then ``[System]`` with the
rubric; the two scores come on the first line. A template file can replace the text; its
version is then ``file:<name>@<sha8>``, so every output says which prompt made it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from stmed.errors import InputError

PROMPT_VERSION = "stmed-judge-v1"

RUBRIC = """\
You are a medical expert reviewing two answers that an AI assistant gave to the question above \
about the attached medical image. Judge each answer on its own merits: how helpful it is to a \
clinician, how relevant it is to the question and the image, how accurate its medical content \
is, and how much useful detail it gives. Give each answer one overall score from 1 to 10, where \
10 is best. Do not let the order of the answers or their length alone sway you."""

TEXT_TAIL = """\
On the first line write only the two scores, for Answer 1 and Answer 2, separated by a space. \
From the second line on, explain your judgement in a few sentences."""

JSON_TAIL = """\
Reply with a JSON object only: {"score_1": <score of Answer 1>, "score_2": <score of Answer 2>, \
"reason": "<a few sentences>"}."""

CHOICE_TAIL = """\
Which answer is better? Reply with the single digit 1 or 2."""

TEMPLATE = """\
[Question]
{question}

[Answer 1]
{answer_1}
[End of Answer 1]

[Answer 2]
{answer_2}
[End of Answer 2]

[System]
{rubric}

{instructions}"""

FIELDS = ("question", "answer_1", "answer_2", "rubric", "instructions")


@dataclass(frozen=True)
class JudgePrompt:
    template: str = TEMPLATE
    version: str = PROMPT_VERSION

    @classmethod
    def from_file(cls, path: str | Path) -> JudgePrompt:
        """A replacement template using {question}, {answer_1}, {answer_2} (and optionally {rubric}, {instructions})."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"{p}: cannot read prompt template ({e.strerror})") from None
        for name in ("question", "answer_1", "answer_2"):
            if "{" + name + "}" not in text:
                raise InputError(f"{p}:1: prompt template lacks the placeholder {{{name}}}")
        try:
            text.format(**{k: "" for k in FIELDS})
        except (KeyError, IndexError, ValueError) as e:
            raise InputError(f"{p}:1: prompt template has a bad placeholder ({e}); write literal braces as {{{{ }}}}") from None
        return cls(text, f"file:{p.name}@{hashlib.sha256(text.encode()).hexdigest()[:8]}")

    def render(self, question: str, answer_1: str, answer_2: str, *, mode: str = "text") -> str:
        """mode: ``text`` (scores on the first line), ``json`` (JSON object) or ``choice`` (reply 1 or 2)."""
        tail = {"text": TEXT_TAIL, "json": JSON_TAIL, "choice": CHOICE_TAIL}[mode]
        return self.template.format(
            question=question.strip(), answer_1=answer_1.strip(), answer_2=answer_2.strip(), rubric=RUBRIC, instructions=tail
        )
