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

tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ask = [{"role": "user", "content": "Weather in Paris?"}]
first = client.chat.completions.create(model="m", messages=ask, tools=tools)
call = first.choices[0].message.tool_calls[0]
out["tool_call"] = {"name": call.function.name, "arguments": json.loads(call.function.arguments),
                    "finish_reason": first.choices[0].finish_reason}
second = client.chat.completions.create(model="m", tools=tools, messages=ask + [
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
    {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
])
out["after_tool"] = second.choices[0].message.content

json.dump(out, sys.stdout)
