"""Drives the gateway's Responses API with the official OpenAI Python SDK and prints what it saw as JSON.

Run by tests/clients.rs with OPENAI_BASE_URL and OPENAI_API_KEY pointing at a test gateway and the
SDK's default settings otherwise. The first argument is what to do: `text` (`responses.create`,
then `responses.stream`) or `tool` (a function tool: `responses.create` answers with its call, the
script runs the shell command, and `responses.stream` sends the call and its output back, the way
the SDK's documentation chains turns without stored responses).
"""

import json
import subprocess
import sys

import openai

MODEL = "gpt-5.5"
client = openai.OpenAI(max_retries=0, timeout=60)
out = {}
failed = []

TOOLS = [
    {
        "type": "function",
        "name": "run_shell_command",
        "description": "Runs a shell command and returns what it printed.",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "The command line."}},
            "required": ["command"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]


def attempt(what, call):
    """Runs one call; a gateway error is noted (status and body) and the next call still runs."""
    try:
        call()
    except openai.APIStatusError as e:
        failed.append(f"{what}: {e.status_code} {e.request.method} {e.request.url}: {e.response.text}")
    except openai.APIConnectionError as e:
        failed.append(f"{what}: {e}")


def text():
    answer = client.responses.create(model=MODEL, input="Say hello.")
    out["text"] = answer.output_text
    out["status"] = answer.status
    out["total_tokens"] = answer.usage.total_tokens if answer.usage else None


def streamed():
    with client.responses.stream(model=MODEL, input="Say hello.") as stream:
        pieces = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    out["streamed"] = "".join(pieces)
    out["stream_final"] = final.output_text


def tool():
    conversation = [
        {"role": "user", "content": "Run the shell command that prints the nonce, then tell me what it printed."}
    ]
    first = client.responses.create(model=MODEL, input=conversation, tools=TOOLS)
    calls = [item for item in first.output if item.type == "function_call"]
    if not calls:
        out["text"] = first.output_text
        return
    conversation += first.output
    for call in calls:
        command = json.loads(call.arguments)["command"]
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
        out.setdefault("commands", []).append(command)
        conversation.append(
            {"type": "function_call_output", "call_id": call.call_id, "output": done.stdout + done.stderr}
        )
    with client.responses.stream(model=MODEL, input=conversation, tools=TOOLS) as stream:
        for _ in stream:
            pass
        out["text"] = stream.get_final_response().output_text


if sys.argv[1] == "text":
    attempt("responses.create", text)
    attempt("responses.stream", streamed)
else:
    attempt("responses.create and responses.stream with a function tool", tool)
json.dump(out, sys.stdout)
if failed:
    print("\n".join(failed), file=sys.stderr)
    sys.exit(1)
