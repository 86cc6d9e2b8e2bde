"""OpenAIBackend against a protocol-faithful fake server, and (``-m slow``) against ``transformers serve``.

The fake server (:class:`FakeOpenAIServer`, ``http.server`` on 127.0.0.1, port 0) checks every
request the way a strict OpenAI-compatible server would, and answers 400 with the list of
problems if anything is off:

- ``POST /v1/chat/completions`` with ``Content-Type: application/json`` (and the bearer token when
  one is expected); ``GET /v1/models`` lists the model;
- only the fields we mean to send (``model``, ``messages``, ``max_tokens``, ``temperature``,
  ``top_p``, ``top_k``, ``seed``), with their types and ranges; never ``tools``, ``tool_choice``
  or ``stop``;
- messages: the system message first, as plain text; roles only system/user/assistant;
  assistant content a string; user content a list of ``text`` and ``image_url`` parts; every
  image a ``data:image/png;base64,`` URL that decodes as a PNG (sizes are recorded); the last
  message is a user turn.

It answers like a model would: the first turn of a conversation (no assistant message yet) is a
crop tool call written as text, later turns ``\\boxed{A}``, with ``usage``. It can also fail the
first N requests (503), hang past the client's timeout, send malformed JSON, 400, a reply
without choices, structured ``tool_calls`` instead of text (what ``transformers serve`` sends
when it recognises a tool call), or a trailing ``<|im_end|>``.

The real server: ``transformers serve`` (``pip install "transformers[serving]==5.24.*"``) runs
here on CPU. Started on a stock tiny-model save it fails at load time: its model manager calls
``AutoProcessor.from_pretrained``, which builds ``Qwen2_5_VLProcessor`` and so a
``Qwen2VLVideoProcessor``, and that raises ``ImportError: Qwen2VLVideoProcessor requires the
Torchvision library`` (torchvision cannot be used on the CPU machines). The slow test therefore
serves a temporary copy of the save with two config files changed, nothing patched in the
server: ``processor_config.json`` names ``PaddleOCRVLProcessor`` (a transformers processor made of
an image processor and a tokenizer only, whose image path is the same as Qwen2.5-VL's: each
``<|image_pad|>`` expanded to ``grid_t*grid_h*grid_w / merge_size**2`` tokens, with
``mm_token_type_ids``), and ``tokenizer_config.json`` names ``<|image_pad|>`` as the tokenizer's
``image_token``. The test checks that the server's prompt length equals our own renderer's.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixelreasoner.protocol.tools import system_message
from pixelreasoner.rollout.backend import GREEDY, SamplingParams, TurnRequest
from pixelreasoner.rollout.engine import Query, RolloutEngine
from pixelreasoner.rollout.http import OpenAIBackend, render_tool_calls
from pixelreasoner.trajectory import Conversation, ImagePart, VideoPart
from pixelreasoner.vision.budget import tiny
from pixelreasoner.vision.ops import Observation, VisualContext, crop_text

BUDGET = tiny()
MODEL = "fake-model"
CROP_ARGS = {"bbox_2d": [0.1, 0.1, 0.6, 0.6], "target_image": 1}
CROP_CALL = (
    "I will look closer.\n<tool_call>\n"
    + json.dumps({"name": "crop_image_normalized", "arguments": CROP_ARGS})
    + "\n</tool_call>"
)
ANSWER = "The closer view shows it. \\boxed{A}"
ALLOWED_FIELDS = {"model", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed"}
PNG_PREFIX = "data:image/png;base64,"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# The fake server
# ---------------------------------------------------------------------------------------------
def default_script(body: dict[str, Any]) -> dict[str, Any]:
    """First turn: a crop call as text; afterwards the boxed answer."""
    assistants = sum(m["role"] == "assistant" for m in body["messages"])
    return {"content": CROP_CALL if assistants == 0 else ANSWER, "finish_reason": "stop"}


class FakeOpenAIServer:
    """A strict chat-completions server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        script: Callable[[dict[str, Any]], dict[str, Any]] = default_script,
        *,
        fail_first: int = 0,
        fail_status: int = 503,
        mode: str = "ok",
        delay: float = 0.0,
        hang: float = 3.0,
        api_key: str | None = None,
    ) -> None:
        self.script = script
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.mode = mode
        self.delay = delay
        self.hang = hang
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        """Every well-formed chat request, in arrival order (failed ones included)."""
        self.image_sizes: list[list[tuple[int, int]]] = []
        """Per recorded request: the (width, height) of each image it carried."""
        self.problems: list[str] = []
        self.posts = 0
        self.gets = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # releases hanging handlers at once
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- checks ------------------------------------------------------------------------------
    def check(self, headers: Any, body: Any) -> tuple[list[str], list[tuple[int, int]]]:
        problems: list[str] = []
        sizes: list[tuple[int, int]] = []
        if headers.get("Content-Type", "").split(";")[0] != "application/json":
            problems.append(f"Content-Type is {headers.get('Content-Type')!r}")
        if self.api_key is not None and headers.get("Authorization") != f"Bearer {self.api_key}":
            problems.append("missing or wrong bearer token")
        if not isinstance(body, dict):
            return [*problems, "body is not a JSON object"], sizes
        if extra := set(body) - ALLOWED_FIELDS:
            problems.append(f"unexpected fields {sorted(extra)}")
        if body.get("model") != MODEL:
            problems.append(f"model is {body.get('model')!r}")
        if not (isinstance(body.get("max_tokens"), int) and body["max_tokens"] >= 1):
            problems.append("max_tokens must be a positive integer")
        if not (isinstance(body.get("temperature"), int | float) and body["temperature"] >= 0):
            problems.append("temperature must be a number >= 0")
        if not (isinstance(body.get("top_p"), int | float) and 0 < body["top_p"] <= 1):
            problems.append("top_p must be in (0, 1]")
        if "top_k" in body and not (isinstance(body["top_k"], int) and body["top_k"] > 0):
            problems.append("top_k, when sent, must be a positive integer")
        if "seed" in body and not isinstance(body["seed"], int):
            problems.append("seed must be an integer")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return [*problems, "messages must be a non-empty list"], sizes
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if set(message) != {"role", "content"}:
                problems.append(f"message {i} has keys {sorted(message)}")
            if role not in ("system", "user", "assistant"):
                problems.append(f"message {i} has role {role!r}")
            if (role == "system") != (i == 0):
                problems.append("the system message must come first, and only there")
            if role in ("system", "assistant") and not isinstance(content, str):
                problems.append(f"message {i} ({role}) content must be plain text")
            if role == "user":
                if not isinstance(content, list) or not content:
                    problems.append(f"message {i} (user) content must be a list of parts")
                    continue
                for part in content:
                    if (
                        part.get("type") == "text"
                        and set(part) == {"type", "text"}
                        and isinstance(part["text"], str)
                    ):
                        continue
                    if part.get("type") == "image_url" and set(part) == {"type", "image_url"}:
                        url = part["image_url"].get("url", "")
                        if not url.startswith(PNG_PREFIX):
                            problems.append("an image is not a PNG data URL")
                            continue
                        raw = base64.b64decode(url[len(PNG_PREFIX) :], validate=True)
                        if not raw.startswith(PNG_SIGNATURE):
                            problems.append("an image data URL does not hold a PNG")
                            continue
                        with Image.open(io.BytesIO(raw)) as image:
                            image.load()
                            sizes.append(image.size)
                        continue
                    problems.append(f"message {i} has a malformed part {str(part)[:80]}")
        if messages[-1].get("role") != "user":
            problems.append("the last message must be a user turn")
        return problems, sizes

    # -- HTTP --------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def send(self, status: int, payload: bytes | dict[str, Any]) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def do_GET(self) -> None:
                with fake._lock:
                    fake.gets += 1
                if self.path == "/v1/models":
                    self.send(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                else:
                    self.send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/chat/completions":
                    self.send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self.send(400, {"error": {"message": "body is not JSON"}})
                    return
                problems, sizes = fake.check(self.headers, body)
                with fake._lock:
                    fake.posts += 1
                    index = fake.posts - 1
                    if problems:
                        fake.problems.extend(problems)
                    else:
                        fake.requests.append(body)
                        fake.image_sizes.append(sizes)
                if problems:
                    self.send(400, {"error": {"message": "; ".join(problems)}})
                    return
                if index < fake.fail_first:
                    self.send(fake.fail_status, {"error": {"message": "overloaded, try again"}})
                    return
                if fake.mode == "hang":
                    fake._stop.wait(fake.hang)
                if fake.mode == "malformed":
                    self.send(200, b'{"choices": [ this is not json')
                    return
                if fake.mode == "bad_request":
                    self.send(400, {"error": {"message": "max_tokens is too large for this model"}})
                    return
                if fake.mode == "no_choices":
                    self.send(200, {"object": "chat.completion", "choices": []})
                    return
                if fake.delay:
                    fake._stop.wait(fake.delay)
                reply = fake.script(body)
                message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
                if "tool_calls" in reply:
                    message["tool_calls"] = reply["tool_calls"]
                n_images = len(sizes)
                self.send(
                    200,
                    {
                        "id": f"chatcmpl-{index}",
                        "object": "chat.completion",
                        "model": MODEL,
                        "choices": [
                            {"index": 0, "message": message, "finish_reason": reply["finish_reason"]}
                        ],
                        "usage": {
                            "prompt_tokens": 100 + 10 * n_images,
                            "completion_tokens": 7,
                            "total_tokens": 0,
                        },
                    },
                )

        return Handler


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


def backend_for(fake: FakeOpenAIServer, **kwargs: Any) -> OpenAIBackend:
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("retry_backoff", 0.01)
    return OpenAIBackend(fake.base_url, MODEL, **kwargs)


def picture(width: int = 224, height: int = 160, seed: int = 0) -> Image.Image:
    image = Image.new("RGB", (width, height), (seed * 40 % 256, 120, 200))
    image.putpixel((seed % width, 0), (255, 0, 0))
    return image


def make_query(question: str = "What is in the red cell?", size: tuple[int, int] = (224, 224)) -> Query:
    image = picture(*size)
    conversation = Conversation.from_question(question, [ImagePart(image=image)])
    return Query(conversation, VisualContext.for_query([image], budget=BUDGET), qid=question)


def request_for(conversation: Conversation, params: SamplingParams = GREEDY, key: int = 0) -> TurnRequest:
    return TurnRequest(conversation, params, key=key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Message conversion and the request body
# ---------------------------------------------------------------------------------------------
def test_messages_roles_images_and_system_text(server: FakeOpenAIServer, tmp_path: Path) -> None:
    on_disk = tmp_path / "page.png"
    picture(96, 64, seed=3).save(on_disk)
    conversation = Conversation.from_question("Which?", [picture(224, 160), str(on_disk)])
    conversation.add_model_turn(CROP_CALL)
    crop = picture(84, 56, seed=5)
    conversation.add_observation(Observation(text=crop_text(84, 56), images=(crop,)))
    with backend_for(server) as backend:
        result = backend.generate([request_for(conversation)])[0]
    assert result.error is None, result.error
    assert server.problems == []
    (body,) = server.requests
    messages = body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == system_message() and "# Tools" in messages[0]["content"]
    assert [p["type"] for p in messages[1]["content"]] == ["image_url", "image_url", "text"]
    assert messages[1]["content"][2]["text"] == conversation.turns[1].text
    assert messages[2]["content"] == CROP_CALL  # assistant: plain text, tool call included
    assert [p["type"] for p in messages[3]["content"]] == ["text", "image_url"]
    assert messages[3]["content"][0]["text"] == crop_text(84, 56)
    # Without a budget every image goes as it is: in memory, loaded from its path, returned.
    assert server.image_sizes == [[(224, 160), (96, 64), (84, 56)]]
    # Sampling fields: greedy is temperature 0; no top_k at 0; no seed unless set; never stop/tools.
    assert body["temperature"] == 0 and body["max_tokens"] == GREEDY.max_new_tokens and body["top_p"] == 1.0
    assert not {"top_k", "seed", "stop", "tools"} & set(body)
    # The message list is also what OpenAIBackend.messages returns, byte for byte.
    assert OpenAIBackend(server.base_url, MODEL).messages(conversation) == messages


def test_budget_resizes_input_images_but_not_returned_ones(server: FakeOpenAIServer) -> None:
    conversation = Conversation.from_question("Which?", [picture(560, 560)])
    conversation.add_model_turn(CROP_CALL)
    conversation.add_observation(Observation(text=crop_text(168, 168), images=(picture(168, 168),)))
    with backend_for(server, budget=BUDGET) as backend:
        assert backend.generate([request_for(conversation)])[0].error is None
    # The tiny budget shows a 560 px canvas at 140 px (what the in-process renderer feeds the model,
    # and what pixel boxes refer to); the crop is already sized and goes unchanged.
    assert BUDGET.inputs.target_size(560, 560) == (140, 140)
    assert server.image_sizes == [[(140, 140), (168, 168)]]


def test_video_is_sent_as_frames(server: FakeOpenAIServer) -> None:
    frames = tuple(picture(112, 84, seed=i) for i in range(3))
    conversation = Conversation.from_question("What happens?", video=VideoPart(frames=frames))
    with backend_for(server) as backend:
        assert backend.generate([request_for(conversation)])[0].error is None
    content = server.requests[0]["messages"][1]["content"]
    assert [p["type"] for p in content] == ["image_url"] * 3 + ["text"]
    assert server.image_sizes == [[(112, 84)] * 3]


def test_sampling_fields_top_k_and_seed(server: FakeOpenAIServer) -> None:
    params = SamplingParams(temperature=0.9, top_p=0.8, top_k=20, max_new_tokens=64, seed=11)
    conversation = Conversation.from_question("Which?", [picture()])
    with backend_for(server) as backend:
        backend.generate([request_for(conversation, params, key=3), request_for(conversation, params, key=4)])
    first, second = server.requests
    assert (first["temperature"], first["top_p"], first["top_k"], first["max_tokens"]) == (0.9, 0.8, 20, 64)
    # The seed is offset by the trajectory key: samples of one prompt in a group must differ.
    assert {first["seed"], second["seed"]} == {14, 15}


def test_api_key_is_sent_as_bearer_token() -> None:
    with FakeOpenAIServer(api_key="sk-test") as fake:
        conversation = Conversation.from_question("Which?", [picture()])
        with backend_for(fake, api_key="sk-test") as backend:
            assert backend.generate([request_for(conversation)])[0].error is None
        with backend_for(fake, max_retries=0) as backend:
            result = backend.generate([request_for(conversation)])[0]
        assert result.error is not None and "HTTP 400" in result.error and "bearer token" in result.error


def test_bad_image_path_is_an_error_result_not_an_exception(server: FakeOpenAIServer, tmp_path: Path) -> None:
    conversation = Conversation.from_question("Which?", [str(tmp_path / "missing.png")])
    with backend_for(server) as backend:
        result = backend.generate([request_for(conversation)])[0]
    assert result.text == "" and result.error is not None and "missing.png" in result.error
    assert server.posts == 0


# ---------------------------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------------------------
def test_reply_fields_and_end_of_turn_stripped() -> None:
    def script(body: dict[str, Any]) -> dict[str, Any]:
        return {"content": "\\boxed{B}<|im_end|>", "finish_reason": "stop"}

    with FakeOpenAIServer(script) as fake, backend_for(fake) as backend:
        result = backend.generate([request_for(Conversation.from_question("Q?", [picture()]))])[0]
    assert result.text == "\\boxed{B}"
    assert (result.finish, result.prompt_tokens, result.extra) == ("stop", 110, {"completion_tokens": 7.0})
    assert result.token_ids is None and result.logprobs is None and result.error is None


def test_structured_tool_calls_are_rendered_back_to_protocol_text() -> None:
    def script(body: dict[str, Any]) -> dict[str, Any]:
        if any(m["role"] == "assistant" for m in body["messages"]):
            return {"content": ANSWER, "finish_reason": "stop"}
        call = {"name": "crop_image_normalized", "arguments": json.dumps(CROP_ARGS)}
        return {
            "content": None,
            "tool_calls": [{"id": "c0", "type": "function", "function": call}],
            "finish_reason": "tool_calls",
        }

    with FakeOpenAIServer(script) as fake, backend_for(fake) as backend:
        trajectory = RolloutEngine(backend, BUDGET).run([make_query()])[0]
        assert fake.problems == []
    first = trajectory.conversation.model_turns[0].text
    assert (
        first
        == "<tool_call>\n"
        + json.dumps({"name": "crop_image_normalized", "arguments": CROP_ARGS})
        + "\n</tool_call>"
    )
    assert (trajectory.finish_reason, trajectory.n_calls, trajectory.n_failed) == ("answer", 1, 0)
    # Text before the call is kept; several calls are joined by newlines; bad JSON stays a string.
    both = render_tool_calls(
        [{"function": {"name": "a", "arguments": "{}"}}, {"function": {"name": "b", "arguments": "{x"}}]
    )
    a = '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>'
    b = '<tool_call>\n{"name": "b", "arguments": "{x"}\n</tool_call>'
    assert both == f"{a}\n{b}"


def test_length_finish_truncates_the_trajectory() -> None:
    script = lambda body: {"content": "rambling on", "finish_reason": "length"}  # noqa: E731
    with FakeOpenAIServer(script) as fake, backend_for(fake) as backend:
        trajectory = RolloutEngine(backend, BUDGET).run([make_query()])[0]
    assert trajectory.finish_reason == "truncated" and trajectory.generated_tokens == 7


# ---------------------------------------------------------------------------------------------
# The engine loop over HTTP
# ---------------------------------------------------------------------------------------------
def check_answered(trajectories: list[Any], server: FakeOpenAIServer, n: int) -> None:
    assert server.problems == []
    assert len(trajectories) == n
    for trajectory in trajectories:
        assert (trajectory.finish_reason, trajectory.n_calls, trajectory.n_failed) == ("answer", 1, 0)
        assert trajectory.error is None and trajectory.final_text == ANSWER
        assert trajectory.generated_tokens == 14  # 7 completion tokens per turn, from usage
        assert trajectory.prompt_tokens == 120  # the second request carried two images
    assert len(server.requests) == 2 * n
    second_turns = [r for r in server.requests if any(m["role"] == "assistant" for m in r["messages"])]
    assert len(second_turns) == n
    for body in second_turns:
        observation = body["messages"][-1]["content"]
        assert observation[0]["text"].startswith("\nHere is the cropped image (Image Size: ")
        assert observation[1]["type"] == "image_url"


def test_engine_run_async_full_loop(server: FakeOpenAIServer) -> None:
    queries = [make_query(f"Question {i}?") for i in range(3)]
    with backend_for(server, budget=BUDGET) as backend:
        trajectories = asyncio.run(RolloutEngine(backend, BUDGET).run_async(queries, concurrency=3))
    check_answered(trajectories, server, 3)
    assert [t.qid for t in trajectories] == [f"Question {i}?" for i in range(3)]


def test_engine_run_sync_full_loop(server: FakeOpenAIServer) -> None:
    queries = [make_query(f"Question {i}?") for i in range(3)]
    with backend_for(server, budget=BUDGET) as backend:
        trajectories = RolloutEngine(backend, BUDGET).run(queries)
    check_answered(trajectories, server, 3)


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------
def test_retries_after_503_then_succeeds() -> None:
    with FakeOpenAIServer(fail_first=2) as fake, backend_for(fake, max_retries=2) as backend:
        result = backend.generate([request_for(Conversation.from_question("Q?", [picture()]))])[0]
    assert result.error is None and result.text == CROP_CALL
    assert fake.posts == 3


def test_429_is_retried_and_gives_up_after_max_retries() -> None:
    with (
        FakeOpenAIServer(fail_first=10, fail_status=429) as fake,
        backend_for(fake, max_retries=2) as backend,
    ):
        result = backend.generate([request_for(Conversation.from_question("Q?", [picture()]))])[0]
    assert fake.posts == 3
    assert result.error is not None and result.text == "" and result.finish == "stop"
    assert f"{fake.base_url}/chat/completions" in result.error and "HTTP 429" in result.error
    assert "gave up after 3 tries" in result.error


def test_timeout_gives_backend_error_not_an_exception() -> None:
    with (
        FakeOpenAIServer(mode="hang", hang=3.0) as fake,
        backend_for(fake, timeout=0.3, max_retries=1) as backend,
    ):
        start = time.monotonic()
        trajectories = asyncio.run(
            RolloutEngine(backend, BUDGET).run_async([make_query(), make_query("Other?")])
        )
        elapsed = time.monotonic() - start
    assert elapsed < 2.5
    assert fake.posts == 4  # two queries, each tried twice
    for trajectory in trajectories:
        assert trajectory.finish_reason == "backend_error"
        assert trajectory.error is not None and "did not answer within 0.3 s" in trajectory.error
        assert fake.base_url in trajectory.error


def test_400_is_an_error_without_retry() -> None:
    with FakeOpenAIServer(mode="bad_request") as fake, backend_for(fake, max_retries=3) as backend:
        result = backend.generate([request_for(Conversation.from_question("Q?", [picture()]))])[0]
    assert fake.posts == 1
    assert (
        result.error is not None and "HTTP 400" in result.error and "max_tokens is too large" in result.error
    )
    assert f"{fake.base_url}/chat/completions" in result.error


@pytest.mark.parametrize(("mode", "message"), [("malformed", "not JSON"), ("no_choices", "without choices")])
def test_unreadable_replies_are_errors_without_retry(mode: str, message: str) -> None:
    with FakeOpenAIServer(mode=mode) as fake, backend_for(fake, max_retries=3) as backend:
        result = backend.generate([request_for(Conversation.from_question("Q?", [picture()]))])[0]
    assert fake.posts == 1
    assert result.error is not None and message in result.error and fake.base_url in result.error


def test_server_down_check_server_raises_and_engine_returns_backend_errors() -> None:
    port = free_port()  # bound, then closed: nothing listens there
    base_url = f"http://127.0.0.1:{port}/v1"
    backend = OpenAIBackend(base_url, MODEL, timeout=2.0, max_retries=1, retry_backoff=0.01)
    with pytest.raises(ConnectionError) as info:
        backend.check_server()
    message = str(info.value)
    assert message.startswith(f"cannot reach the model server at {base_url}/models: ")
    assert "is it running?" in message and "vllm serve" in message
    with backend:
        sync = RolloutEngine(backend, BUDGET).run([make_query()])
        both = asyncio.run(RolloutEngine(backend, BUDGET).run_async([make_query(), make_query()]))
    for trajectory in [*sync, *both]:
        assert trajectory.finish_reason == "backend_error"
        assert trajectory.error is not None and "cannot reach the model server" in trajectory.error


def test_check_server_passes_on_a_live_server(server: FakeOpenAIServer) -> None:
    OpenAIBackend(server.base_url, MODEL).check_server()
    assert server.gets == 1


def test_check_server_names_an_http_error(server: FakeOpenAIServer) -> None:
    with pytest.raises(ConnectionError, match=r"HTTP 404"):
        OpenAIBackend(server.base_url + "/wrong", MODEL).check_server()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        OpenAIBackend("http://127.0.0.1:1/v1", MODEL, max_concurrency=0)
    with pytest.raises(ValueError):
        OpenAIBackend("http://127.0.0.1:1/v1", MODEL, image_format="gif")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------
def answer_with_question(body: dict[str, Any]) -> dict[str, Any]:
    question = body["messages"][1]["content"][-1]["text"].split("\n")[0]
    return {"content": f"{question} \\boxed{{A}}", "finish_reason": "stop"}


def test_requests_run_concurrently() -> None:
    queries = lambda: [make_query(f"Q{i}", size=(56, 56)) for i in range(8)]  # noqa: E731
    with FakeOpenAIServer(answer_with_question, delay=0.3) as fake, backend_for(fake) as backend:
        engine = RolloutEngine(backend, BUDGET)
        start = time.monotonic()
        parallel = asyncio.run(engine.run_async(queries(), concurrency=8))
        t_parallel = time.monotonic() - start
        start = time.monotonic()
        serial = asyncio.run(engine.run_async(queries(), concurrency=1))
        t_serial = time.monotonic() - start
        # The sync batch interface is concurrent too, and keeps the order of its requests.
        requests = [request_for(q.conversation, key=i) for i, q in enumerate(queries())]
        start = time.monotonic()
        results = backend.generate(requests)
        t_generate = time.monotonic() - start
    assert all(t.finish_reason == "answer" for t in parallel + serial)
    assert t_parallel < 1.5, t_parallel
    assert t_serial >= 2.4, t_serial
    assert t_generate < 1.5, t_generate
    assert [r.text for r in results] == [f"Q{i} \\boxed{{A}}" for i in range(8)]


# ---------------------------------------------------------------------------------------------
# The real thing: transformers serve (slow; needs transformers[serving])
# ---------------------------------------------------------------------------------------------
def _servable_copy(src: Path, dst: Path) -> Path:
    """A copy of a tiny-model save that stock ``transformers serve`` can load without torchvision."""
    shutil.copytree(src, dst)
    (dst / "processor_config.json").write_text(json.dumps({"processor_class": "PaddleOCRVLProcessor"}))
    config_path = dst / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["extra_special_tokens"] = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
    }
    config_path.write_text(json.dumps(config, indent=2))
    return dst


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"transformers serve was not ready within {limit:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_transformers_serve_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from pixelreasoner.models.loading import load_model
    from pixelreasoner.models.tiny import save_tiny_model
    from pixelreasoner.render import Renderer

    saved = save_tiny_model(tmp_path / "tiny", preset="tiny-1m", seed=0)
    model_dir = _servable_copy(saved, tmp_path / "tiny-serve")
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(process, f"http://127.0.0.1:{port}/health", log, limit=120)
        backend = OpenAIBackend(
            f"http://127.0.0.1:{port}/v1", str(model_dir), timeout=60, max_retries=0, budget=BUDGET
        )
        backend.check_server()
        params = SamplingParams(temperature=0.0, max_new_tokens=16)
        queries = [make_query(f"Question {i}?") for i in range(2)]
        with backend:
            trajectories = asyncio.run(
                RolloutEngine(backend, BUDGET, first=params).run_async(queries, concurrency=2)
            )
            # One more first turn on its own: its prompt length is compared with our renderer's.
            probe = make_query("Probe?").conversation
            # And a later turn: an assistant tool call (text) and a returned crop (not resized again).
            later = make_query("Later?").conversation
            later.add_model_turn(CROP_CALL)
            later.add_observation(Observation(text=crop_text(168, 112), images=(picture(168, 112),)))
            single, second = backend.generate([TurnRequest(probe, params), TurnRequest(later, params)])
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
    assert len(trajectories) == 2
    for trajectory in trajectories:
        # The untrained model writes noise: check the structure, not the content.
        assert trajectory.error is None, trajectory.error
        assert trajectory.finish_reason in ("answer", "truncated", "max_calls", "max_images", "max_tokens")
        assert trajectory.n_turns >= 1 and trajectory.prompt_tokens > 0
        assert 0 < trajectory.generated_tokens <= 16 * trajectory.n_turns
    # The server built the same prompt as our renderer: same chat template, same image tokens.
    assert single.error is None and second.error is None, (single.error, second.error)
    _, processor = load_model(saved)
    renderer = Renderer(processor, BUDGET)
    assert single.prompt_tokens == len(renderer.render(probe, add_generation_prompt=True))
    assert second.prompt_tokens == len(renderer.render(later, add_generation_prompt=True))
