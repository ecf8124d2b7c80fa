//! Secrets that must never reach a log line, a metric or an error body.

use std::fmt;

/// A string that prints as `[redacted]` in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A masked form safe to show an operator: the last four characters only.
    pub fn masked(&self) -> String {
        let tail: String = self
            .0
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if self.0.chars().count() <= 8 {
            "****".to_string()
        } else {
            format!("****{tail}")
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Key-looking prefixes of the providers we speak to. An upstream error
/// message may quote a key back (OpenAI's "Incorrect API key provided: sk-...")
/// and such a message is stored in learned state and shown to clients.
const KEY_PREFIXES: &[&str] = &["sk-", "sk_", "AIza", "xai-", "gsk_", "pk-", "key-"];

/// Removes secrets from a message that came from outside: the known secrets
/// verbatim, and any word that starts like a provider key.
pub fn scrub(message: &str, known: &[&str]) -> String {
    let mut out = message.to_string();
    for secret in known.iter().filter(|s| s.len() >= 4) {
        if out.contains(secret) {
            out = out.replace(secret, "[redacted]");
        }
    }
    let mut scrubbed = String::with_capacity(out.len());
    for (i, word) in out.split(' ').enumerate() {
        if i > 0 {
            scrubbed.push(' ');
        }
        let bare = word.trim_start_matches(['"', '\'', '(', '`', ':']);
        if KEY_PREFIXES.iter().any(|p| bare.starts_with(p)) && bare.len() >= 12 {
            scrubbed.push_str("[redacted]");
        } else {
            scrubbed.push_str(word);
        }
    }
    scrubbed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("sk-live-abcdef123456");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(s.masked(), "****3456");
        assert_eq!(Secret::new("short").masked(), "****");
    }

    #[test]
    fn scrub_removes_known_secrets_and_key_shaped_words() {
        let msg =
            "Incorrect API key provided: sk-proj-abcdefghijkl1234. Also upstream-secret-value.";
        let out = scrub(msg, &["upstream-secret-value"]);
        assert!(!out.contains("sk-proj"), "{out}");
        assert!(!out.contains("upstream-secret-value"), "{out}");
        assert!(out.starts_with("Incorrect API key provided: [redacted]"));
        assert_eq!(
            scrub("model gpt-4o not found", &[]),
            "model gpt-4o not found"
        );
    }
}
