//! The mock's answers in OpenAI's Responses format: a Response object, and
//! the stream of typed events the real API sends (each with its
//! `sequence_number`), ending with `response.completed` carrying the whole
//! response.

use serde_json::{Value, json};

use super::{Answer, Used};

const RESPONSE_ID: &str = "resp_mock";
const MESSAGE_ID: &str = "msg_mock";
const CALL_ITEM_ID: &str = "fc_mock1";
const CALL_ID: &str = "call_mock1";

/// The output of the tool call that the request's last input item answers.
pub(super) fn tool_result(body: &Value) -> Option<String> {
    let last = body["input"].as_array()?.last()?;
    let kind = last["type"].as_str()?;
    if kind != "function_call_output" && kind != "custom_tool_call_output" {
        return None;
    }
    Some(match &last["output"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        other => other.to_string(),
    })
}

/// True when the request declares `name` as a freeform (`custom`) tool.
fn is_custom(body: &Value, name: &str) -> bool {
    body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["type"] == "custom" && t["name"] == name)
}

/// The input of a freeform call: the text itself when the scripted
/// arguments are a JSON string.
fn custom_input(args: &str) -> String {
    match serde_json::from_str::<Value>(args) {
        Ok(Value::String(s)) => s,
        _ => args.to_string(),
    }
}

/// The finished output item of an answer.
fn item(body: &Value, a: &Answer) -> Value {
    match a {
        Answer::Text(pieces) => json!({
            "type": "message", "id": MESSAGE_ID, "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": pieces.concat(), "annotations": [], "logprobs": []}]
        }),
        Answer::Tool { name, args } if is_custom(body, name) => json!({
            "type": "custom_tool_call", "id": CALL_ITEM_ID, "status": "completed",
            "call_id": CALL_ID, "name": name, "input": custom_input(&args.concat())
        }),
        Answer::Tool { name, args } => json!({
            "type": "function_call", "id": CALL_ITEM_ID, "status": "completed",
            "call_id": CALL_ID, "name": name, "arguments": args.concat()
        }),
    }
}

/// A Response object with `status`; its output is the answer's item once
/// the response is completed.
pub(super) fn response(model: &str, body: &Value, a: &Answer, status: &str, used: &Used) -> Value {
    let done = status == "completed";
    let output = if done {
        json!([item(body, a)])
    } else {
        json!([])
    };
    let usage = if done {
        json!({
            "input_tokens": used.input, "input_tokens_details": {"cached_tokens": used.cached},
            "output_tokens": used.output, "output_tokens_details": {"reasoning_tokens": used.reasoning},
            "total_tokens": used.input + used.output
        })
    } else {
        Value::Null
    };
    json!({
        "id": RESPONSE_ID, "object": "response", "created_at": 1, "status": status,
        "error": null, "incomplete_details": null, "model": model, "output": output,
        "parallel_tool_calls": body["parallel_tool_calls"].as_bool().unwrap_or(true),
        "tool_choice": body.get("tool_choice").cloned().unwrap_or(json!("auto")),
        "tools": body.get("tools").cloned().unwrap_or(json!([])),
        "store": body["store"].as_bool().unwrap_or(true),
        "usage": usage
    })
}

/// The stream of an answer, as (event name, data) pairs.
pub(super) fn events(
    model: &str,
    body: &Value,
    a: &Answer,
    used: &Used,
) -> Vec<(Option<&'static str>, String)> {
    let mut out: Vec<(&'static str, Value)> = vec![
        (
            "response.created",
            json!({"response": response(model, body, a, "in_progress", used)}),
        ),
        (
            "response.in_progress",
            json!({"response": response(model, body, a, "in_progress", used)}),
        ),
    ];
    let done = item(body, a);
    match a {
        Answer::Text(pieces) => {
            let text = pieces.concat();
            let at = json!({"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0});
            let with = |extra: Value| {
                let mut v = at.clone();
                v.as_object_mut()
                    .unwrap()
                    .extend(extra.as_object().unwrap().clone());
                v
            };
            out.push((
                "response.output_item.added",
                json!({"output_index": 0, "item": {"type": "message", "id": MESSAGE_ID, "status": "in_progress", "role": "assistant", "content": []}}),
            ));
            out.push((
                "response.content_part.added",
                with(json!({"part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})),
            ));
            for p in pieces {
                out.push((
                    "response.output_text.delta",
                    with(json!({"delta": p, "logprobs": []})),
                ));
            }
            out.push((
                "response.output_text.done",
                with(json!({"text": text, "logprobs": []})),
            ));
            out.push((
                "response.content_part.done",
                with(json!({"part": done["content"][0]})),
            ));
        }
        Answer::Tool { args, .. } => {
            let mut added = done.clone();
            added["status"] = json!("in_progress");
            let custom = done["type"] == "custom_tool_call";
            let (field, delta, finished) = if custom {
                (
                    "input",
                    "response.custom_tool_call_input.delta",
                    "response.custom_tool_call_input.done",
                )
            } else {
                (
                    "arguments",
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.done",
                )
            };
            added[field] = json!("");
            out.push((
                "response.output_item.added",
                json!({"output_index": 0, "item": added}),
            ));
            let pieces: Vec<String> = if custom {
                vec![done["input"].as_str().unwrap_or_default().to_string()]
            } else {
                args.clone()
            };
            for p in pieces {
                out.push((
                    delta,
                    json!({"item_id": CALL_ITEM_ID, "output_index": 0, "delta": p}),
                ));
            }
            let mut end = json!({"item_id": CALL_ITEM_ID, "output_index": 0});
            end[field] = done[field].clone();
            if !custom {
                end["name"] = done["name"].clone();
            }
            out.push((finished, end));
        }
    }
    out.push((
        "response.output_item.done",
        json!({"output_index": 0, "item": done}),
    ));
    out.push((
        "response.completed",
        json!({"response": response(model, body, a, "completed", used)}),
    ));
    out.into_iter()
        .enumerate()
        .map(|(i, (name, mut data))| {
            let fields = data.as_object_mut().unwrap();
            let mut v = serde_json::Map::new();
            v.insert("type".into(), json!(name));
            v.insert("sequence_number".into(), json!(i));
            v.append(fields);
            (Some(name), Value::Object(v).to_string())
        })
        .collect()
}
