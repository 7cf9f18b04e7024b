"""Requests and answers in OpenAI's shapes (chat completions, completions, models, SSE chunks).

What a request means here (README, "OpenAI-compatible endpoint"):
  model      "routenlp-<task>" names the task; "routenlp" takes it from `task` / X-RouteNLP-Task
  text       chat: the last user message (text parts joined); completions: `prompt` (one string)
  routing    `max_tier`, `policy`, `request_id` body fields (the openai client's extra_body) or
             the X-RouteNLP-Max-Tier / X-RouteNLP-Policy / X-Request-Id headers
  ignored    sampling knobs (temperature, top_p, max_tokens, stop, ...): each tier answers with the
             settings the cascade was calibrated for; n must be 1 (one accepted answer)
Answers carry `usage` and the routing metadata (tier, path, cost_usd, escalations, ...) in the
extension field `routenlp`, which the openai client keeps (`completion.model_extra["routenlp"]`).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import bad_request

MODEL_PREFIX = "routenlp-"
GENERIC_MODEL = "routenlp"
EXTENSION_FIELD = "routenlp"


class RoutingFields(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI's other knobs are accepted and ignored

    model: str
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    task: str | None = None
    max_tier: str | None = None
    policy: str | None = None
    request_id: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[TextPart] | None = None


class ChatRequest(RoutingFields):
    messages: list[Message] = Field(min_length=1)

    def text(self) -> str:
        """The last user message: the tiers are task models, each request is one text."""
        for message in reversed(self.messages):
            if message.role != "user":
                continue
            if isinstance(message.content, list):
                if any(part.type != "text" for part in message.content):
                    raise bad_request("only text content parts are supported", "messages")
                return "\n".join(part.text or "" for part in message.content)
            return message.content or ""
        raise bad_request("messages needs a message with role 'user' (its content is the text to route)", "messages")


class CompletionRequest(RoutingFields):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise bad_request(f"prompt must be one string; got a list of {len(self.prompt)} (send one text per request)", "prompt")
            return self.prompt[0]
        return self.prompt


def model_list(tasks: tuple[str, ...]) -> dict[str, Any]:
    ids = [MODEL_PREFIX + task for task in tasks] + [GENERIC_MODEL]
    return {"object": "list", "data": [model_card(model_id) for model_id in ids]}


def model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "routenlp"}


def usage(metadata: dict[str, Any], answer_tokens: int) -> dict[str, int]:
    """total_tokens: every token billed along the cascade (METADATA tokens, what cost_usd is
    computed from); completion_tokens: the answer's tokens when a decoder tier wrote it (at most
    what that tier billed; T1 classifies and writes none); prompt_tokens: the rest."""
    tokens = metadata.get("tokens") or {}
    total = int(sum(tokens.values()))
    tier = metadata.get("tier")
    completion = 0 if tier == "t1" else min(answer_tokens, int(tokens.get(tier, 0)))
    return {"prompt_tokens": total - completion, "completion_tokens": completion, "total_tokens": total}


Kind = Literal["chat", "completion"]
_OBJECT = {"chat": "chat.completion", "completion": "text_completion"}
_ID_PREFIX = {"chat": "chatcmpl-", "completion": "cmpl-"}


def _choice(kind: Kind, content: str | None, finish_reason: str | None, *, delta: bool) -> dict[str, Any]:
    if kind == "completion":
        return {"index": 0, "text": content or "", "finish_reason": finish_reason, "logprobs": None}
    if delta:
        body = {} if content is None else {"role": "assistant", "content": content}
        return {"index": 0, "delta": body, "finish_reason": finish_reason, "logprobs": None}
    return {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason, "logprobs": None}


def completion_body(kind: Kind, model: str, output: str, metadata: dict[str, Any], usage_: dict[str, int]) -> dict[str, Any]:
    return {
        "id": _ID_PREFIX[kind] + metadata["request_id"],
        "object": _OBJECT[kind],
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(kind, output, "stop", delta=False)],
        "usage": usage_,
        EXTENSION_FIELD: metadata,
    }


def stream_chunks(kind: Kind, model: str, output: str, metadata: dict[str, Any], usage_: dict[str, int], include_usage: bool) -> list[dict[str, Any]]:
    """The SSE data objects of one streamed answer: the accepted answer in one content chunk
    (the cascade decided on the whole answer before it is sent), then the finish chunk with the
    routing metadata, then the usage chunk when stream_options.include_usage is set."""
    base = {"id": _ID_PREFIX[kind] + metadata["request_id"], "object": _OBJECT[kind] + (".chunk" if kind == "chat" else ""), "created": int(time.time()), "model": model}
    chunks = [
        {**base, "choices": [_choice(kind, output, None, delta=True)]},
        {**base, "choices": [_choice(kind, None, "stop", delta=True)], EXTENSION_FIELD: metadata},
    ]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage_})
    return chunks
