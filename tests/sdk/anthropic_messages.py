"""Drives the gateway with the official Anthropic Python SDK and prints what it saw as JSON.

Run by tests/sdk.rs with ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY pointing at a test gateway.
"""

import json
import sys

import anthropic

client = anthropic.Anthropic(max_retries=0, timeout=20)
ask = [{"role": "user", "content": "Say hello."}]
out = {}

message = client.messages.create(model="m", max_tokens=100, system="Be brief.", messages=ask)
out["text"] = message.content[0].text
out["stop_reason"] = message.stop_reason
out["usage"] = [message.usage.input_tokens, message.usage.output_tokens]

with client.messages.stream(model="m", max_tokens=100, messages=ask) as stream:
    out["streamed"] = "".join(stream.text_stream)
    final = stream.get_final_message()
out["stream_stop_reason"] = final.stop_reason
out["stream_text"] = final.content[0].text

out["count"] = client.messages.count_tokens(model="m", messages=[{"role": "user", "content": "x" * 400}]).input_tokens

tools = [{"name": "get_weather", "description": "Weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
weather = [{"role": "user", "content": "Weather in Paris?"}]
first = client.messages.create(model="m", max_tokens=100, tools=tools, messages=weather)
use = next(b for b in first.content if b.type == "tool_use")
out["tool_use"] = {"name": use.name, "input": use.input, "stop_reason": first.stop_reason}
second = client.messages.create(model="m", max_tokens=100, tools=tools, messages=weather + [
    {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]},
])
out["after_tool"] = second.content[0].text

try:
    client.messages.create(model="no-such-model", max_tokens=10, messages=ask)
    out["missing_model"] = "no error"
except anthropic.NotFoundError as e:
    out["missing_model"] = {"status": e.status_code, "type": e.body["error"]["type"]}

json.dump(out, sys.stdout)
