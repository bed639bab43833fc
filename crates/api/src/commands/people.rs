//! Forms and approvals from the command line: `cairn submit`, `cairn
//! approve`, `cairn reject`, the prompts `cairn run` shows on a terminal, and
//! the instructions it prints without one.

use crate::codes;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use cairn_runtime::Engine;
use cairn_runtime::people::Field;
use cairn_runtime::people::{HumanError, Submission, Vote};
use cairn_runtime::run::{HumanWait, RunState, RunStatus};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::setup::SetupArgs;

/// Arguments of `cairn submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The run.
    pub run: Uuid,
    /// The form step.
    pub step: String,
    /// All values as one JSON object.
    #[arg(long, conflicts_with = "fields")]
    pub data: Option<String>,
    /// A value, `name=value`, converted to the field's type (repeatable).
    #[arg(long = "field", short = 'f', value_name = "NAME=VALUE")]
    pub fields: Vec<String>,
    /// The resume token from the request (default: derived with this
    /// machine's token key).
    #[arg(long)]
    pub token: Option<String>,
}

/// Arguments of `cairn approve` and `cairn reject`.
#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    /// The run.
    pub run: Uuid,
    /// The approval step.
    pub step: String,
    /// Why.
    #[arg(long, short = 'm')]
    pub comment: Option<String>,
    /// The content hash you reviewed; refused if the content is no longer that.
    #[arg(long)]
    pub content_hash: Option<String>,
    /// The approval's fields as one JSON object.
    #[arg(long, conflicts_with = "fields")]
    pub data: Option<String>,
    /// A field of the approval, `name=value`, converted to the field's type
    /// (repeatable).
    #[arg(long = "field", short = 'f', value_name = "NAME=VALUE")]
    pub fields: Vec<String>,
    /// The resume token from the request (default: derived with this
    /// machine's token key).
    #[arg(long)]
    pub token: Option<String>,
}

fn identity_or_hint(setup: &SetupArgs, engine: &Engine, h: &HumanWait) -> anyhow::Result<String> {
    match setup.identity(engine.config()) {
        Some(i) => Ok(i),
        // A request open to anyone with the token: the OS user.
        None if h.assignees.is_empty() => Ok(std::env::var("USER").unwrap_or_else(|_| "cli".into())),
        None => {
            let who = if h.assignees.is_empty() { "IDENTITY".to_owned() } else { h.assignees.join(" | ") };
            anyhow::bail!("who are you? pass `--as {who}` (or set `identity:` in cairn.yaml, or CAIRN_IDENTITY)")
        }
    }
}

/// The request waiting at `step`, or `None` when nothing waits there (the
/// engine then says why: the answer that won, or what does wait).
async fn open_request(engine: &Engine, run: Uuid, step: &str) -> anyhow::Result<Option<HumanWait>> {
    let state = engine.state(run).await?;
    Ok(state.waiting_for_people().into_iter().find(|(s, _)| *s == step).map(|(_, h)| h.clone()))
}

fn report(e: HumanError) -> anyhow::Result<ExitCode> {
    eprintln!("error [{}]: {e}", e.code());
    if let HumanError::Invalid { errors, .. } = &e {
        for x in errors {
            eprintln!("  {}: {}", x.field, x.message);
        }
    }
    if let HumanError::BadToken { .. } = e {
        eprintln!("  pass the token from the request's notification with --token");
    }
    Ok(codes::exit(e.code()))
}

/// `cairn submit`.
pub async fn submit(
    database: &str,
    read: &super::read::ReadArgs,
    setup: &SetupArgs,
    args: SubmitArgs,
) -> anyhow::Result<ExitCode> {
    let engine = super::setup::engine(database, setup, super::setup::load_secrets(None)?).await?;
    let Some(h) = open_request(&engine, args.run, &args.step).await? else {
        let none =
            Submission { by: setup.identity.clone().unwrap_or_default(), token: String::new(), values: Value::Null };
        return match engine.submit(args.run, &args.step, &none).await {
            Err(e) => report(e),
            Ok(_) => anyhow::bail!("internal: a closed form accepted a submission"),
        };
    };
    anyhow::ensure!(h.kind == "form", "step `{}` is an approval; use `cairn approve` or `cairn reject`", args.step);
    let by = identity_or_hint(setup, &engine, &h)?;
    let Some(values) = values_from_args(&h, args.data.as_deref(), &args.fields)? else {
        return Ok(codes::exit("invalid-submission"));
    };
    let token = args.token.unwrap_or_else(|| engine.resume_token(args.run, &args.step, h.attempt));
    match engine.submit(args.run, &args.step, &Submission { by: by.clone(), token, values }).await {
        Ok(r) => out!(
            "submitted `{}` as {by} (stream version {}, position {})",
            args.step,
            r.stream_version,
            r.global_position
        ),
        Err(e) => return report(e),
    }
    continue_run(&engine, database, read, args.run).await
}

/// The values given as `--data JSON` or `--field NAME=VALUE` (each
/// converted to its field's type); `None` after saying what was wrong.
fn values_from_args(h: &HumanWait, data: Option<&str>, given: &[String]) -> anyhow::Result<Option<Value>> {
    if let Some(d) = data {
        return serde_json::from_str::<Value>(d)
            .context("--data is not JSON; pass an object like '{\"topic\": \"Rust\"}'")
            .map(Some);
    }
    let fields: Vec<Field> = h.fields.iter().map(Field::from_recorded).collect();
    let mut m = Map::new();
    let mut bad = Vec::new();
    for f in given {
        let Some((k, v)) = f.split_once('=') else {
            bad.push(format!("`--field {f}` is not NAME=VALUE"));
            continue;
        };
        match fields.iter().find(|x| x.name == k).map(|field| field.parse_text(v)) {
            Some(Ok(value)) => {
                m.insert(k.to_owned(), value);
            }
            Some(Err(e)) => bad.push(format!("{k}: {e}")),
            None => {
                m.insert(k.to_owned(), Value::String(v.to_owned()));
            }
        }
    }
    if bad.is_empty() {
        return Ok(Some(Value::Object(m)));
    }
    eprintln!("error [invalid-submission]: nothing was recorded:");
    for b in &bad {
        eprintln!("  {b}");
    }
    Ok(None)
}

/// `cairn approve` / `cairn reject`.
pub async fn decide(
    database: &str,
    read: &super::read::ReadArgs,
    setup: &SetupArgs,
    args: DecideArgs,
    approve: bool,
) -> anyhow::Result<ExitCode> {
    let engine = super::setup::engine(database, setup, super::setup::load_secrets(None)?).await?;
    let Some(h) = open_request(&engine, args.run, &args.step).await? else {
        let by = setup.identity(engine.config()).unwrap_or_default();
        let none = Vote::new(by, String::new(), approve);
        return match engine.decide_approval(args.run, &args.step, &none).await {
            Err(e) => report(e),
            Ok(_) => anyhow::bail!("internal: a closed approval accepted a decision"),
        };
    };
    anyhow::ensure!(h.kind == "approval", "step `{}` is a form; use `cairn submit`", args.step);
    let by = identity_or_hint(setup, &engine, &h)?;
    let Some(values) = values_from_args(&h, args.data.as_deref(), &args.fields)? else {
        return Ok(codes::exit("invalid-submission"));
    };
    let token = args.token.unwrap_or_else(|| engine.resume_token(args.run, &args.step, h.attempt));
    let vote = Vote { by: by.clone(), token, approve, comment: args.comment, content_hash: args.content_hash, values };
    match engine.decide_approval(args.run, &args.step, &vote).await {
        Ok(r) => out!(
            "{} `{}` as {by}, bound to content {} (stream version {}, position {})",
            if approve { "approved" } else { "rejected" },
            args.step,
            h.content_hash,
            r.stream_version,
            r.global_position
        ),
        Err(e) => return report(e),
    }
    continue_run(&engine, database, read, args.run).await
}

/// Drives a run after an answer, to its end or its next wait for people.
async fn continue_run(
    engine: &Engine,
    database: &str,
    read: &super::read::ReadArgs,
    run: Uuid,
) -> anyhow::Result<ExitCode> {
    let mut display = super::console::Progress::new(std::io::stderr().is_terminal());
    let (top, state) = engine.drive_after_answer(run, &mut |e| display.show(e)).await?;
    super::console::project(database, read).await;
    finish(engine, top, &state).await
}

/// The exit of a command that drove a run: its output (0), its error (1),
/// or what it waits for (3).
pub async fn finish(engine: &Engine, run: Uuid, state: &RunState) -> anyhow::Result<ExitCode> {
    match state.status {
        RunStatus::Completed => {
            out!("{}", serde_json::to_string_pretty(state.output.as_ref().unwrap_or(&Value::Null))?);
            Ok(ExitCode::SUCCESS)
        }
        RunStatus::Running => {
            let waiting = engine.waiting(run).await?;
            let tasks: Vec<String> = state
                .tasks
                .iter()
                .filter(|(_, t)| t.outcome.is_none())
                .map(|((step, attempt), t)| format!("step `{step}` attempt {attempt} on queue `{}`", t.queue))
                .collect();
            if !tasks.is_empty() {
                eprintln!(
                    "  ⏸ run {run} waits for a task worker ({}); it holds nothing while it waits.
                         Workers reach Cairn over HTTP: start `cairn serve` on this database and a worker polling                      the queue (docs/api.md, \"Task queues\"); the run goes on when the worker answers.",
                    tasks.join(", ")
                );
            }
            if waiting.is_empty() && tasks.is_empty() {
                eprintln!("run {run} is waiting on a timer; `cairn continue` finishes it once it is due");
            } else if !waiting.is_empty() {
                eprint!("{}", how_to_continue(run, &waiting));
            }
            Ok(codes::exit("waiting"))
        }
        _ => {
            let (kind, message, step) =
                state.error.clone().unwrap_or_else(|| ("cancelled".into(), "the run was cancelled".into(), None));
            eprintln!(
                "run {run} failed{}: [{kind}] {message}",
                step.map(|s| format!(" at step `{s}`")).unwrap_or_default()
            );
            Ok(codes::exit("run-failed"))
        }
    }
}

/// What a run waits for and the exact commands that continue it.
pub fn how_to_continue(top: Uuid, waiting: &[(Uuid, String, HumanWait)]) -> String {
    let mut t = format!("  ⏸ run {top} waits for people; it holds nothing while it waits:\n");
    for (run, step, h) in waiting {
        let (run, step) = (*run, step.as_str());
        if run != top {
            t.push_str(&format!("    in its child run {run}:\n"));
        }
        let due = h.deadline.map(|d| format!(", due {}", d.to_rfc3339())).unwrap_or_default();
        if h.kind == "form" {
            let who = if h.assignees.is_empty() { "anyone".to_owned() } else { h.assignees.join(", ") };
            t.push_str(&format!(
                "    form `{step}`{} for {who}{due}\n",
                h.title.as_ref().map(|x| format!(" ({x})")).unwrap_or_default()
            ));
            let fields: Vec<String> = h.fields.iter().map(Field::from_recorded).map(|f| describe(&f)).collect();
            t.push_str(&format!("      fields: {}\n", fields.join("; ")));
            let example: Vec<String> =
                h.fields.iter().filter(|f| f.required).map(|f| format!("--field {}=…", f.name)).collect();
            let as_who = h.assignees.first().map(|a| format!(" --as {a}")).unwrap_or_default();
            t.push_str(&format!("      cairn submit {run} {step}{as_who} {}\n", example.join(" ")));
        } else {
            let (yes, _) = h.tally();
            t.push_str(&format!(
                "    approval `{step}`: {} — {yes} of {} approvals from {}{due}\n",
                h.title.as_deref().unwrap_or_default(),
                h.required,
                h.assignees.join(", ")
            ));
            let who = h.assignees.iter().find(|a| !h.decided(a)).cloned().unwrap_or_default();
            let mut with = String::new();
            if !h.fields.is_empty() {
                let fields: Vec<String> = h.fields.iter().map(Field::from_recorded).map(|f| describe(&f)).collect();
                t.push_str(&format!("      fields to approve with: {}\n", fields.join("; ")));
                with = h.fields.iter().filter(|f| f.required).map(|f| format!(" --field {}=…", f.name)).collect();
            }
            t.push_str(&format!("      cairn approve {run} {step} --as {who}{with} [--comment …]\n"));
            t.push_str(&format!("      cairn reject {run} {step} --as {who} --comment …\n"));
        }
    }
    t.push_str("  `cairn inbox` lists everything waiting; a deadline passes with `cairn continue`.\n");
    t
}

fn describe(f: &Field) -> String {
    let mut d = format!("{} ({}", f.name, f.kind.name());
    if f.required {
        d.push_str(", required");
    }
    if !f.options.is_empty() {
        d.push_str(&format!(": {}", f.options.join("|")));
    }
    if let Some(v) = &f.default {
        d.push_str(&format!(", default {v}"));
    }
    d.push(')');
    d
}

/// Whether `cairn run` may ask at the terminal.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

fn ask(question: &str) -> anyhow::Result<Option<String>> {
    let mut err = std::io::stderr().lock();
    write!(err, "{question}")?;
    err.flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\n', '\r']).to_owned()))
}

/// Asks at the terminal for every form and approval the run waits for and
/// records the answers; returns whether anything was recorded (`false`
/// when the person cannot answer, e.g. is not an approver, or input ended).
/// `said` remembers who the person said they are, for the next requests.
pub async fn ask_at_terminal(
    engine: &Engine,
    setup: &SetupArgs,
    top: Uuid,
    said: &mut Option<String>,
) -> anyhow::Result<bool> {
    let mut answered = false;
    for (run, step, h) in &engine.waiting(top).await? {
        let (run, step) = (*run, step.as_str());
        let identity = setup.identity(engine.config()).or_else(|| said.clone());
        let token = engine.resume_token(run, step, h.attempt);
        let allowed = |who: &str| h.assignees.is_empty() || h.assignees.iter().any(|a| a == who);
        let by = match identity {
            Some(i) if allowed(&i) => i,
            Some(i) => {
                eprintln!(
                    "  `{step}` is for {}, not {i}; answer with --as, or from another terminal:",
                    h.assignees.join(", ")
                );
                continue;
            }
            // Nobody said who they are: ask, never assume.
            None => match ask(&format!(
                "  who are you? ({}) ",
                if h.assignees.is_empty() { "any identity".into() } else { h.assignees.join(", ") }
            ))? {
                Some(i) if allowed(i.trim()) && !i.trim().is_empty() => {
                    *said = Some(i.trim().to_owned());
                    i.trim().to_owned()
                }
                Some(i) => {
                    eprintln!("  `{}` may not answer `{step}`", i.trim());
                    continue;
                }
                None => return Ok(answered),
            },
        };
        let recorded = if h.kind == "form" {
            match ask_form(engine, run, step, h, &by, &token).await? {
                Some(()) => true,
                None => return Ok(answered),
            }
        } else {
            match ask_approval(engine, run, step, h, &by, &token).await? {
                Some(()) => true,
                None => return Ok(answered),
            }
        };
        answered |= recorded;
    }
    Ok(answered)
}

async fn ask_form(
    engine: &Engine,
    run: Uuid,
    step: &str,
    h: &HumanWait,
    by: &str,
    token: &str,
) -> anyhow::Result<Option<()>> {
    let fields: Vec<Field> = h.fields.iter().map(Field::from_recorded).collect();
    eprintln!("\n  ✎ {} — form `{step}`, as {by}", h.title.as_deref().unwrap_or("input needed"));
    let mut values = Map::new();
    let mut todo: Vec<&Field> = fields.iter().collect();
    loop {
        if ask_fields(&todo, &mut values)?.is_none() {
            return Ok(None);
        }
        let sub = Submission { by: by.to_owned(), token: token.to_owned(), values: Value::Object(values.clone()) };
        match engine.submit(run, step, &sub).await {
            Ok(_) => {
                eprintln!("  ✓ submitted `{step}`");
                return Ok(Some(()));
            }
            Err(HumanError::Invalid { errors, .. }) => todo = ask_again(&fields, &errors, "submission")?,
            Err(e) => anyhow::bail!("[{}] {e}", e.code()),
        }
    }
}

async fn ask_approval(
    engine: &Engine,
    run: Uuid,
    step: &str,
    h: &HumanWait,
    by: &str,
    token: &str,
) -> anyhow::Result<Option<()>> {
    eprintln!("\n  ⚖ {} — approval `{step}`, as {by}", h.title.as_deref().unwrap_or("approval needed"));
    if !h.content.is_null() {
        let text = h
            .content
            .as_str()
            .map_or_else(|| serde_json::to_string_pretty(&h.content).unwrap_or_default(), str::to_owned);
        for line in text.lines() {
            eprintln!("    │ {line}");
        }
    }
    eprintln!("    content hash {}", h.content_hash);
    let approve = loop {
        let Some(a) = ask("    approve? [y/n]: ")? else { return Ok(None) };
        match a.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" | "approve" => break true,
            "n" | "no" | "reject" => break false,
            _ => eprintln!("      ✗ answer y or n"),
        }
    };
    let Some(comment) = ask("    comment (optional): ")? else { return Ok(None) };
    // An approval's fields are asked for when approving (a rejection needs none).
    let fields: Vec<Field> = h.fields.iter().map(Field::from_recorded).collect();
    let mut values = Map::new();
    let mut todo: Vec<&Field> = if approve { fields.iter().collect() } else { Vec::new() };
    loop {
        if ask_fields(&todo, &mut values)?.is_none() {
            return Ok(None);
        }
        let vote = Vote {
            by: by.to_owned(),
            token: token.to_owned(),
            approve,
            comment: Some(comment.clone()).filter(|c| !c.trim().is_empty()),
            content_hash: Some(h.content_hash.clone()),
            values: if values.is_empty() { Value::Null } else { Value::Object(values.clone()) },
        };
        match engine.decide_approval(run, step, &vote).await {
            Ok(_) => {
                eprintln!("  ✓ {} `{step}`", if approve { "approved" } else { "rejected" });
                return Ok(Some(()));
            }
            Err(HumanError::Invalid { errors, .. }) => todo = ask_again(&fields, &errors, "decision")?,
            Err(e) => anyhow::bail!("[{}] {e}", e.code()),
        }
    }
}

/// After a refused answer: says each problem and returns the fields to ask
/// for again; a refusal that names none of them ends the prompt.
fn ask_again<'f>(
    fields: &'f [Field],
    errors: &[cairn_runtime::people::FieldError],
    what: &str,
) -> anyhow::Result<Vec<&'f Field>> {
    for e in errors {
        eprintln!("      ✗ {}: {}", e.field, e.message);
    }
    let todo: Vec<&Field> = fields.iter().filter(|f| errors.iter().any(|e| e.field == f.name)).collect();
    if todo.is_empty() {
        anyhow::bail!(
            "the {what} was refused: {}",
            errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        );
    }
    Ok(todo)
}

/// Asks for each field in turn, checking each answer alone at once so the
/// person fixes it there; `None` when the input ended.
fn ask_fields(todo: &[&Field], values: &mut Map<String, Value>) -> anyhow::Result<Option<()>> {
    for f in todo {
        loop {
            let mut q = format!("    {}", f.label.as_deref().unwrap_or(&f.name));
            if let Some(help) = &f.help {
                q.push_str(&format!(" — {help}"));
            }
            q.push_str(&format!(" [{}", f.kind.name()));
            if !f.options.is_empty() {
                q.push_str(&format!(": {}", f.options.join(", ")));
            }
            if let Some(d) = &f.default {
                q.push_str(&format!(", default {d}"));
            } else if !f.required {
                q.push_str(", optional");
            }
            q.push_str("]: ");
            let Some(answer) = ask(&q)? else { return Ok(None) };
            if answer.trim().is_empty() {
                values.remove(&f.name);
                if f.required && f.default.is_none() {
                    eprintln!("      ✗ {} is required", f.name);
                    continue;
                }
                break;
            }
            let v = match f.parse_text(&answer) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("      ✗ {e}");
                    continue;
                }
            };
            let one = serde_json::json!({ f.name.clone(): v.clone() });
            match cairn_runtime::people::validate(std::slice::from_ref(*f), &one) {
                Ok(_) => {
                    values.insert(f.name.clone(), v);
                    break;
                }
                Err(errs) => eprintln!("      ✗ {} {}", f.name, errs[0].message),
            }
        }
    }
    Ok(Some(()))
}
