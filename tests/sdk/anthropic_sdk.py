"""The official `anthropic` Python SDK against the gateway.

Run by tests/sdk.rs with GATEWAY_URL (http://127.0.0.1:PORT) and GATEWAY_KEY
(a client key the gateway serves; the SDK sends it as `x-api-key`). Prints
each check as it passes and exits non-zero with a message on the first
failure.
"""

import os
import sys

import anthropic
from anthropic import Anthropic

GATEWAY_URL = os.environ["GATEWAY_URL"]
GATEWAY_KEY = os.environ["GATEWAY_KEY"]
MODEL = "claude-3-5-haiku"
MESSAGES = [{"role": "user", "content": "Tell me about tower middleware."}]


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def ok(message):
    print(f"ok: {message}", flush=True)


def client(key=GATEWAY_KEY):
    return Anthropic(base_url=GATEWAY_URL, api_key=key, max_retries=0, timeout=60)


def create(sdk):
    message = sdk.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    text = "".join(block.text for block in message.content if block.type == "text")
    check(text.strip(), f"messages.create: no text in {message!r}")
    check(message.usage.input_tokens > 0, f"messages.create: usage {message.usage!r}")
    check(message.usage.output_tokens > 0, f"messages.create: usage {message.usage!r}")
    ok(
        f"messages.create: {len(text)} chars, "
        f"{message.usage.input_tokens} in / {message.usage.output_tokens} out tokens"
    )


def stream(sdk):
    with sdk.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as events:
        pieces = [piece for piece in events.text_stream]
        final = events.get_final_message()
    check(pieces, "messages.stream: text_stream yielded nothing")
    check("".join(pieces).strip(), "messages.stream: the pieces join to nothing")
    check(final.usage.output_tokens > 0, f"messages.stream: final usage {final.usage!r}")
    ok(
        f"messages.stream: {len(pieces)} text pieces, "
        f"final message with {final.usage.output_tokens} output tokens"
    )


def wrong_key():
    try:
        client("sk-not-a-key").messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    except anthropic.AuthenticationError as error:
        check(error.status_code == 401, f"wrong key: status {error.status_code}")
        ok("a wrong x-api-key raises AuthenticationError (401)")
        return
    except anthropic.APIStatusError as error:
        fail(f"wrong key: {type(error).__name__} ({error.status_code}), expected AuthenticationError")
    fail("wrong key: the request succeeded")


def main():
    print(f"anthropic {anthropic.__version__} against {GATEWAY_URL}", flush=True)
    sdk = client()
    create(sdk)
    stream(sdk)
    wrong_key()
    print("all anthropic SDK checks passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except anthropic.APIError as error:
        fail(f"{type(error).__name__}: {error}")
