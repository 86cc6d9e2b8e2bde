"""Optional teacher model that writes a trace's analysis text (GPT-4o in the paper).

Any server that speaks the OpenAI chat-completions API works (vLLM, SGLang, ``transformers
serve``, hosted APIs). The teacher writes only prose: the skeleton, the tool calls and the
boxed answer stay ours, and a reply that breaks the rules (a tool call, a wrong or missing box,
empty or over-long text) is replaced by the template, with the count reported. Network errors
never stop a synthesis run; they also fall back to the template.

Only the standard library is used (``urllib``), so this needs no extra dependency.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from PIL import Image

from pixelreasoner.synth.templates import Facts, fill

SYSTEM = (
    "You write one step of a visual reasoning trace in the first person, as the model that is "
    "looking at the image. Write one to three plain sentences. Never write tool calls or JSON."
)

STEP_INSTRUCTIONS = {
    "locate": "Say where the red {thing} is ({where}) and that its {detail} is too small to see, "
    "so you will look closer.",
    "wrong": "Say that you will look closer at {wrong_where}. Do not mention the red {thing}.",
    "recover": "You looked at the wrong place. Say so, and that the red {thing} is at {where}, "
    "where you will look now.",
    "coarse": "The view is still too wide to see the {detail}. Say that you will zoom in further on {where}.",
    "conclude": "Say what the closer view shows ({finding}) and end with exactly \\boxed{{{answer}}}.",
    "direct": "Say where the red {thing} is ({where}) and end with exactly \\boxed{{{answer}}}.",
}
BOXED_STEPS = ("conclude", "direct")


def image_data_url(image: Image.Image) -> str:
    """A PNG data URL, the way chat-completions APIs take inline images."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def valid_step_text(step: str, text: str, facts: Facts, max_chars: int = 600) -> bool:
    """A teacher's text is usable if it is short prose, has no tool call, and boxes the right answer."""
    if not text.strip() or len(text) > max_chars or "<tool_call>" in text or "</tool_call>" in text:
        return False
    if step in BOXED_STEPS:
        return text.rstrip().rstrip(".").endswith(f"\\boxed{{{facts.answer}}}") and text.count("\\boxed") == 1
    return "\\boxed" not in text


@dataclass
class OpenAITeacher:
    """Writes step texts through an OpenAI-compatible ``/chat/completions`` endpoint."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    temperature: float = 0.7
    max_tokens: int = 200
    send_images: bool = True
    fallbacks: int = 0
    calls: int = 0
    errors: list[str] = field(default_factory=list)

    def _post(self, payload: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            self.base_url.rstrip("/") + "/chat/completions",
            data=json.dumps(payload).encode("utf-8"),
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}),
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            reply = json.loads(response.read().decode("utf-8"))
        if not isinstance(reply, dict):
            raise ValueError("the server's reply is not a JSON object")
        return reply

    def write(self, step: str, facts: Facts, choice: int, images: list[Image.Image] | None = None) -> str:
        """The step's text from the teacher, or the template when the teacher fails or misbehaves."""
        self.calls += 1
        instruction = STEP_INSTRUCTIONS[step].format(**facts.fields())
        content: list[dict[str, object]] = [{"type": "text", "text": instruction}]
        if self.send_images and images:
            content += [{"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in images]
        payload = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        try:
            reply = self._post(payload)
            text = reply["choices"][0]["message"]["content"]  # type: ignore[index]
            if not isinstance(text, str):
                raise ValueError("the reply has no text content")
            text = text.strip()
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self.fallbacks += 1
            return fill(step, facts, choice)
        if not valid_step_text(step, text, facts):
            self.fallbacks += 1
            return fill(step, facts, choice)
        return text


class TemplateWriter:
    """The offline default: template phrasings, chosen by the trace's random draw."""

    fallbacks = 0
    calls = 0

    def write(self, step: str, facts: Facts, choice: int, images: list[Image.Image] | None = None) -> str:
        self.calls += 1
        return fill(step, facts, choice)
