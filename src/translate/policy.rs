//! The translation policy as one table: for each request field a client can
//! send, what each other provider gets. Content is carried or the credential
//! is left out; generation controls are mapped to the nearest equivalent or
//! dropped, never refused.
//!
//! The parsers consult it for the fields that leave a credential out; the
//! README's mapping table is this table rendered (a test compares them), and
//! the golden tests send every row's example through every direction and
//! check the target got what the row says.

use crate::wire::Format;

/// What one target does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treat {
    /// Carried, or mapped to its nearest equivalent, at this path of the
    /// target's body (dots between keys; `messages[]` is some element).
    To(&'static str),
    /// A generation control the target has no counterpart for.
    Dropped,
    /// Content the target cannot express: its credentials are left out.
    LeftOut,
}

/// One row: a field of the client's format and what each target gets.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub client: Format,
    /// The field, as a dotted path in the client's body.
    pub field: &'static str,
    /// Which values of it the row is about, when it matters.
    pub case: &'static str,
    /// A JSON object merged into a minimal request of the client's format,
    /// showing the row (used by the golden tests).
    pub example: &'static str,
    pub openai: Treat,
    pub anthropic: Treat,
    pub gemini: Treat,
}

impl Rule {
    /// What a credential answering in `format` gets (a Responses upstream
    /// is an OpenAI credential).
    pub fn target(&self, format: Format) -> Treat {
        match format {
            Format::OpenAi | Format::Responses => self.openai,
            Format::Anthropic => self.anthropic,
            Format::Gemini => self.gemini,
        }
    }
}

use Format::{Anthropic as A, Gemini as G, OpenAi as O, Responses as R};
use Treat::{Dropped as D, LeftOut as L, To};

const fn rule(
    client: Format,
    field: &'static str,
    case: &'static str,
    example: &'static str,
    targets: [Treat; 3],
) -> Rule {
    Rule {
        client,
        field,
        case,
        example,
        openai: targets[0],
        anthropic: targets[1],
        gemini: targets[2],
    }
}

/// Every field the gateway knows, per client format. Top-level fields that
/// are not listed are request settings of formats newer than this table:
/// they are dropped when translating (and passed on when not).
#[rustfmt::skip]
pub const RULES: &[Rule] = &[
    // Anthropic messages.
    rule(A, "system", "", r#"{"system":"be brief"}"#, [To("messages[].content"), To("system"), To("systemInstruction")]),
    rule(A, "messages[].role", "system, inside the conversation", r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"system","content":"be brief"},{"role":"user","content":"c"}]}"#, [To("messages[].content"), To("system"), To("systemInstruction")]),
    rule(A, "max_tokens", "", r#"{"max_tokens":77}"#, [To("max_completion_tokens"), To("max_tokens"), To("generationConfig.maxOutputTokens")]),
    rule(A, "temperature", "", r#"{"temperature":0.25}"#, [To("temperature"), To("temperature"), To("generationConfig.temperature")]),
    rule(A, "top_p", "", r#"{"top_p":0.75}"#, [To("top_p"), To("top_p"), To("generationConfig.topP")]),
    rule(A, "top_k", "", r#"{"top_k":7}"#, [D, To("top_k"), To("generationConfig.topK")]),
    rule(A, "stop_sequences", "", r#"{"stop_sequences":["END"]}"#, [To("stop"), To("stop_sequences"), To("generationConfig.stopSequences")]),
    rule(A, "tools", "custom tools", r#"{"tools":[{"name":"f","description":"d","input_schema":{"type":"object","properties":{}}}]}"#, [To("tools"), To("tools"), To("tools.0.functionDeclarations")]),
    rule(A, "tools", "server tools (web search, code execution...)", r#"{"tools":[{"type":"web_search_20250305","name":"web_search"}]}"#, [L, To("tools"), L]),
    rule(A, "tool_choice", "", r#"{"tools":[{"name":"f","input_schema":{"type":"object"}}],"tool_choice":{"type":"any"}}"#, [To("tool_choice"), To("tool_choice"), To("toolConfig.functionCallingConfig.mode")]),
    rule(A, "thinking", "enabled, with budget_tokens", r#"{"max_tokens":20000,"thinking":{"type":"enabled","budget_tokens":10000}}"#, [To("reasoning_effort"), To("thinking.budget_tokens"), To("generationConfig.thinkingConfig.thinkingBudget")]),
    rule(A, "thinking", "adaptive", r#"{"thinking":{"type":"adaptive"}}"#, [D, To("thinking.budget_tokens"), To("generationConfig.thinkingConfig.thinkingBudget")]),
    rule(A, "output_config.effort", "", r#"{"output_config":{"effort":"low"}}"#, [To("reasoning_effort"), To("thinking.budget_tokens"), To("generationConfig.thinkingConfig.thinkingBudget")]),
    rule(A, "output_config.format", "json_schema", r#"{"output_config":{"format":{"type":"json_schema","schema":{"type":"object","properties":{"a":{"type":"string"}}}}}}"#, [To("response_format.json_schema.schema"), To("output_config.format.schema"), To("generationConfig.responseJsonSchema")]),
    rule(A, "output_format", "json_schema (the beta's name)", r#"{"output_format":{"type":"json_schema","schema":{"type":"object","properties":{"a":{"type":"string"}}}}}"#, [To("response_format.json_schema.schema"), To("output_config.format.schema"), To("generationConfig.responseJsonSchema")]),
    rule(A, "metadata", "", r#"{"metadata":{"user_id":"u1"}}"#, [D, To("metadata"), D]),
    rule(A, "context_management", "", r#"{"context_management":{"edits":[{"type":"clear_tool_uses_20250919"}]}}"#, [D, To("context_management"), D]),
    rule(A, "service_tier", "", r#"{"service_tier":"auto"}"#, [D, To("service_tier"), D]),
    rule(A, "container", "", r#"{"container":"c1"}"#, [D, To("container"), D]),
    rule(A, "mcp_servers", "", r#"{"mcp_servers":[{"type":"url","url":"https://mcp.example","name":"x"}]}"#, [L, To("mcp_servers"), L]),
    rule(A, "cache_control", "on system, message and tool blocks", r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]}]}"#, [D, To("messages"), D]),
    rule(A, "messages[].content[].type", "document (a PDF, base64)", r#"{"messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0="}},{"type":"text","text":"hi"}]}]}"#, [To("messages.0.content.0.file.file_data"), To("messages"), To("contents.0.parts.0.inlineData")]),
    // OpenAI chat completions.
    rule(O, "messages[].role", "system or developer, first", r#"{"messages":[{"role":"developer","content":"be brief"},{"role":"user","content":"a"}]}"#, [To("messages"), To("system"), To("systemInstruction")]),
    rule(O, "messages[].role", "system or developer, inside the conversation", r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"system","content":"be brief"},{"role":"user","content":"c"}]}"#, [To("messages"), To("system"), To("systemInstruction")]),
    rule(O, "max_tokens", "", r#"{"max_tokens":77}"#, [To("max_tokens"), To("max_tokens"), To("generationConfig.maxOutputTokens")]),
    rule(O, "max_completion_tokens", "", r#"{"max_completion_tokens":77}"#, [To("max_completion_tokens"), To("max_tokens"), To("generationConfig.maxOutputTokens")]),
    rule(O, "temperature", "", r#"{"temperature":0.25}"#, [To("temperature"), To("temperature"), To("generationConfig.temperature")]),
    rule(O, "top_p", "", r#"{"top_p":0.75}"#, [To("top_p"), To("top_p"), To("generationConfig.topP")]),
    rule(O, "stop", "", r#"{"stop":["END"]}"#, [To("stop"), To("stop_sequences"), To("generationConfig.stopSequences")]),
    rule(O, "presence_penalty", "", r#"{"presence_penalty":0.5}"#, [To("presence_penalty"), D, To("generationConfig.presencePenalty")]),
    rule(O, "frequency_penalty", "", r#"{"frequency_penalty":0.5}"#, [To("frequency_penalty"), D, To("generationConfig.frequencyPenalty")]),
    rule(O, "seed", "", r#"{"seed":42}"#, [To("seed"), D, To("generationConfig.seed")]),
    rule(O, "tools", "function tools", r#"{"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}]}"#, [To("tools"), To("tools"), To("tools.0.functionDeclarations")]),
    rule(O, "tools", "other tool types", r#"{"tools":[{"type":"web_search"}]}"#, [To("tools"), L, L]),
    rule(O, "tool_choice", "", r#"{"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required"}"#, [To("tool_choice"), To("tool_choice"), To("toolConfig.functionCallingConfig.mode")]),
    rule(O, "reasoning_effort", "", r#"{"reasoning_effort":"high"}"#, [To("reasoning_effort"), To("thinking.budget_tokens"), To("generationConfig.thinkingConfig.thinkingBudget")]),
    rule(O, "response_format", "json_schema", r#"{"response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{"type":"object","properties":{"a":{"type":"string"}}}}}}"#, [To("response_format"), To("output_config.format.schema"), To("generationConfig.responseJsonSchema")]),
    rule(O, "response_format", "json_object", r#"{"response_format":{"type":"json_object"}}"#, [To("response_format"), To("system"), To("generationConfig.responseMimeType")]),
    rule(O, "n", "more than 1", r#"{"n":2}"#, [To("n"), L, L]),
    rule(O, "audio", "", r#"{"audio":{"voice":"alloy","format":"wav"}}"#, [To("audio"), L, L]),
    rule(O, "web_search_options", "", r#"{"web_search_options":{}}"#, [To("web_search_options"), L, L]),
    rule(O, "parallel_tool_calls", "", r#"{"parallel_tool_calls":false}"#, [To("parallel_tool_calls"), D, D]),
    rule(O, "user", "", r#"{"user":"u1"}"#, [To("user"), D, D]),
    rule(O, "metadata", "", r#"{"metadata":{"k":"v"}}"#, [To("metadata"), D, D]),
    rule(O, "store", "", r#"{"store":false}"#, [To("store"), D, D]),
    rule(O, "service_tier", "", r#"{"service_tier":"auto"}"#, [To("service_tier"), D, D]),
    rule(O, "stream_options", "", r#"{"stream_options":{"include_usage":true}}"#, [To("stream_options"), D, D]),
    rule(O, "prompt_cache_key", "", r#"{"prompt_cache_key":"k"}"#, [To("prompt_cache_key"), D, D]),
    rule(O, "safety_identifier", "", r#"{"safety_identifier":"u1"}"#, [To("safety_identifier"), D, D]),
    rule(O, "logit_bias", "", r#"{"logit_bias":{"50256":-100}}"#, [To("logit_bias"), D, D]),
    rule(O, "logprobs", "", r#"{"logprobs":true,"top_logprobs":2}"#, [To("logprobs"), D, D]),
    rule(O, "verbosity", "", r#"{"verbosity":"low"}"#, [To("verbosity"), D, D]),
    rule(O, "prediction", "", r#"{"prediction":{"type":"content","content":"x"}}"#, [To("prediction"), D, D]),
    rule(O, "modalities", "text only", r#"{"modalities":["text"]}"#, [To("modalities"), D, D]),
    rule(O, "cache_control", "on content parts", r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]}]}"#, [To("messages"), To("messages.0.content.0.cache_control"), D]),
    rule(O, "messages[].content[].type", "file (inline file_data)", r#"{"messages":[{"role":"user","content":[{"type":"file","file":{"filename":"a.pdf","file_data":"data:application/pdf;base64,JVBERi0="}}]}]}"#, [To("messages"), To("messages.0.content.0.source.data"), To("contents.0.parts.0.inlineData")]),
    // OpenAI Responses (→ OpenAI: chat completions; a credential with
    // `responses_api` gets the request as is).
    rule(R, "instructions", "", r#"{"instructions":"be brief"}"#, [To("messages[].content"), To("system"), To("systemInstruction")]),
    rule(R, "input[].role", "developer or system", r#"{"input":[{"role":"developer","content":"be brief"},{"role":"user","content":"hi"}]}"#, [To("messages[].content"), To("system"), To("systemInstruction")]),
    rule(R, "input[].type", "function_call and function_call_output", r#"{"tools":[{"type":"function","name":"f","parameters":{"type":"object"}}],"input":[{"role":"user","content":"hi"},{"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},{"type":"function_call_output","call_id":"c1","output":"ok"}]}"#, [To("messages[].tool_calls"), To("messages[].content"), To("contents")]),
    rule(R, "input[].type", "custom_tool_call and its output", r#"{"tools":[{"type":"custom","name":"apply_patch"}],"input":[{"role":"user","content":"hi"},{"type":"custom_tool_call","call_id":"c1","name":"apply_patch","input":"*** Begin Patch"},{"type":"custom_tool_call_output","call_id":"c1","output":"Done"}]}"#, [To("messages[].tool_calls"), To("messages[].content"), To("contents")]),
    rule(R, "input[].type", "reasoning, web_search_call", r#"{"input":[{"type":"reasoning","summary":[],"encrypted_content":"e"},{"type":"web_search_call","action":{"query":"q"}},{"role":"user","content":"hi"}]}"#, [D, D, D]),
    rule(R, "input[].type", "item_reference, built-in tool calls", r#"{"input":[{"type":"item_reference","id":"msg_1"},{"role":"user","content":"hi"}]}"#, [L, L, L]),
    rule(R, "input[].content[].type", "input_file (inline file_data)", r#"{"input":[{"role":"user","content":[{"type":"input_file","filename":"a.pdf","file_data":"data:application/pdf;base64,JVBERi0="}]}]}"#, [To("messages.0.content.0.file.file_data"), To("messages.0.content.0.source.data"), To("contents.0.parts.0.inlineData")]),
    rule(R, "max_output_tokens", "", r#"{"max_output_tokens":77}"#, [To("max_completion_tokens"), To("max_tokens"), To("generationConfig.maxOutputTokens")]),
    rule(R, "temperature", "", r#"{"temperature":0.25}"#, [To("temperature"), To("temperature"), To("generationConfig.temperature")]),
    rule(R, "top_p", "", r#"{"top_p":0.75}"#, [To("top_p"), To("top_p"), To("generationConfig.topP")]),
    rule(R, "tools", "function tools", r#"{"tools":[{"type":"function","name":"f","parameters":{"type":"object","properties":{}}}]}"#, [To("tools"), To("tools"), To("tools.0.functionDeclarations")]),
    rule(R, "tools", "custom tools (free text: a function of one string, `input`)", r#"{"tools":[{"type":"custom","name":"apply_patch","description":"d"}]}"#, [To("tools.0.function.parameters.properties.input"), To("tools.0.input_schema.properties.input"), To("tools.0.functionDeclarations")]),
    rule(R, "tools", "hosted tools (web_search, tool_search, file_search, mcp, namespace...)", r#"{"tools":[{"type":"web_search","external_web_access":true},{"type":"tool_search","execution":"client"}]}"#, [D, D, D]),
    rule(R, "tools", "tool types unknown to the gateway", r#"{"tools":[{"type":"computer_2099"}]}"#, [L, L, L]),
    rule(R, "tool_choice", "", r#"{"tools":[{"type":"function","name":"f"}],"tool_choice":"required"}"#, [To("tool_choice"), To("tool_choice"), To("toolConfig.functionCallingConfig.mode")]),
    rule(R, "reasoning.effort", "", r#"{"reasoning":{"effort":"high"}}"#, [To("reasoning_effort"), To("thinking.budget_tokens"), To("generationConfig.thinkingConfig.thinkingBudget")]),
    rule(R, "reasoning.summary", "", r#"{"reasoning":{"summary":"auto"}}"#, [D, D, To("generationConfig.thinkingConfig.includeThoughts")]),
    rule(R, "text.format", "json_schema", r#"{"text":{"format":{"type":"json_schema","name":"r","schema":{"type":"object","properties":{"a":{"type":"string"}}}}}}"#, [To("response_format.json_schema.schema"), To("output_config.format.schema"), To("generationConfig.responseJsonSchema")]),
    rule(R, "text.verbosity", "", r#"{"text":{"verbosity":"low"}}"#, [D, D, D]),
    rule(R, "parallel_tool_calls", "", r#"{"parallel_tool_calls":false}"#, [D, D, D]),
    rule(R, "store", "accepted; nothing is kept", r#"{"store":true}"#, [D, D, D]),
    rule(R, "include", "", r#"{"include":["reasoning.encrypted_content"]}"#, [D, D, D]),
    rule(R, "prompt_cache_key", "", r#"{"prompt_cache_key":"k"}"#, [D, D, D]),
    rule(R, "metadata", "", r#"{"metadata":{"k":"v"}}"#, [D, D, D]),
    rule(R, "service_tier", "", r#"{"service_tier":"auto"}"#, [D, D, D]),
    rule(R, "client_metadata", "", r#"{"client_metadata":{"k":"v"}}"#, [D, D, D]),
    rule(R, "safety_identifier", "", r#"{"safety_identifier":"u1"}"#, [D, D, D]),
    rule(R, "truncation", "", r#"{"truncation":"auto"}"#, [D, D, D]),
    rule(R, "previous_response_id", "", r#"{"previous_response_id":"resp_1"}"#, [L, L, L]),
    rule(R, "conversation", "", r#"{"conversation":"conv_1"}"#, [L, L, L]),
    rule(R, "prompt", "a stored prompt", r#"{"prompt":{"id":"pmpt_1"}}"#, [L, L, L]),
    rule(R, "background", "", r#"{"background":true}"#, [L, L, L]),
    // Gemini generateContent.
    rule(G, "systemInstruction", "", r#"{"systemInstruction":{"parts":[{"text":"be brief"}]}}"#, [To("messages[].content"), To("system"), To("systemInstruction")]),
    rule(G, "contents[].parts[].inlineData", "a PDF", r#"{"contents":[{"role":"user","parts":[{"inlineData":{"mimeType":"application/pdf","data":"JVBERi0="}},{"text":"hi"}]}]}"#, [To("messages.0.content.0.file.file_data"), To("messages.0.content.0.source.data"), To("contents")]),
    rule(G, "generationConfig.maxOutputTokens", "", r#"{"generationConfig":{"maxOutputTokens":77}}"#, [To("max_completion_tokens"), To("max_tokens"), To("generationConfig.maxOutputTokens")]),
    rule(G, "generationConfig.temperature", "", r#"{"generationConfig":{"temperature":0.25}}"#, [To("temperature"), To("temperature"), To("generationConfig.temperature")]),
    rule(G, "generationConfig.topP", "", r#"{"generationConfig":{"topP":0.75}}"#, [To("top_p"), To("top_p"), To("generationConfig.topP")]),
    rule(G, "generationConfig.topK", "", r#"{"generationConfig":{"topK":7}}"#, [D, To("top_k"), To("generationConfig.topK")]),
    rule(G, "generationConfig.stopSequences", "", r#"{"generationConfig":{"stopSequences":["END"]}}"#, [To("stop"), To("stop_sequences"), To("generationConfig.stopSequences")]),
    rule(G, "generationConfig.presencePenalty", "", r#"{"generationConfig":{"presencePenalty":0.5}}"#, [To("presence_penalty"), D, To("generationConfig.presencePenalty")]),
    rule(G, "generationConfig.frequencyPenalty", "", r#"{"generationConfig":{"frequencyPenalty":0.5}}"#, [To("frequency_penalty"), D, To("generationConfig.frequencyPenalty")]),
    rule(G, "generationConfig.seed", "", r#"{"generationConfig":{"seed":42}}"#, [To("seed"), D, To("generationConfig.seed")]),
    rule(G, "generationConfig.candidateCount", "more than 1", r#"{"generationConfig":{"candidateCount":2}}"#, [L, L, To("generationConfig.candidateCount")]),
    rule(G, "generationConfig.responseMimeType", "application/json, no schema", r#"{"generationConfig":{"responseMimeType":"application/json"}}"#, [To("response_format"), To("system"), To("generationConfig.responseMimeType")]),
    rule(G, "generationConfig.responseJsonSchema", "", r#"{"generationConfig":{"responseMimeType":"application/json","responseJsonSchema":{"type":"object","properties":{"a":{"type":"string"}}}}}"#, [To("response_format.json_schema.schema"), To("output_config.format.schema"), To("generationConfig.responseJsonSchema")]),
    rule(G, "generationConfig.responseSchema", "", r#"{"generationConfig":{"responseMimeType":"application/json","responseSchema":{"type":"OBJECT","properties":{"a":{"type":"STRING"}}}}}"#, [To("response_format.json_schema.schema"), To("output_config.format.schema"), To("generationConfig.responseSchema")]),
    rule(G, "generationConfig.thinkingConfig.thinkingBudget", "", r#"{"generationConfig":{"thinkingConfig":{"thinkingBudget":8192}}}"#, [To("reasoning_effort"), To("thinking.budget_tokens"), To("generationConfig.thinkingConfig.thinkingBudget")]),
    rule(G, "generationConfig.thinkingConfig.thinkingLevel", "", r#"{"generationConfig":{"thinkingConfig":{"thinkingLevel":"high"}}}"#, [To("reasoning_effort"), To("thinking.budget_tokens"), To("generationConfig.thinkingConfig.thinkingLevel")]),
    rule(G, "generationConfig.thinkingConfig.includeThoughts", "", r#"{"generationConfig":{"thinkingConfig":{"includeThoughts":true}}}"#, [D, D, To("generationConfig.thinkingConfig.includeThoughts")]),
    rule(G, "generationConfig.responseModalities", "text only", r#"{"generationConfig":{"responseModalities":["TEXT"]}}"#, [D, D, To("generationConfig.responseModalities")]),
    rule(G, "generationConfig.speechConfig", "", r#"{"generationConfig":{"speechConfig":{}}}"#, [L, L, To("generationConfig.speechConfig")]),
    rule(G, "tools[].functionDeclarations", "parameters or parametersJsonSchema", r#"{"tools":[{"functionDeclarations":[{"name":"f","parametersJsonSchema":{"type":"object","properties":{}}}]}]}"#, [To("tools"), To("tools"), To("tools.0.functionDeclarations")]),
    rule(G, "tools[]", "googleSearch, codeExecution, urlContext...", r#"{"tools":[{"googleSearch":{}}]}"#, [L, L, To("tools")]),
    rule(G, "toolConfig", "", r#"{"tools":[{"functionDeclarations":[{"name":"f"}]}],"toolConfig":{"functionCallingConfig":{"mode":"ANY"}}}"#, [To("tool_choice"), To("tool_choice"), To("toolConfig")]),
    rule(G, "safetySettings", "", r#"{"safetySettings":[{"category":"HARM_CATEGORY_HARASSMENT","threshold":"BLOCK_NONE"}]}"#, [D, D, To("safetySettings")]),
    rule(G, "labels", "", r#"{"labels":{"team":"a"}}"#, [D, D, To("labels")]),
    rule(G, "cachedContent", "", r#"{"cachedContent":"cachedContents/abc"}"#, [L, L, To("cachedContent")]),
];

/// The rules about `field` of `format`.
pub fn find(format: Format, field: &str) -> impl Iterator<Item = &'static Rule> + '_ {
    RULES
        .iter()
        .filter(move |r| r.client == format && r.field == field)
}

/// Whether every other provider leaves out a request carrying this
/// top-level field: content only the client's own format can express.
pub fn left_out_everywhere(format: Format, field: &str) -> bool {
    let mut rules = find(format, field).peekable();
    rules.peek().is_some()
        && rules.all(|r| {
            [Format::OpenAi, Format::Anthropic, Format::Gemini]
                .into_iter()
                .filter(|f| *f != format)
                .all(|f| r.target(f) == Treat::LeftOut)
        })
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::OpenAi => "OpenAI",
        Format::Responses => "Responses",
        Format::Anthropic => "Anthropic",
        Format::Gemini => "Gemini",
    }
}

fn treat_text(t: Treat, target: Format, client: Format) -> String {
    if target == client {
        return "as is".into();
    }
    match t {
        Treat::To(path) => format!("`{path}`"),
        Treat::Dropped => "dropped".into(),
        Treat::LeftOut => "left out".into(),
    }
}

/// The table as the README shows it (Markdown).
pub fn markdown() -> String {
    let mut out = String::from(
        "| client | field | case | → OpenAI | → Anthropic | → Gemini |\n|---|---|---|---|---|---|\n",
    );
    for r in RULES {
        let cell = |f| treat_text(r.target(f), f, r.client);
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} |\n",
            format_name(r.client),
            r.field,
            r.case,
            cell(Format::OpenAi),
            cell(Format::Anthropic),
            cell(Format::Gemini),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_is_a_json_object() {
        for r in RULES {
            let v: serde_json::Value =
                serde_json::from_str(r.example).unwrap_or_else(|e| panic!("{}: {e}", r.field));
            assert!(v.is_object(), "{}", r.field);
        }
    }

    #[test]
    fn fields_only_the_own_format_can_express() {
        assert!(left_out_everywhere(Format::Anthropic, "mcp_servers"));
        assert!(left_out_everywhere(Format::OpenAi, "audio"));
        assert!(!left_out_everywhere(Format::OpenAi, "tools"));
        assert!(!left_out_everywhere(
            Format::Anthropic,
            "output_config.effort"
        ));
        assert!(!left_out_everywhere(Format::Anthropic, "some_new_field"));
    }
}
