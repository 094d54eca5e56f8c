"""Drives `picode serve` with the official OpenAI and Anthropic Python SDKs.

Usage: clients.py BASE_URL TOKEN. Prints one JSON object with what each SDK
made of the answers; the Rust test (tests/it/sdk.rs) scripts the upstream
model and checks the result. Any SDK error ends the script with a traceback.
"""

import json
import sys

import anthropic
import openai

base, token = sys.argv[1], sys.argv[2]
out = {}

weather = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}

# OpenAI: a streamed answer with text and a tool call, then its result.
oa = openai.OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0)
text, calls = "", {}
stream = oa.chat.completions.create(
    model="fake-model",
    stream=True,
    messages=[{"role": "user", "content": "Weather in Paris?"}],
    tools=[{"type": "function", "function": {"name": "get_weather", "parameters": weather}}],
    tool_choice="required",
)
for chunk in stream:
    for choice in chunk.choices:
        text += choice.delta.content or ""
        for call in choice.delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
out["openai_stream"] = {"text": text, "calls": list(calls.values())}

# Anthropic: the SDK's own stream helper assembles the message.
an = anthropic.Anthropic(base_url=base, api_key=token, max_retries=0)
with an.messages.stream(
    model="fake-model",
    max_tokens=256,
    messages=[{"role": "user", "content": "Weather in Paris?"}],
    tools=[{"name": "get_weather", "description": "Weather", "input_schema": weather}],
) as s:
    message = s.get_final_message()
out["anthropic_stream"] = {
    "stop_reason": message.stop_reason,
    "content": [block.model_dump() for block in message.content],
    "output_tokens": message.usage.output_tokens,
}

# Anthropic, not streamed, with the tool result going back.
message = an.messages.create(
    model="fake-model",
    max_tokens=256,
    messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ],
)
out["anthropic_plain"] = {"text": message.content[0].text, "stop_reason": message.stop_reason}

# A wrong key is an authentication error the SDK recognises.
try:
    anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(
        model="fake-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    out["anthropic_bad_key"] = "accepted"
except anthropic.AuthenticationError as e:
    out["anthropic_bad_key"] = type(e).__name__

print(json.dumps(out))
