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


try:
    if sys.argv[1] == "text":
        answer = client.models.generate_content(model=MODEL, contents="Say hello.")
        out["text"] = answer.text
        out["finish_reason"] = answer.candidates[0].finish_reason.name
        stream = client.models.generate_content_stream(model=MODEL, contents="Say hello.")
        out["streamed"] = "".join(chunk.text or "" for chunk in stream)
    else:
        answer = client.models.generate_content(
            model=MODEL,
            contents="Run the shell command that prints the nonce, then tell me what it printed.",
            config=types.GenerateContentConfig(tools=[run_shell_command]),
        )
        out["text"] = answer.text
except errors.APIError as e:
    # The gateway's answer, status and body, is what a failing test needs.
    print(f"{e.code} {e.response.request.method} {e.response.request.url}: {e.details}", file=sys.stderr)
    sys.exit(1)

json.dump(out, sys.stdout)
