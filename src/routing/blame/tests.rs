//! The blame rule against messages in the shapes real upstreams send.

use super::*;

/// The upstream model every message below was a reply to.
const SENT: &str = "up-m";

fn said(message: &str) -> Blame {
    blame(
        &UpstreamError {
            message: message.into(),
            ..UpstreamError::default()
        },
        SENT,
    )
}

fn fields(message: &str, kind: Option<&str>, code: Option<&str>, param: Option<&str>) -> Blame {
    blame(
        &UpstreamError {
            message: message.into(),
            kind: kind.map(String::from),
            code: code.map(String::from),
            param: param.map(String::from),
        },
        SENT,
    )
}

#[test]
fn messages_about_the_model_itself_blame_the_model() {
    for message in [
        // OpenAI, Groq, Fireworks, vLLM, DeepSeek, Ollama, Together, LiteLLM.
        "model not supported",
        "The requested model is not supported.",
        "unsupported model: gpt-9",
        "The model `gpt-9` does not exist or you do not have access to it.",
        "The model `up-m` does not exist.",
        "The model 'up-m' does not exist",
        "Model Not Exist",
        "model \"llama9\" not found, try pulling it first",
        "Model not found, inaccessible, and/or not deployed",
        "Unable to access model up-m. Please visit https://api.together.ai/models to view the list of supported models.",
        "Invalid model name passed in model=up-m. Call `/v1/models` to view available models for your key.",
        "No such model: up-m",
        "The model `up-m` has been decommissioned and is no longer supported.",
        "The model 'up-m' has been deprecated",
        "This model is currently unavailable",
        "The requested model up-m is not available in your region.",
        // OpenRouter.
        "openai/gpt-9 is not a valid model ID",
        "'up-m' is not a valid model ID",
        "up-m is not a valid model ID",
        // Gemini (400 INVALID_ARGUMENT and 404 NOT_FOUND carry the same text).
        "models/up-m is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods.",
        // Azure, Bedrock through LiteLLM.
        "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
        "BedrockException - The provided model identifier is invalid.",
        // An endpoint the model cannot serve at all.
        "The model does not support Chat Completions API",
        "Model up-m is not allowed for this API key",
        "You do not have access to the model up-m.",
    ] {
        assert_eq!(said(message), Blame::Model, "{message}");
    }
}

#[test]
fn errors_about_a_feature_of_the_request_blame_the_request() {
    for message in [
        "Image input is not supported for this model",
        "Image input is not supported for this model.",
        "image input is not supported",
        "tools are not supported",
        "Tools are not supported for this model",
        "Tool 'get_weather' not found in model response",
        "Tool \"lookup\" not found in model response.",
        "This model does not support image input",
        "'up-m' does not support PDF input.",
        "`up-m` does not support image input.",
        "The model does not support tools",
        "The model up-m does not support 'temperature'",
        "This model does not support the `effort` parameter.",
        "model up-m is not supported for image input",
        "Invalid content type. image_url is only supported by certain models.",
        "You uploaded an unsupported image. Please make sure your image is below 20 MB in size.",
        "Function calling is not enabled for models/up-m",
        "Image input modality is not enabled for models/up-m",
        "JSON mode is not enabled for models/up-m",
        "Audio input is not available for this model",
        "Streaming is not supported for this model",
        "System messages are not supported by this model",
        "No endpoints found that support image input",
        "No endpoints found that support tool use. To learn more about provider routing, visit: https://openrouter.ai/docs/provider-routing",
        "The model's context window does not support this many tokens",
    ] {
        assert_eq!(said(message), Blame::Request, "{message}");
    }
}

#[test]
fn a_message_repeating_a_clients_value_is_not_a_model_failure() {
    for message in [
        "invalid value 'model_not_found' for field x",
        "Invalid value 'model_not_found' for field 'user'",
        "'model_not_found' is not a valid value for 'service_tier'",
        "Invalid value: 'model_not_found'. Supported values are: 'auto', 'default' and 'flex'.",
        "unknown variant `model_not_found`, expected one of `auto`, `none`",
        "Invalid 'metadata.tag': 'the model does not exist'",
    ] {
        assert_ne!(said(message), Blame::Model, "{message}");
    }
}

#[test]
fn other_request_faults_say_nothing_about_the_model() {
    for message in [
        "messages: too many",
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
        "'max_tokens' is not supported with this model",
        "max_tokens: Field required",
        "Thought signature is not valid.",
        "Unrecognized request argument supplied: foo",
        "Invalid JSON payload received. Unknown name \"additionalProperties\" at 'tools[0].function_declarations[0].parameters': Cannot find field.",
        "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`.",
        "Developer instruction is not enabled for models/gemma-3",
        "At most 1 image(s) may be provided in one request.",
        "The model is overloaded",
        "",
    ] {
        assert_ne!(said(message), Blame::Model, "{message}");
    }
}

#[test]
fn structured_codes_decide_before_the_text() {
    // A model code decides whatever the message says.
    for code in [
        "model_not_found",
        "model_not_supported",
        "model_not_available",
        "invalid_model",
        "unsupported_model",
        "model_decommissioned",
        "DeploymentNotFound",
        "ModelNotFound",
        "OperationNotSupported",
    ] {
        assert_eq!(
            fields("no such thing", None, Some(code), None),
            Blame::Model,
            "{code}"
        );
    }
    // A parameter's code decides too, even next to text that names the model.
    for code in [
        "unsupported_parameter",
        "unsupported_value",
        "invalid_value",
        "invalid_type",
        "context_length_exceeded",
        "string_above_max_length",
        "image_parse_error",
        "content_policy_violation",
    ] {
        let v = fields(
            "The requested model is not supported",
            None,
            Some(code),
            None,
        );
        assert_eq!(v, Blame::Request, "{code}");
    }
    // The echoed value with OpenAI's real shape.
    let echoed = fields(
        "Invalid value: 'model_not_found'. Supported values are: 'auto' and 'default'.",
        Some("invalid_request_error"),
        Some("invalid_value"),
        Some("service_tier"),
    );
    assert_eq!(echoed, Blame::Request);
    // Mistral's type, and a server that sends its code as the message.
    assert_eq!(
        fields("Invalid model: x", Some("invalid_model"), None, None),
        Blame::Model
    );
    assert_eq!(said("model_not_found"), Blame::Model);
}

#[test]
fn generic_codes_and_types_leave_it_to_the_text() {
    for kind in [
        "invalid_request_error",
        "INVALID_ARGUMENT",
        "BadRequestError",
        "FAILED_PRECONDITION",
        "api_error",
        "UNAVAILABLE",
    ] {
        assert_eq!(
            fields(
                "The requested model is not supported.",
                Some(kind),
                None,
                None
            ),
            Blame::Model,
            "{kind}"
        );
        assert_eq!(
            fields(
                "Image input is not supported for this model",
                Some(kind),
                None,
                None
            ),
            Blame::Request,
            "{kind}"
        );
    }
    // DeepSeek repeats its type as the code.
    let v = fields(
        "Model Not Exist",
        Some("invalid_request_error"),
        Some("invalid_request_error"),
        None,
    );
    assert_eq!(v, Blame::Model);
}

#[test]
fn a_param_names_the_field_at_fault() {
    let chat = "This is not a chat model and thus not supported in the v1/chat/completions endpoint. Did you mean to use v1/completions?";
    assert_eq!(
        fields(chat, Some("invalid_request_error"), None, Some("model")),
        Blame::Model
    );
    let image = "Invalid content type. image_url is only supported by certain models.";
    let v = fields(image, None, None, Some("messages.[0].content.[1].type"));
    assert_eq!(v, Blame::Request);
}

#[test]
fn a_not_found_type_blames_the_model_its_message_names() {
    let anthropic = |message: &str| fields(message, Some("not_found_error"), None, None);
    assert_eq!(anthropic("model: up-m"), Blame::Model);
    assert_eq!(anthropic("model: claude-9"), Blame::Model);
    assert_eq!(
        anthropic("File not found: file_011CNha8iCJcU1wXNR6q4V8w"),
        Blame::Request
    );
    assert_eq!(anthropic("Not Found"), Blame::Unclear);
    let gemini = fields(
        "Requested entity was not found.",
        Some("NOT_FOUND"),
        None,
        None,
    );
    assert_eq!(gemini, Blame::Unclear);
}

#[test]
fn quotes_and_apostrophes_are_told_apart() {
    assert_eq!(
        resolve_quotes("the model doesn't exist", SENT),
        "the model doesn't exist"
    );
    assert_eq!(
        resolve_quotes("tool 'x' not found", SENT),
        "tool  quoted  not found"
    );
    assert_eq!(
        resolve_quotes("the model `up-m` is gone", SENT),
        "the model  model  is gone"
    );
    assert_eq!(
        resolve_quotes("model 'models/up-m' is gone", SENT),
        "model  model  is gone"
    );
    assert_eq!(
        resolve_quotes("the models' limits", SENT),
        "the models' limits"
    );
    assert_eq!(
        replace_name("models/up-m is not found.", SENT),
        "models/ model  is not found."
    );
    assert_eq!(
        replace_name("up-m-large is fine", SENT),
        "up-m-large is fine"
    );
    assert_eq!(replace_name("use up-m.", SENT), "use  model .");
}

#[test]
fn normalized_messages_drop_ids_numbers_and_model_names() {
    let a = normalized_message(
        "The model `up-a` does not exist (request req_8f3a9).",
        "up-a",
    );
    let b = normalized_message(
        "The model `up-b` does not exist (request req_77c21).",
        "up-b",
    );
    assert_eq!(a, b);
    assert_eq!(a, "the does not exist request");
    let c = normalized_message("Project proj_1 has no access to gpt-4o at 12:00", "x");
    assert_eq!(c, "project has no access to gpt at");
    assert_ne!(
        a,
        normalized_message("The model `up-a` is not supported", "up-a")
    );
}
