"""Reads fake-llm's Responses API with the official OpenAI Python SDK.

Usage: responses.py BASE_URL. Prints one JSON object: what the SDK
assembled from a streamed answer (text and a function call) and from a
non-streamed one. The SDK parses every event into its typed models, so an
event of the wrong shape fails here.
"""

import json
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="k", max_retries=0)
tools = [{"type": "function", "name": "shell", "description": "Run a command",
          "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                         "required": ["command"]}}]
out = {"types": []}
with client.responses.stream(model="fake-model", input="list files", tools=tools) as stream:
    for event in stream:
        out["types"].append(event.type)
    final = stream.get_final_response()
out["stream"] = {
    "text": final.output_text,
    "calls": [{"name": i.name, "arguments": i.arguments, "call_id": i.call_id}
              for i in final.output if i.type == "function_call"],
    "usage": final.usage.output_tokens,
}
plain = client.responses.create(model="fake-model", input=[
    {"role": "user", "content": [{"type": "input_text", "text": "echo me"}]}])
out["plain"] = plain.output_text
print(json.dumps(out))
