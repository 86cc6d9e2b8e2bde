"""A rollout backend for any server that speaks the OpenAI chat-completions API.

vLLM, SGLang, ``transformers serve`` and hosted APIs all take ``POST {base_url}/chat/completions``
with a list of chat messages and give back the assistant's text. :class:`OpenAIBackend` turns a
:class:`~pixelreasoner.trajectory.Conversation` into such a request and the reply into a
:class:`~pixelreasoner.rollout.backend.TurnResult`; the rollout engine does the rest (parsing the
turn, running the tool, appending the observation), exactly as with the in-process backend.

How a conversation is sent:

- The system message is sent as plain text. It already holds the ``# Tools`` block, so the API's
  ``tools`` parameter is **not** used: the released checkpoints expect the tools in the system
  text, and the server applies the model's own chat template to it.
- User turns are a list of content parts in order: text parts, and every image as an
  ``image_url`` part holding a data URL (PNG by default).
- Assistant turns are sent as their plain text (tool calls included, in the protocol's
  ``<tool_call>...</tool_call>`` text form).
- **Videos differ from the released model's input.** A :class:`~pixelreasoner.trajectory.VideoPart`
  is sent as its frames, one ``image_url`` part each. The released model saw a video as Qwen
  video tokens (``<|video_pad|>``, frames merged in temporal pairs, with video positions), so a
  video query over HTTP is *not* the input the checkpoints were trained on. Servers that accept
  ``video_url`` parts could be supported later.
- With ``budget`` given (pass the engine's), the query's own images are resized into
  ``budget.inputs`` before they are sent, as the in-process renderer does, so pixel boxes the
  model writes refer to the image it saw; video frames go into ``budget.video``. Images a tool
  returned are already sized and are sent as they are. The server's processor must not shrink
  them again (its ``max_pixels`` should be at least the budget's).

Sampling: ``max_tokens``, ``temperature`` (0 when greedy), ``top_p``; ``top_k`` only when > 0 (an
extra field that vLLM and SGLang accept; ``transformers serve`` rejects it with HTTP 422); and
``seed`` when set, offset by the request's trajectory key so that samples of the same prompt in
a group differ. ``stop`` is not sent: the server stops at the model's end-of-turn token (a
trailing ``<|im_end|>`` a server leaves in the text is removed).

Failures never raise out of :meth:`OpenAIBackend.generate` or :meth:`OpenAIBackend.agenerate`:
they give a :class:`TurnResult` with ``error`` set, which ends that trajectory with
``backend_error``. Refused connections, timeouts, HTTP 429 and 5xx are retried ``max_retries``
times with exponential backoff first. Use :meth:`OpenAIBackend.check_server` before a long run.

Only the standard library is used (``urllib``), so this needs no extra dependency. Requests run
in a thread pool of ``max_concurrency`` workers, for both the sync and the async interface.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from PIL import Image

from pixelreasoner.rollout.backend import TurnRequest, TurnResult
from pixelreasoner.synth.teacher import image_data_url
from pixelreasoner.trajectory import Conversation, ImagePart, Text, VideoPart
from pixelreasoner.vision.budget import PixelBudget
from pixelreasoner.vision.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_frames, load_image

END_OF_TURN = "<|im_end|>"
_MAX_RETRY_AFTER = 30.0
"""Longest wait (s) a server's ``Retry-After`` header can ask for between two tries."""
_BODY_SNIPPET = 300

ImageFormat = Literal["png", "jpeg"]


class _Retryable(Exception):
    """A failure worth trying again (connection refused, timeout, HTTP 429/5xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    """A failure that another try would repeat (HTTP 4xx, a reply we cannot read)."""


def _snippet(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())
    return text if len(text) <= _BODY_SNIPPET else text[:_BODY_SNIPPET] + "…"


def _jpeg_data_url(image: Image.Image, quality: int = 95) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_tool_calls(tool_calls: Sequence[Any]) -> str:
    """OpenAI ``tool_calls`` back in the protocol's text form, one block per call.

    ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, joined by newlines, as
    Qwen's chat template writes them. Arguments that are not valid JSON are kept as a string, so
    the engine reports the broken call to the model instead of losing it.

    Servers that parse calls out of the text (``transformers serve`` does for Qwen models, even
    without ``tools``) return the rest of the text as ``content``; the turn is rebuilt as that
    content, a newline, then the calls. This is the model's text up to whitespace and JSON
    formatting, except that text written *after* a call comes back before it.
    """
    blocks = []
    for call in tool_calls:
        function = call.get("function", call) if isinstance(call, dict) else {}
        if not isinstance(function, dict):
            function = {}
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):
                arguments = json.loads(arguments)
        payload = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
        blocks.append(f"<tool_call>\n{payload}\n</tool_call>")
    return "\n".join(blocks)


class OpenAIBackend:
    """Generates assistant turns through an OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` is the API root, e.g. ``http://127.0.0.1:8000/v1`` (vLLM, ``transformers serve``)
    or ``https://api.openai.com/v1``; ``model`` the name the server serves the model under.
    ``timeout`` bounds one HTTP request in seconds; ``max_retries`` extra tries follow a retryable
    failure, waiting ``retry_backoff * 2**attempt`` seconds (or the server's ``Retry-After``, up to
    30 s). At most ``max_concurrency`` requests are in flight from one backend, through
    :meth:`generate` and :meth:`agenerate` alike (the engine's ``concurrency`` above it has no
    further effect). ``image_format`` is ``"png"`` (lossless) or ``"jpeg"`` (smaller requests).
    ``budget``: see the module docstring; pass the engine's budget.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        retry_backoff: float = 1.0,
        max_concurrency: int = 8,
        image_format: ImageFormat = "png",
        budget: PixelBudget | None = None,
    ) -> None:
        if timeout <= 0 or max_retries < 0 or retry_backoff < 0 or max_concurrency < 1:
            raise ValueError(
                "need timeout > 0, max_retries >= 0, retry_backoff >= 0 and max_concurrency >= 1; got "
                f"{timeout}, {max_retries}, {retry_backoff}, {max_concurrency}"
            )
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be 'png' or 'jpeg', not {image_format!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_concurrency = max_concurrency
        self.image_format: ImageFormat = image_format
        self.budget = budget
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        return f"{self.base_url}/chat/completions"

    # -- the Backend protocol ----------------------------------------------------------------
    def generate(self, requests: Sequence[TurnRequest]) -> list[TurnResult]:
        """The next turn of each request, requested concurrently; results in request order."""
        if not requests:
            return []
        return list(self._pool().map(self.request, requests))

    async def agenerate(self, request: TurnRequest) -> TurnResult:
        """The next turn of one request, in a worker thread (the event loop is never blocked)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool(), self.request, request)

    def release(self, key: int) -> None:
        """Nothing to forget: the server keeps no per-trajectory state of ours."""

    def close(self) -> None:
        """Stop the worker threads (a later request starts new ones)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="openai-backend")
            return self._executor

    # -- one request -------------------------------------------------------------------------
    def request(self, request: TurnRequest) -> TurnResult:
        """One blocking request with retries. Never raises: a failure is a result with ``error``."""
        try:
            return self._request(request)
        except Exception as exc:  # the contract: one failed request never stops a long run
            error = f"unexpected {type(exc).__name__} while requesting {self.url}: {exc}"
            return TurnResult(text="", finish="stop", error=error)

    def _request(self, request: TurnRequest) -> TurnResult:
        try:
            body = self.request_body(request)
        except ImageLoadError as exc:
            error = f"could not load an image to send to {self.url}: {exc}"
            return TurnResult(text="", finish="stop", error=error)
        data = json.dumps(body).encode("utf-8")
        attempt = 0
        while True:
            try:
                return self.parse_reply(self._post(data))
            except _Fatal as exc:
                return TurnResult(text="", finish="stop", error=str(exc))
            except _Retryable as exc:
                if attempt >= self.max_retries:
                    tries = f"{attempt + 1} tr{'y' if attempt == 0 else 'ies'}"
                    return TurnResult(text="", finish="stop", error=f"{exc} (gave up after {tries})")
                wait = self.retry_backoff * 2**attempt
                if exc.retry_after is not None:
                    wait = max(wait, min(exc.retry_after, _MAX_RETRY_AFTER))
                time.sleep(wait)
                attempt += 1

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _post(self, data: bytes) -> dict[str, Any]:
        """POST the body; the decoded JSON reply, or _Retryable/_Fatal naming the URL and status."""
        url = self.url
        http_request = urllib.request.Request(url, data=data, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            try:
                detail = _snippet(exc.read())
            except Exception:
                detail = ""
            finally:
                exc.close()
            message = f"the model server at {url} answered HTTP {exc.code} {exc.reason}"
            if detail:
                message += f": {detail}"
            if exc.code == 429 or exc.code >= 500:
                retry_after = None
                header = exc.headers.get("Retry-After") if exc.headers else None
                if header is not None:
                    try:
                        retry_after = float(header)
                    except ValueError:
                        retry_after = None
                raise _Retryable(message, retry_after) from exc
            raise _Fatal(message) from exc
        except (OSError, http.client.HTTPException) as exc:  # URLError and TimeoutError are OSErrors
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                message = f"the model server at {url} did not answer within {self.timeout:g} s"
            else:
                message = f"cannot reach the model server at {url}: {str(reason) or type(reason).__name__}"
            raise _Retryable(message) from exc
        except ValueError as exc:  # e.g. a base_url without http://
            raise _Fatal(f"cannot send a request to {url}: {exc}") from exc
        try:
            reply = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            message = f"the model server at {url} sent a reply that is not JSON: {_snippet(raw)!r}"
            raise _Fatal(message) from exc
        if not isinstance(reply, dict):
            raise _Fatal(f"the model server at {url} sent JSON that is not an object: {_snippet(raw)!r}")
        return reply

    # -- conversion --------------------------------------------------------------------------
    def request_body(self, request: TurnRequest) -> dict[str, Any]:
        """The JSON body of the chat-completions request for ``request``."""
        params = request.params
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages(request.conversation),
            "max_tokens": params.max_new_tokens,
            "temperature": 0.0 if params.greedy else params.temperature,
            "top_p": params.top_p,
        }
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if params.seed is not None:
            body["seed"] = (params.seed + request.key) & 0x7FFFFFFF
        return body

    def messages(self, conversation: Conversation) -> list[dict[str, Any]]:
        """Chat-completions ``messages``: system and assistant turns as text, user turns as parts."""
        messages: list[dict[str, Any]] = []
        for turn in conversation.turns:
            if turn.role != "user":
                # System text holds the tools block; assistant text holds its tool calls.
                messages.append({"role": turn.role, "content": turn.text})
                continue
            content: list[dict[str, Any]] = []
            for part in turn.parts:
                if isinstance(part, Text):
                    content.append({"type": "text", "text": part.text})
                elif isinstance(part, ImagePart):
                    content.append(self._image_part(self._part_image(part)))
                elif isinstance(part, VideoPart):
                    content.extend(self._image_part(frame) for frame in self._video_frames(part))
            messages.append({"role": "user", "content": content})
        return messages

    def _max_decode_pixels(self) -> int:
        return self.budget.max_decode_pixels if self.budget is not None else DEFAULT_MAX_PIXELS

    def _part_image(self, part: ImagePart) -> Image.Image:
        image = part.image
        if image is None:
            image = load_image(part.path or "", max_pixels=self._max_decode_pixels())
        if self.budget is not None and not part.returned:
            image = self.budget.inputs.resize(image, self.budget.factor)
        return image

    def _video_frames(self, part: VideoPart) -> list[Image.Image]:
        frames = list(part.frames)
        if not frames:
            frames = load_frames(list(part.paths), max_pixels=self._max_decode_pixels())
        if self.budget is not None:
            budget = self.budget
            frames = [budget.video.resize(frame, budget.factor) for frame in frames]
        return frames

    def _image_part(self, image: Image.Image) -> dict[str, Any]:
        url = image_data_url(image) if self.image_format == "png" else _jpeg_data_url(image)
        return {"type": "image_url", "image_url": {"url": url}}

    def parse_reply(self, reply: dict[str, Any]) -> TurnResult:
        """A chat-completions reply as a turn; ``_Fatal`` if it has no usable choice."""
        choices = reply.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            error = reply.get("error")
            detail = f": {_snippet(json.dumps(error))}" if error is not None else ""
            raise _Fatal(f"the model server at {self.url} sent a reply without choices{detail}")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise _Fatal(f"the model server at {self.url} sent a choice without a message")
        content = message.get("content")
        if isinstance(content, list):  # some servers send content parts even for text
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        text = content if isinstance(content, str) else ""
        if text.rstrip().endswith(END_OF_TURN):
            text = text.rstrip()[: -len(END_OF_TURN)]
        tool_calls = message.get("tool_calls")
        if isinstance(tool_calls, list) and tool_calls:
            # The server parsed the model's tool call out of the text: put it back as the protocol text.
            calls = render_tool_calls(tool_calls)
            text = f"{text.rstrip()}\n{calls}" if text.strip() else calls
        finish: Literal["stop", "length"] = "length" if choice.get("finish_reason") == "length" else "stop"
        usage = reply.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        extra: dict[str, float] = {}
        if isinstance(completion_tokens, int | float):
            extra["completion_tokens"] = float(completion_tokens)
        return TurnResult(
            text=text,
            finish=finish,
            prompt_tokens=int(prompt_tokens) if isinstance(prompt_tokens, int | float) else 0,
            extra=extra,
        )

    # -- health ------------------------------------------------------------------------------
    def check_server(self) -> None:
        """GET ``{base_url}/models``; ``ConnectionError`` with a clear message if the server is not there."""
        url = f"{self.base_url}/models"
        http_request = urllib.request.Request(url, headers=self._headers(), method="GET")
        hint = "is it running? e.g. `vllm serve MODEL --port 8000` or `transformers serve MODEL --port 8000`"
        try:
            with urllib.request.urlopen(http_request, timeout=min(self.timeout, 30.0)) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            raise ConnectionError(
                f"the model server at {url} answered HTTP {exc.code} {exc.reason} — "
                "check the URL (it should end in /v1) and the API key"
            ) from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                reason = f"no answer within {min(self.timeout, 30.0):g} s"
            raise ConnectionError(f"cannot reach the model server at {url}: {reason} — {hint}") from exc


__all__ = ["OpenAIBackend", "render_tool_calls"]
