//! The one line a long-running component prints on stdout once its listeners are bound:
//! a JSON object with `"ready"` naming the component and the bound addresses, e.g.
//! `{"ready":"proxy","admin":"127.0.0.1:41234","outbound":"127.0.0.1:41235",...}`.
//! Tests and the demo start components on port 0 and read this line to find them.
//! Everything else (logs) goes to stderr.

use std::io::Write;

pub fn announce(component: &str, mut fields: serde_json::Map<String, serde_json::Value>) {
    fields.insert(
        "ready".to_string(),
        serde_json::Value::String(component.to_string()),
    );
    let line = serde_json::Value::Object(fields).to_string();
    let mut out = std::io::stdout().lock();
    // If stdout is closed nobody is waiting for the line; that is not an error for the component.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
