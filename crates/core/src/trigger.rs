//! Webhook triggers, as pure functions: checking a trigger's definition,
//! verifying a delivery's signature (GitHub's `X-Hub-Signature-256`,
//! Stripe's `Stripe-Signature`), finding its delivery id, and mapping its
//! body and headers to a run's inputs with a template. No clock (the
//! caller passes `now`), no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::template::{self, Scope};

/// The signature styles.
pub const STYLES: [&str; 2] = ["github", "stripe"];

/// Default Stripe tolerance: a signed timestamp older than this is refused
/// (a replayed request), as Stripe's own libraries do.
pub const DEFAULT_TOLERANCE_SECONDS: u64 = 300;

/// Where a style's deliveries carry their id by default.
pub fn default_delivery_id(style: &str) -> &'static str {
    match style {
        "stripe" => "body:/id",
        _ => "header:X-GitHub-Delivery",
    }
}

/// Checks a definition's style, delivery-id place and inputs template.
pub fn check(style: &str, delivery_id: &str, inputs: &Value) -> Result<(), String> {
    if !STYLES.contains(&style) {
        return Err(format!("signature `{style}` is not one of {}", STYLES.join(", ")));
    }
    match delivery_id.split_once(':') {
        Some(("header", h)) if !h.trim().is_empty() => {}
        Some(("body", p)) if p.is_empty() || p.starts_with('/') => {}
        _ => {
            return Err(format!(
                "delivery id `{delivery_id}`: write `header:<Name>` (as `header:X-GitHub-Delivery`) or \
                 `body:<JSON pointer>` (as `body:/id`)"
            ));
        }
    }
    template::check_with(inputs, &["body", "headers"]).map_err(|e| format!("inputs: {e}"))
}

/// Verifies a delivery's signature with `secret`; the error says what was
/// wrong (never the expected signature).
pub fn verify(
    style: &str,
    secret: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance_seconds: u64,
) -> Result<(), String> {
    match style {
        "github" => {
            let h = headers.get("x-hub-signature-256").ok_or("no X-Hub-Signature-256 header")?;
            let hex_sig = h.trim().strip_prefix("sha256=").ok_or("X-Hub-Signature-256 is not `sha256=<hex>`")?;
            let given = hex::decode(hex_sig).map_err(|_| "X-Hub-Signature-256 is not hex")?;
            let want = crate::human::hmac(secret.as_bytes(), body);
            if equal(&given, &want) { Ok(()) } else { Err("the signature does not match the body".into()) }
        }
        "stripe" => {
            let h = headers.get("stripe-signature").ok_or("no Stripe-Signature header")?;
            let mut t = None;
            let mut sigs = Vec::new();
            for part in h.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", v)) => t = v.parse::<i64>().ok(),
                    Some(("v1", v)) => sigs.push(hex::decode(v).unwrap_or_default()),
                    _ => {}
                }
            }
            let t = t.ok_or("Stripe-Signature has no timestamp `t=`")?;
            if sigs.is_empty() {
                return Err("Stripe-Signature has no `v1=` signature".into());
            }
            let age = now.timestamp() - t;
            if age > i64::try_from(tolerance_seconds).unwrap_or(i64::MAX) || age < -300 {
                return Err(format!(
                    "the signed timestamp is {age} s old, outside the tolerance of {tolerance_seconds} s (a replayed delivery?)"
                ));
            }
            let mut msg = format!("{t}.").into_bytes();
            msg.extend_from_slice(body);
            let want = crate::human::hmac(secret.as_bytes(), &msg);
            if sigs.iter().any(|s| equal(s, &want)) { Ok(()) } else { Err("no signature matches the body".into()) }
        }
        other => Err(format!("unknown signature style `{other}`")),
    }
}

/// Constant-time equality.
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body as the templates see it: its JSON, or its text.
pub fn body_value(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// The delivery's id, from where `place` says.
pub fn delivery_id(place: &str, headers: &BTreeMap<String, String>, body: &Value) -> Result<String, String> {
    let id = match place.split_once(':') {
        Some(("header", h)) => headers.get(&h.trim().to_ascii_lowercase()).cloned(),
        Some(("body", p)) => body.pointer(p).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        _ => None,
    };
    let id = id.filter(|s| !s.trim().is_empty()).ok_or_else(|| format!("the delivery has no id at `{place}`"))?;
    if id.len() > 255 {
        return Err(format!("the delivery id at `{place}` is longer than 255 characters"));
    }
    Ok(id)
}

/// The run's inputs: `template` rendered over `body` and `headers`.
pub fn inputs(template: &Value, body: &Value, headers: &BTreeMap<String, String>) -> Result<Value, String> {
    let mut scope = Scope::new();
    scope.set("body", body.clone());
    scope.set("headers", Value::Object(headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()));
    template::render(template, &scope).map_err(|e| format!("inputs: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned())).collect()
    }

    /// GitHub's documented example: secret "It's a Secret to Everybody",
    /// payload "Hello, World!".
    #[test]
    fn github_signature_matches_githubs_example() {
        let h = headers(&[(
            "X-Hub-Signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        let now: DateTime<Utc> = "2026-05-04T10:00:00Z".parse().expect("time");
        assert_eq!(verify("github", "It's a Secret to Everybody", &h, b"Hello, World!", now, 300), Ok(()));
        assert!(verify("github", "It's a Secret to Everybody", &h, b"Hello, World?", now, 300).is_err());
        assert!(verify("github", "other", &h, b"Hello, World!", now, 300).is_err());
    }

    #[test]
    fn stripe_signature_checks_the_timestamp() {
        let now: DateTime<Utc> = "2026-05-04T10:00:00Z".parse().expect("time");
        let body = br#"{"id":"evt_1"}"#;
        let t = now.timestamp() - 10;
        let mut msg = format!("{t}.").into_bytes();
        msg.extend_from_slice(body);
        let sig = hex::encode(crate::human::hmac(b"whsec_x", &msg));
        let h = headers(&[("Stripe-Signature", &format!("t={t},v1=00,v1={sig}"))]);
        assert_eq!(verify("stripe", "whsec_x", &h, body, now, 300), Ok(()));
        let later = now + chrono::Duration::seconds(600);
        assert!(verify("stripe", "whsec_x", &h, body, later, 300).is_err_and(|e| e.contains("tolerance")));
    }
}
