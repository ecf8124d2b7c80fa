"""Drives the gateway with the official google-genai Python SDK and prints what it saw as JSON.

Run by tests/clients.rs with GOOGLE_GEMINI_BASE_URL and GEMINI_API_KEY pointing at a test gateway
and the SDK's default settings otherwise (its default API version included). The first argument
is what to do: `text` (a plain and a streamed answer) or `tool` (a Python function tool that the
SDK calls by itself when the model asks for it, and whose result goes back to the model).
"""

import json
import subprocess
import sys

from google import genai
from google.genai import errors, types

MODEL = "gemini-2.5-flash"
client = genai.Client()
out = {}


def run_shell_command(command: str) -> str:
    """Runs a shell command and returns what it printed."""
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    out.setdefault("commands", []).append(command)
    return done.stdout + done.stderr


failed = []


def attempt(what, call):
    """Runs one call; a gateway error is noted (status and body) and the next call still runs."""
    try:
        call()
    except errors.APIError as e:
        request = e.response.request if e.response is not None else None
        where = f"{request.method} {request.url}" if request is not None else ""
        failed.append(f"{what}: {e.code} {where}: {e.details}")


def text():
    answer = client.models.generate_content(model=MODEL, contents="Say hello.")
    out["text"] = answer.text
    out["finish_reason"] = answer.candidates[0].finish_reason.name


def streamed():
    stream = client.models.generate_content_stream(model=MODEL, contents="Say hello.")
    out["streamed"] = "".join(chunk.text or "" for chunk in stream)


def tool():
    answer = client.models.generate_content(
        model=MODEL,
        contents="Run the shell command that prints the nonce, then tell me what it printed.",
        config=types.GenerateContentConfig(tools=[run_shell_command]),
    )
    out["text"] = answer.text


if sys.argv[1] == "text":
    attempt("generate_content", text)
    attempt("generate_content_stream", streamed)
else:
    attempt("generate_content with a function tool", tool)
json.dump(out, sys.stdout)
if failed:
    print("\n".join(failed), file=sys.stderr)
    sys.exit(1)
