//! Durations as the language and the config write them. A leaf: the
//! model, the config and the compiler all read durations.

use std::time::Duration;

/// Parses `500ms`, `30s`, `5m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 =
        num.parse().map_err(|_| format!("`{s}` is not a duration; write e.g. `500ms`, `30s`, `5m`, `2h`, `1d`"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        "" => return Err(format!("`{s}` has no unit; write e.g. `{s}s` for seconds")),
        u => return Err(format!("unknown unit `{u}` in `{s}`; use ms, s, m, h or d")),
    };
    if !secs.is_finite() || !(0.0..=10.0 * 365.0 * 86400.0).contains(&secs) {
        return Err(format!("`{s}` is out of range (0 to 10 years)"));
    }
    Ok(Duration::from_secs_f64(secs))
}
