//! `cairn report`: runs, failure rate and p50/p95 durations by workflow and
//! by step over a period, from the read models.

use std::collections::BTreeMap;
use std::process::ExitCode;

use cairn_projections::queries;

use super::format::Format;

/// Arguments of `cairn report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Runs started at or after this time: RFC 3339, a day (UTC) or an age
    /// (`24h`, `7d`; default: every run).
    #[arg(long, value_parser = super::runs::since)]
    pub since: Option<String>,
    /// Runs started before this time (same forms as `--since`).
    #[arg(long, value_parser = super::runs::since)]
    pub until: Option<String>,
    /// Only this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// `text` (two tables) or `json`.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// The `p`-th percentile (0–100) of sorted `v`, nearest rank.
fn pct(v: &[i64], p: f64) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank.min(v.len()) - 1).copied()
}

#[derive(Default)]
struct Tally {
    total: u64,
    by_status: BTreeMap<String, u64>,
    /// Durations in ms of what ended.
    ms: Vec<i64>,
}

impl Tally {
    fn ended(&self) -> u64 {
        ["completed", "failed", "cancelled"].iter().map(|s| self.by_status.get(*s).copied().unwrap_or(0)).sum()
    }
    fn failed(&self) -> u64 {
        self.by_status.get("failed").copied().unwrap_or(0)
    }
    /// Failed among those that ended (for steps: attempts that failed).
    fn failure_rate(&self, of: u64) -> Option<f64> {
        (of > 0).then(|| self.failed() as f64 / of as f64)
    }
    fn json(&mut self, of: u64) -> serde_json::Value {
        self.ms.sort_unstable();
        serde_json::json!({
            "total": self.total, "by_status": self.by_status, "failure_rate": self.failure_rate(of),
            "p50_ms": pct(&self.ms, 50.0), "p95_ms": pct(&self.ms, 95.0),
        })
    }
}

fn ms(t: Option<i64>) -> String {
    t.map_or("-".into(), |t| format!("{t} ms"))
}

fn rate(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

/// Runs `cairn report`.
pub async fn run(database: &str, read: &super::read::ReadArgs, args: Args) -> anyhow::Result<ExitCode> {
    if let (Some(a), Some(b)) = (&args.since, &args.until)
        && a >= b
    {
        anyhow::bail!("--since {a} is not before --until {b}: no run is in that period; swap them");
    }
    let w = super::read::catch_up(database, read).await?;
    let f = queries::RunFilter {
        workflow: args.workflow.clone(),
        since: args.since.clone(),
        until: args.until.clone(),
        ..Default::default()
    };
    let mut workflows: BTreeMap<String, Tally> = BTreeMap::new();
    for r in queries::runs_page(w.db(), &f).await? {
        let t = workflows.entry(r.workflow.clone()).or_default();
        t.total += 1;
        *t.by_status.entry(r.status.clone()).or_default() += 1;
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
        if let (Some(a), Some(b)) = (at(&r.started_at), r.ended_at.as_deref().and_then(at)) {
            t.ms.push((b - a).num_milliseconds().max(0));
        }
    }
    let mut steps: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for (wf, step, status, duration) in queries::step_attempts(w.db(), &f).await? {
        let t = steps.entry((wf, step)).or_default();
        t.total += 1;
        *t.by_status.entry(status).or_default() += 1;
        t.ms.extend(duration);
    }
    if args.format == Format::Json {
        let wf: serde_json::Map<String, serde_json::Value> = workflows
            .iter_mut()
            .map(|(k, t)| {
                let of = t.ended();
                (k.clone(), t.json(of))
            })
            .collect();
        let st: Vec<serde_json::Value> = steps
            .iter_mut()
            .map(|((w, s), t)| {
                let of = t.total;
                let mut v = t.json(of);
                v["workflow"] = w.clone().into();
                v["step"] = s.clone().into();
                v
            })
            .collect();
        let v = serde_json::json!({
            "since": args.since, "until": args.until, "workflows": wf, "steps": st,
        });
        out!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let period = match (&args.since, &args.until) {
        (None, None) => "every run".to_owned(),
        (s, u) => format!(
            "runs started {}{}",
            s.as_ref().map(|s| format!("from {s} ")).unwrap_or_default(),
            u.as_ref().map(|u| format!("until {u}")).unwrap_or_default()
        ),
    };
    out!("{period}");
    out!(
        "{:<28} {:>6} {:>9} {:>7} {:>7} {:>8} {:>10} {:>10}",
        "workflow",
        "runs",
        "completed",
        "failed",
        "waiting",
        "failure",
        "p50",
        "p95"
    );
    for (name, t) in &mut workflows {
        t.ms.sort_unstable();
        let open = t.by_status.get("running").copied().unwrap_or(0) + t.by_status.get("waiting").copied().unwrap_or(0);
        out!(
            "{:<28} {:>6} {:>9} {:>7} {:>7} {:>8} {:>10} {:>10}",
            name,
            t.total,
            t.by_status.get("completed").copied().unwrap_or(0),
            t.failed(),
            open,
            rate(t.failure_rate(t.ended())),
            ms(pct(&t.ms, 50.0)),
            ms(pct(&t.ms, 95.0))
        );
    }
    out!("");
    out!(
        "{:<28} {:<20} {:>8} {:>7} {:>8} {:>10} {:>10}",
        "workflow",
        "step",
        "attempts",
        "failed",
        "failure",
        "p50",
        "p95"
    );
    for ((wf, step), t) in &mut steps {
        t.ms.sort_unstable();
        out!(
            "{:<28} {:<20} {:>8} {:>7} {:>8} {:>10} {:>10}",
            wf,
            step,
            t.total,
            t.failed(),
            rate(t.failure_rate(t.total)),
            ms(pct(&t.ms, 50.0)),
            ms(pct(&t.ms, 95.0))
        );
    }
    Ok(ExitCode::SUCCESS)
}
