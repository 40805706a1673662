"""Prompt wording shared by the tasks (d1 style: the answer goes inside ``<answer>`` tags).

The instructions are prepended to the user turn (LLaDA's chat template has no system
role in the d1 setup); the model sees them through ``tokenizer.apply_chat_template``.
"""

FORMAT_INSTRUCTIONS = "Think inside <reasoning> </reasoning>, then answer inside <answer> </answer>."


def user_turn(question: str) -> list[dict[str, str]]:
    """A conversational prompt (TRL's format) holding the format instructions and the question."""
    return [{"role": "user", "content": f"{FORMAT_INSTRUCTIONS}\n\n{question}"}]


def completion_text(reasoning: str, answer: str) -> str:
    """The reference completion in the tagged format."""
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"
