//! Health-check results as they travel to the control plane: the sidecar's check of its app
//! (on the registration and every heartbeat) and the TTL checks an app holds itself
//! (docs/API.md, "Health checks"). States follow Consul: passing, warning, critical.

use serde::{Deserialize, Serialize};

/// Longest check output or note kept; longer ones are refused (the API) or cut (the sidecar).
pub const MAX_CHECK_OUTPUT: usize = 1024;

/// Shortest and longest TTL of an app-held check, in milliseconds.
pub const MIN_CHECK_TTL_MS: u64 = 100;
pub const MAX_CHECK_TTL_MS: u64 = 3_600_000;

/// Most TTL checks one instance may hold.
pub const MAX_TTL_CHECKS: usize = 16;

/// A check's state, in order of severity.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    #[default]
    Passing,
    /// Degraded but answering (e.g. HTTP 429). Not an endpoint (docs/API.md).
    Warning,
    Critical,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }

    /// `pass` / `warn` / `fail`, the verbs of `PUT .../checks/{name}/{verb}`.
    pub fn from_verb(verb: &str) -> Option<CheckStatus> {
        match verb {
            "pass" => Some(CheckStatus::Passing),
            "warn" => Some(CheckStatus::Warning),
            "fail" => Some(CheckStatus::Critical),
            _ => None,
        }
    }
}

impl std::fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The sidecar's verdict on its app (after its thresholds), sent with the registration and
/// every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckReport {
    pub status: CheckStatus,
    /// What the last check saw, e.g. `HTTP GET /healthz: 503`; at most [`MAX_CHECK_OUTPUT`] bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    /// What is checked, e.g. `http /healthz every 1s`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// `PUT /v1/instances/{service}/{id}/heartbeat` body (optional: an empty body is a bare
/// heartbeat that leaves the check state as it was).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckReport>,
}

/// `PUT /v1/instances/{service}/{id}/checks/{name}` body: registers a TTL check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtlCheckRegistration {
    pub ttl_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `PUT .../checks/{name}/pass|warn|fail` body (optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A check name: 1 to 64 characters of `a-z`, `0-9`, `-`, `_`, `.`, starting with a letter.
pub fn check_check_name(name: &str) -> Result<(), String> {
    let ok_start = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 64 || !ok_start || !ok_chars {
        return Err(format!(
            "`{}` is not a check name: 1 to 64 characters of a-z, 0-9, `-`, `_`, `.`, starting with a letter (e.g. `db-connection`)",
            name.chars().take(64).collect::<String>().escape_debug()
        ));
    }
    Ok(())
}

/// A note or output: at most [`MAX_CHECK_OUTPUT`] bytes, no control characters but tab.
pub fn check_note(note: &str) -> Result<(), String> {
    if note.len() > MAX_CHECK_OUTPUT {
        return Err(format!(
            "is {} bytes long: at most {MAX_CHECK_OUTPUT} are kept; send a shorter summary",
            note.len()
        ));
    }
    if note.chars().any(|c| c.is_control() && c != '\t') {
        return Err("holds control characters (newlines included): send one line of text".into());
    }
    Ok(())
}

/// Validates a TTL check registration.
pub fn check_ttl_check(name: &str, reg: &TtlCheckRegistration) -> Result<(), String> {
    check_check_name(name).map_err(|e| format!("name: {e}"))?;
    if !(MIN_CHECK_TTL_MS..=MAX_CHECK_TTL_MS).contains(&reg.ttl_ms) {
        return Err(format!(
            "ttl_ms: {} is out of range: must be between {MIN_CHECK_TTL_MS} and {MAX_CHECK_TTL_MS}",
            reg.ttl_ms
        ));
    }
    if let Some(n) = &reg.note {
        check_note(n).map_err(|e| format!("note: {e}"))?;
    }
    Ok(())
}

/// Validates the sidecar's report (the output may not be hostile either).
pub fn check_report(r: &CheckReport) -> Result<(), String> {
    check_note(&r.output).map_err(|e| format!("check.output: {e}"))?;
    check_note(&r.kind).map_err(|e| format!("check.kind: {e}"))?;
    Ok(())
}

/// Cuts `s` to at most [`MAX_CHECK_OUTPUT`] bytes on a char boundary, control characters
/// replaced by spaces: for outputs the sidecar builds from what its app answered.
pub fn sanitize_output(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_CHECK_OUTPUT));
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_CHECK_OUTPUT {
            break;
        }
        out.push(c);
    }
    out
}
