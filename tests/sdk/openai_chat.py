"""Drives the gateway with the official OpenAI Python SDK and prints what it saw as JSON.

Run by tests/sdk.rs with OPENAI_BASE_URL and OPENAI_API_KEY pointing at a test gateway.
"""

import json
import sys

import openai

client = openai.OpenAI(max_retries=0, timeout=20)
messages = [{"role": "user", "content": "Say hello."}]
out = {}

completion = client.chat.completions.create(model="m", messages=messages)
out["content"] = completion.choices[0].message.content
out["finish_reason"] = completion.choices[0].finish_reason
out["total_tokens"] = completion.usage.total_tokens

pieces = []
finish = None
with client.chat.completions.create(model="m", messages=messages, stream=True) as stream:
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
out["streamed"] = "".join(pieces)
out["stream_finish_reason"] = finish

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    out["missing_model"] = "no error"
except openai.NotFoundError as e:
    out["missing_model"] = {"status": e.status_code, "code": e.code}

bad = openai.OpenAI(max_retries=0, api_key="sk-not-a-key")
try:
    bad.chat.completions.create(model="m", messages=messages)
    out["bad_key"] = "no error"
except openai.AuthenticationError as e:
    out["bad_key"] = {"status": e.status_code}

json.dump(out, sys.stdout)
