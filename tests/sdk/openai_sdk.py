"""The official `openai` Python SDK against the gateway.

Run by tests/sdk.rs with GATEWAY_URL (http://127.0.0.1:PORT) and GATEWAY_KEY
(a client key the gateway serves). Prints each check as it passes and exits
non-zero with a message on the first failure.
"""

import os
import sys

import openai
from openai import OpenAI

GATEWAY_URL = os.environ["GATEWAY_URL"]
GATEWAY_KEY = os.environ["GATEWAY_KEY"]
CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
PROMPT = [{"role": "user", "content": "Tell me about tower middleware."}]


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def ok(message):
    print(f"ok: {message}", flush=True)


def client(key=GATEWAY_KEY):
    return OpenAI(base_url=GATEWAY_URL + "/v1", api_key=key, max_retries=0, timeout=60)


def chat(sdk):
    completion = sdk.chat.completions.create(model=CHAT_MODEL, messages=PROMPT)
    check(completion.choices, f"chat: no choices in {completion!r}")
    content = completion.choices[0].message.content
    check(content, f"chat: empty content in {completion!r}")
    check(completion.usage is not None, f"chat: no usage in {completion!r}")
    check(completion.usage.total_tokens > 0, f"chat: usage {completion.usage!r}")
    ok(f"chat.completions.create: {len(content)} chars, {completion.usage.total_tokens} tokens")


def chat_stream(sdk):
    stream = sdk.chat.completions.create(
        model=CHAT_MODEL,
        messages=PROMPT,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = []
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    check(len(pieces) >= 2, f"chat stream: {len(pieces)} content chunks, expected several")
    check("".join(pieces).strip(), "chat stream: the joined text is empty")
    check(usage is not None, "chat stream: no usage chunk despite include_usage")
    check(usage.total_tokens > 0, f"chat stream: usage {usage!r}")
    ok(f"chat.completions.create(stream=True): {len(pieces)} chunks, {usage.total_tokens} tokens")


def embeddings(sdk):
    first = sdk.embeddings.create(model=EMBEDDING_MODEL, input=["a", "b"])
    check(len(first.data) == 2, f"embeddings: {len(first.data)} vectors for 2 inputs")
    by_index = sorted(first.data, key=lambda e: e.index)
    check([e.index for e in by_index] == [0, 1], f"embeddings: indexes {[e.index for e in first.data]}")
    a, b = by_index[0].embedding, by_index[1].embedding
    check(len(a) > 0, "embeddings: an empty vector")
    check(len(a) == len(b), f"embeddings: vectors of {len(a)} and {len(b)} dimensions")
    check(all(isinstance(x, float) for x in a), "embeddings: the vector is not floats")
    again = sdk.embeddings.create(model=EMBEDDING_MODEL, input=["a", "b"])
    again_a = sorted(again.data, key=lambda e: e.index)[0].embedding
    check(again_a == a, "embeddings: the same input gave a different vector")
    # A different request body (so no cached answer): each text keeps its vector.
    swapped = sorted(
        sdk.embeddings.create(model=EMBEDDING_MODEL, input=["b", "a"]).data,
        key=lambda e: e.index,
    )
    check(
        [e.embedding for e in swapped] == [b, a],
        "embeddings: a text's vector depends on the other inputs",
    )
    ok(f"embeddings.create: 2 vectors of {len(a)} dimensions, deterministic")


def models(sdk):
    ids = {model.id for model in sdk.models.list()}
    for wanted in (CHAT_MODEL, "claude-3-5-haiku", EMBEDDING_MODEL):
        check(wanted in ids, f"models.list: {wanted} missing from {sorted(ids)}")
    ok(f"models.list: {sorted(ids)}")


def responses(sdk):
    response = sdk.responses.create(model=CHAT_MODEL, input="Tell me about tower middleware.")
    check(response.output_text, f"responses: empty output_text in {response!r}")
    check(response.usage is not None, f"responses: no usage in {response!r}")
    check(response.usage.input_tokens > 0, f"responses: usage {response.usage!r}")
    ok(f"responses.create: {len(response.output_text)} chars, {response.usage.input_tokens} input tokens")


def responses_stream(sdk):
    stream = sdk.responses.create(
        model=CHAT_MODEL, input="Tell me about tower middleware.", stream=True
    )
    deltas = []
    completed = None
    types = []
    for event in stream:
        types.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            completed = event.response
    check(deltas, f"responses stream: no response.output_text.delta events in {types}")
    check("".join(deltas).strip(), "responses stream: the deltas join to nothing")
    check(completed is not None, f"responses stream: no response.completed event in {types}")
    check(completed.usage is not None, "responses stream: response.completed without usage")
    check(completed.usage.output_tokens > 0, f"responses stream: usage {completed.usage!r}")
    ok(f"responses.create(stream=True): {len(deltas)} deltas, then response.completed with usage")


def wrong_key():
    try:
        client("sk-not-a-key").chat.completions.create(model=CHAT_MODEL, messages=PROMPT)
    except openai.AuthenticationError as error:
        check(error.status_code == 401, f"wrong key: status {error.status_code}")
        ok("a wrong key raises AuthenticationError (401)")
        return
    except openai.APIStatusError as error:
        fail(f"wrong key: {type(error).__name__} ({error.status_code}), expected AuthenticationError")
    fail("wrong key: the request succeeded")


def unknown_model(sdk):
    try:
        sdk.chat.completions.create(model="no-such-model", messages=PROMPT)
    except openai.NotFoundError as error:
        check(error.status_code == 404, f"unknown model: status {error.status_code}")
        ok("an unknown model raises NotFoundError (404)")
        return
    except openai.APIStatusError as error:
        fail(f"unknown model: {type(error).__name__} ({error.status_code}), expected NotFoundError")
    fail("unknown model: the request succeeded")


def main():
    print(f"openai {openai.__version__} against {GATEWAY_URL}", flush=True)
    sdk = client()
    chat(sdk)
    chat_stream(sdk)
    embeddings(sdk)
    models(sdk)
    responses(sdk)
    responses_stream(sdk)
    wrong_key()
    unknown_model(sdk)
    print("all openai SDK checks passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except openai.APIError as error:
        fail(f"{type(error).__name__}: {error}")
