//! The words the blame rule reads: what names the model, what names a
//! feature of the request, and the verdicts that condemn either.

/// Nouns that name the model: Azure calls a model a deployment.
pub(super) const MODEL_NOUNS: &[&str] = &["model", "models", "deployment", "deployments", "engine"];

/// Things a request asks for. An error whose verdict falls on one of them is
/// the request's fault, whatever model it also names.
pub(super) const FEATURES: &[&str] = &[
    "image",
    "images",
    "vision",
    "audio",
    "video",
    "videos",
    "file",
    "files",
    "pdf",
    "document",
    "documents",
    "attachment",
    "attachments",
    "tool",
    "tools",
    "function",
    "functions",
    "stream",
    "streaming",
    "system",
    "json",
    "schema",
    "logprobs",
    "temperature",
    "parameter",
    "parameters",
    "param",
    "field",
    "fields",
    "value",
    "values",
    "content",
    "modality",
    "modalities",
    "input",
    "inputs",
    "multimodal",
    "reasoning",
    "thinking",
    "prompt",
    "message",
    "messages",
    "role",
    "context",
    "cache",
    "caching",
    "citations",
    "search",
    "grounding",
    "penalty",
    "seed",
];

/// Words a code may carry that blame a request field's shape or size.
pub(super) const CODE_FEATURES: &[&str] = &[
    "type", "length", "string", "array", "integer", "number", "tokens", "encoding", "parse",
    "size", "missing", "required",
];

/// Determiners and modifiers that may stand around "model" in its phrase.
pub(super) const FILLERS: &[&str] = &[
    "the",
    "a",
    "an",
    "this",
    "that",
    "these",
    "those",
    "your",
    "its",
    "their",
    "our",
    "requested",
    "specified",
    "selected",
    "given",
    "provided",
    "chosen",
    "current",
    "target",
    "upstream",
    "underlying",
    "base",
    "such",
    "any",
    "api",
];

/// Words between a subject and its verdict.
pub(super) const AUXILIARIES: &[&str] = &[
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "has",
    "have",
    "had",
    "does",
    "do",
    "did",
    "currently",
    "yet",
    "still",
    "also",
    "either",
    "which",
    "it",
];

/// Words after which "model" is a complement, not a subject ("for this model").
pub(super) const PREPOSITIONS: &[&str] = &[
    "for", "with", "in", "from", "by", "of", "on", "to", "via", "at",
];

/// Verdicts that follow their subject: "the model is not supported".
pub(super) const AFTER_SUBJECT: &[&[&str]] = &[
    &["not", "supported"],
    &["unsupported"],
    &["not", "found"],
    &["not", "be", "found"],
    &["cannot", "be", "found"],
    &["not", "exist"],
    &["not", "exists"],
    &["t", "exist"],
    &["not", "available"],
    &["unavailable"],
    &["no", "longer", "available"],
    &["no", "longer", "supported"],
    &["unknown"],
    &["invalid"],
    &["not", "valid"],
    &["not", "recognized"],
    &["unrecognized"],
    &["not", "accessible"],
    &["inaccessible"],
    &["not", "allowed"],
    &["not", "permitted"],
    &["not", "enabled"],
    &["deprecated"],
    &["decommissioned"],
    &["retired"],
    // "The model does not support X": the model is blamed only when X is
    // not something the request asked for.
    &["not", "support"],
    &["t", "support"],
];

/// Verdicts that come before what they judge: "unsupported model", "no such model".
pub(super) const BEFORE_NOUN: &[&[&str]] = &[
    &["unsupported"],
    &["unknown"],
    &["invalid"],
    &["unavailable"],
    &["nonexistent"],
    &["non", "existent"],
    &["unrecognized"],
    &["deprecated"],
    &["decommissioned"],
    &["retired"],
    &["inaccessible"],
    &["no", "such"],
    &["not", "a", "valid"],
    &["not", "a", "supported"],
    &["not", "a", "known"],
    &["unable", "to", "access"],
    &["cannot", "access"],
    &["t", "access"],
    &["unable", "to", "find"],
    &["could", "not", "find"],
    &["t", "find"],
    &["cannot", "find"],
    &["failed", "to", "find"],
    &["no", "access", "to"],
    &["not", "have", "access", "to"],
    &["t", "have", "access", "to"],
];

pub(super) const NEGATIONS: &[&str] = &["not", "no", "t", "cannot", "only", "never"];
pub(super) const SUPPORT: &[&str] = &["support", "supports", "supported", "supporting"];

/// The placeholder a quoted value becomes: something the client said.
pub(super) const QUOTED: &str = "quoted";
