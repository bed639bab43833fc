//! Deterministic simulation, in the spirit of FoundationDB's and
//! TigerBeetle's simulators. From a seed it generates a workflow that mixes
//! sequences, `branch` and `switch`, loops bounded by `max_visits`,
//! `parallel` (races too), `dag` and `map` with nested steps, guards,
//! caught errors, `wait`, retries (one policy, or retriers by error class)
//! of tasks that fail by a seeded schedule and read the run's own facts,
//! forms and approvals (some with typed fields, a bad value refused first)
//! answered (or left to their deadlines) at seeded times, AI steps with
//! scripted replies (the first rejected by its contract), child workflows
//! and compensations. It runs it
//! on the real runner and store, on SQLite and on PostgreSQL, under a
//! simulated clock that only the simulator moves, and drops the engine at
//! seeded points and continues the run with a fresh one.
//!
//! After every run it checks what must hold whatever happened:
//! - every read model, built incrementally in seeded batch sizes, equals a
//!   fold of the whole log from scratch and a rebuild;
//! - `replay` finds no divergence in any run (children included);
//! - the log verifies, and so does a compliance export of it;
//! - no step outcome is recorded twice; attempts (hence idempotency keys,
//!   resume tokens, child run ids) and timer ids are unique per run;
//! - the history lists every visit and attempt, in order.
//!
//! A failure prints its seed and the one-line command that reproduces it.
//! CI runs a fixed budget (`CAIRN_SIM_SEEDS`, default 60 per backend); a
//! soak is `CAIRN_SIM_SEEDS=5000 cargo test --release -p cairn-runtime --test
//! simulation -- --nocapture`, and `CAIRN_SIM_FROM` moves the first seed.
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_events::clock::ManualClock;
use cairn_events::{Event, EventStore};
use cairn_projections::{ReadDb, Val, Worker, models};
use cairn_runtime::Config;
use cairn_runtime::people::{Submission, Vote};
use cairn_runtime::run::RunState;
use cairn_runtime::{Engine, TaskContext, TaskError, TaskRegistry};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use uuid::Uuid;

// ---- a seeded random source (splitmix64) ------------------------------------

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A seeded number for `(run, step, attempt)`: what a flaky task does does
/// not depend on how often it was executed.
fn fate(run: Uuid, step: &str, attempt: u32) -> u64 {
    let mut r = Rng(u64::from_le_bytes(run.as_bytes()[8..16].try_into().unwrap_or([0; 8])));
    for b in step.bytes().chain(attempt.to_le_bytes()) {
        r.0 ^= u64::from(b);
        r.next();
    }
    r.next()
}

// ---- the workflow generator ---------------------------------------------------

struct Gen {
    rng: Rng,
    n: usize,
    compensations: Vec<String>,
}

/// A step as lines, indented relative to its `- `.
type StepLines = Vec<String>;

fn indent(lines: &[String], by: usize) -> Vec<String> {
    lines.iter().map(|l| format!("{}{l}", " ".repeat(by))).collect()
}

impl Gen {
    fn id(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{prefix}{}", self.n)
    }

    fn transform(&mut self, nested_in_map: bool) -> StepLines {
        let id = self.id("t");
        let v = if nested_in_map { "{{ item }}" } else { "{{ inputs.n }}" };
        vec![format!("- id: {id}"), format!("  transform: {{ v: \"{v}\", k: {} }}", self.rng.below(100))]
    }

    fn flaky(&mut self, top: bool) -> StepLines {
        let id = self.id("f");
        // At the top level, sometimes a step that always fails: what
        // completed before it with a `compensate` is undone.
        let p = if top && self.rng.chance(15) { 100 } else { [0, 20, 40, 60][self.rng.below(4) as usize] };
        let ms = self.rng.below(3);
        // Sometimes its input reads the run's own facts (a retry sees its
        // attempt and a UUID of its own; replay must find the same ones).
        let run = if self.rng.chance(30) {
            ", key: \"{{ run.uuid }}\", try: \"{{ run.attempt }}\", at: \"{{ run.now }}\""
        } else {
            ""
        };
        let mut s = vec![format!("- id: {id}"), "  task: flaky".into(), format!("  with: {{ p: {p}, ms: {ms}{run} }}")];
        if self.rng.chance(35) {
            // Retriers by error class: the transient kind first, the rest after.
            s.push(format!(
                "  retry: [{{ errors: [sim.transient], max_attempts: {}, initial_interval: {}s }}, {{ max_attempts: {}, initial_interval: {}s, max_duration: {}s }}]",
                2 + self.rng.below(3),
                1 + self.rng.below(10),
                1 + self.rng.below(3),
                1 + self.rng.below(20),
                20 + self.rng.below(100)
            ));
        } else {
            s.push(format!(
                "  retry: {{ max_attempts: {}, initial_interval: {}s, backoff_coefficient: 2 }}",
                1 + self.rng.below(4),
                1 + self.rng.below(30)
            ));
        }
        if self.rng.chance(20) {
            // Its failure handled: its sequence (the run, a branch, an item) ends there.
            s.push("  catch: [{ errors: ['*'], next: end }]".into());
        }
        if top && self.rng.chance(40) {
            let undo = self.id("undo");
            s.push(format!("  compensate: {undo}"));
            self.compensations.push(undo);
        }
        s
    }

    fn wait(&mut self) -> StepLines {
        let id = self.id("w");
        let secs = if self.rng.chance(50) { 1 + self.rng.below(5) } else { 1 + self.rng.below(7200) };
        vec![format!("- id: {id}"), format!("  wait: {{ for: {secs}s }}")]
    }

    fn approval(&mut self) -> StepLines {
        let id = self.id("a");
        let mut s = vec![
            format!("- id: {id}"),
            "  approval:".into(),
            "    approvers: [ada, grace]".into(),
            format!("    quorum: {}", if self.rng.chance(50) { "any" } else { "all" }),
            "    summary: \"Go on with {{ inputs.n }}?\"".into(),
            "    on_reject: continue".into(),
        ];
        if self.rng.chance(40) {
            s.push(format!("    deadline: {}h", 1 + self.rng.below(48)));
        }
        if self.rng.chance(30) {
            // A decision that carries a typed field: approving must give it.
            s.push("    fields: [{ name: amount, type: integer, required: true, min: 1, max: 9 }]".into());
        }
        s
    }

    fn form(&mut self) -> StepLines {
        let id = self.id("form");
        let mut s = vec![
            format!("- id: {id}"),
            "  form:".into(),
            "    assignees: [ada]".into(),
            "    fields:".into(),
            "      - { name: size, type: integer, required: true, min: 1, max: 9 }".into(),
        ];
        if self.rng.chance(25) {
            s.push(format!("    deadline: {}h", 1 + self.rng.below(48)));
        }
        s
    }

    fn ai(&mut self) -> StepLines {
        let id = self.id("ai");
        vec![
            format!("- id: {id}"),
            "  ai:".into(),
            "    model: agent".into(),
            "    prompt: \"Title for {{ inputs.n }}\"".into(),
            "    scripted: ['{\"title\": \"no\"}', '{\"title\": \"A fine long title\"}']".into(),
            "    attempts: 3".into(),
            "  output_contract:".into(),
            "    type: object".into(),
            "    required: [title]".into(),
            "    properties: { title: { type: string, minLength: 5 } }".into(),
        ]
    }

    fn child(&mut self) -> StepLines {
        let id = self.id("child");
        vec![
            format!("- id: {id}"),
            "  workflow:".into(),
            "    name: sim-child".into(),
            "    inputs: { n: \"{{ inputs.n }}\" }".into(),
        ]
    }

    /// Steps inside a parallel branch or a map iteration.
    /// Sometimes a guard on the step: skipped for some inputs (or, in a
    /// map, some items), run for the others.
    fn guarded(&mut self, mut step: StepLines, in_map: bool) -> StepLines {
        if self.rng.chance(25) {
            let k = 2 + self.rng.below(2);
            let on = if in_map { "item" } else { "inputs.n" };
            step.insert(1, format!("  when: '{on} % {k} != 0'"));
        }
        step
    }

    fn nested(&mut self, in_map: bool, depth: u32) -> Vec<StepLines> {
        let mut out = Vec::new();
        for _ in 0..1 + self.rng.below(3) {
            out.push(match self.rng.below(if depth < 2 { 6 } else { 5 }) {
                0 => {
                    let t = self.transform(in_map);
                    self.guarded(t, in_map)
                }
                1 => {
                    let f = self.flaky(false);
                    self.guarded(f, in_map)
                }
                2 => self.wait(),
                3 => {
                    let a = self.approval();
                    self.guarded(a, in_map)
                }
                4 => self.flaky(false),
                _ => match self.rng.below(3) {
                    0 => self.parallel(depth + 1, in_map),
                    1 => self.dag(in_map),
                    _ => self.map(depth + 1),
                },
            });
        }
        out
    }

    fn parallel(&mut self, depth: u32, in_map: bool) -> StepLines {
        let id = self.id("p");
        let mut s =
            vec![format!("- id: {id}"), "  parallel:".into(), format!("    fail_fast: {}", self.rng.chance(50))];
        if self.rng.chance(30) {
            s.push("    max_concurrency: 1".into());
        }
        if self.rng.chance(20) {
            // A race: the first branch to complete wins.
            s.push("    compete: true".into());
        }
        s.push("    branches:".into());
        let retried = self.rng.chance(30);
        for b in 0..2 + self.rng.below(2) {
            s.push(format!("      - name: b{b}"));
            s.push("        steps:".into());
            for st in self.nested(in_map, depth) {
                s.extend(indent(&st, 10));
            }
        }
        if retried {
            // A failed container runs all of it again: new visits inside.
            s.push("  retry: { max_attempts: 2, initial_interval: 30s }".into());
        }
        s
    }

    /// A dag: each step depends on some of the ones listed before it (so
    /// there is no cycle), some guarded, some flaky.
    fn dag(&mut self, in_map: bool) -> StepLines {
        let id = self.id("d");
        let mut s = vec![format!("- id: {id}"), "  dag:".into(), format!("    fail_fast: {}", self.rng.chance(50))];
        if self.rng.chance(30) {
            s.push(format!("    max_concurrency: {}", 1 + self.rng.below(2)));
        }
        s.push("    steps:".into());
        let mut ids: Vec<String> = Vec::new();
        for _ in 0..3 + self.rng.below(3) {
            let mut node = match self.rng.below(4) {
                0 | 1 => {
                    let t = self.transform(in_map);
                    self.guarded(t, in_map)
                }
                2 => self.flaky(false),
                _ => self.wait(),
            };
            let deps: Vec<&str> = ids.iter().filter(|_| self.rng.chance(50)).map(String::as_str).collect();
            if !deps.is_empty() {
                node.insert(1, format!("  depends_on: [{}]", deps.join(", ")));
            }
            ids.push(node[0].trim_start_matches("- id: ").to_owned());
            s.extend(indent(&node, 6));
        }
        if self.rng.chance(30) {
            s.push("  retry: { max_attempts: 2, initial_interval: 30s }".into());
        }
        s
    }

    fn map(&mut self, depth: u32) -> StepLines {
        let id = self.id("m");
        let mut s = vec![format!("- id: {id}"), "  map:".into(), "    items: \"{{ inputs.items }}\"".into()];
        if self.rng.chance(50) {
            s.push(format!("    max_concurrency: {}", 1 + self.rng.below(3)));
        }
        s.push(format!("    fail_fast: {}", self.rng.chance(50)));
        s.push("    steps:".into());
        for st in self.nested(true, depth) {
            s.extend(indent(&st, 6));
        }
        if self.rng.chance(30) {
            s.push("  retry: { max_attempts: 2, initial_interval: 30s }".into());
        }
        s
    }

    /// The top-level steps: blocks of one or more steps.
    fn top(&mut self) -> Vec<StepLines> {
        let mut out: Vec<StepLines> = Vec::new();
        let blocks = 2 + self.rng.below(5);
        for _ in 0..blocks {
            match self.rng.below(13) {
                0 => {
                    let t = self.transform(false);
                    out.push(self.guarded(t, false));
                }
                1 => {
                    let f = self.flaky(true);
                    out.push(self.guarded(f, false));
                }
                2 => {
                    // A branch that may skip one step.
                    let b = self.id("br");
                    let (t1, t2) = (self.transform(false), self.flaky(true));
                    let target = t2[0].trim_start_matches("- id: ").to_owned();
                    out.push(vec![
                        format!("- id: {b}"),
                        format!("  branch: {{ if: 'inputs.n % 2 == {}', then: {target} }}", self.rng.below(2)),
                    ]);
                    out.push(t1);
                    out.push(t2);
                }
                3 => {
                    let sw = self.id("sw");
                    let (t1, t2) = (self.transform(false), self.transform(false));
                    let first = t1[0].trim_start_matches("- id: ").to_owned();
                    let target = t2[0].trim_start_matches("- id: ").to_owned();
                    out.push(vec![
                        format!("- id: {sw}"),
                        "  switch:".into(),
                        format!("    cases: [{{ when: 'inputs.n * 2 > {}', goto: {target} }}]", self.rng.below(20)),
                        format!("    default: {first}"),
                    ]);
                    out.push(t1);
                    out.push(t2);
                }
                4 => {
                    // A loop: count up, maybe do flaky work, go round again.
                    let (l, again) = (self.id("loop"), self.id("again"));
                    let k = 1 + self.rng.below(3);
                    out.push(vec![
                        format!("- id: {l}"),
                        format!("  transform: {{ i: \"{{{{ (steps.{l}.output.i + 1) if steps.{l} is defined else 1 }}}}\" }}"),
                        format!("  max_visits: {}", k + 1),
                    ]);
                    if self.rng.chance(60) {
                        out.push(self.flaky(false));
                    }
                    if self.rng.chance(30) {
                        out.push(self.wait());
                    }
                    // People and models in loops: each visit asks anew.
                    match self.rng.below(10) {
                        0 => out.push(self.approval()),
                        1 => out.push(self.form()),
                        2 => out.push(self.ai()),
                        _ => {}
                    }
                    out.push(vec![
                        format!("- id: {again}"),
                        format!("  branch: {{ if: 'steps.{l}.output.i < {k}', then: {l} }}"),
                    ]);
                }
                5 => out.push(self.parallel(0, false)),
                6 => out.push(self.map(0)),
                7 => out.push(self.wait()),
                8 => out.push(self.form()),
                9 => out.push(self.approval()),
                10 => out.push(self.ai()),
                11 => out.push(self.dag(false)),
                _ => out.push(self.child()),
            }
        }
        out
    }

    fn workflow(&mut self, name: &str) -> String {
        let steps = self.top();
        let mut y = format!(
            "name: {name}\ninputs:\n  type: object\n  properties:\n    n: {{ type: integer, default: 1 }}\n    items: {{ type: array, default: [] }}\nsteps:\n"
        );
        for s in &steps {
            for l in indent(s, 2) {
                y.push_str(&l);
                y.push('\n');
            }
        }
        if !self.compensations.is_empty() {
            y.push_str("compensations:\n");
            for c in &self.compensations {
                y.push_str(&format!("  - id: {c}\n    task: echo\n    with: {{ undo: {c} }}\n"));
            }
        }
        y
    }
}

const CHILD: &str = "name: sim-child\ninputs: { type: object, properties: { n: { type: integer, default: 0 } } }\nsteps:\n  - id: c1\n    transform: { n: \"{{ inputs.n }}\" }\n  - id: c2\n    task: echo\n    with: { got: \"{{ steps.c1.output.n }}\" }\n";

const CONFIG: &str = "price_table: sim\nmodels:\n  agent: { provider: scripted, model: demo, input_per_million: 0.15, output_per_million: 0.6 }\n";

// ---- the world: engines that share a store and a clock ------------------------

/// Executions of each idempotency key, for at-least-once accounting.
type Executions = Arc<Mutex<BTreeMap<String, u32>>>;

/// What a simulation did, by kind (crashes, answers, events by type, …).
type Stats = Arc<Mutex<BTreeMap<String, u64>>>;

fn count(stats: &Stats, what: &str, n: u64) {
    *stats.lock().expect("stats").entry(what.to_owned()).or_default() += n;
}

struct World {
    stats: Stats,
    store: Arc<dyn EventStore>,
    clock: Arc<ManualClock>,
    executions: Executions,
    config: Config,
}

impl World {
    /// A fresh engine, as a restarted process would have.
    fn engine(&self) -> Engine {
        let mut tasks = TaskRegistry::builtin();
        let seen = self.executions.clone();
        tasks.register("flaky", move |input: Value, ctx: TaskContext| {
            *seen.lock().expect("executions").entry(ctx.idempotency_key()).or_default() += 1;
            let p = input.get("p").and_then(Value::as_u64).unwrap_or(0);
            let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(0);
            let fails = fate(ctx.run_id, &ctx.step_id, ctx.attempt) % 100 < p;
            let (ctx_run, ctx_step) = (ctx.run_id, format!("{}#{}", ctx.step_id, ctx.attempt));
            async move {
                if ms > 0 {
                    // Real time, so parallel outcomes interleave differently.
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if fails {
                    // Two error classes, for retriers that tell them apart.
                    let kind =
                        if fate(ctx_run, &ctx_step, 0).is_multiple_of(2) { "sim.transient" } else { "sim.flaky" };
                    Err(TaskError::new(kind, "the seeded schedule says fail", true))
                } else {
                    Ok(json!({ "ok": true }))
                }
            }
        });
        // One worker restarted again and again (a crash drops the engine
        // mid-drive): the same worker id, so it finds its own leases.
        Engine::new(self.store.clone(), tasks)
            .with_config(self.config.clone())
            .with_clock(self.clock.clone())
            .with_worker("simulated-worker", cairn_runtime::DEFAULT_LEASE_TIMEOUT)
    }
}

/// Drives a run until it waits for a timer, for people or ends; with
/// `crash_after`, drops the engine after that many recorded events.
async fn drive(world: &World, id: Uuid, crash_after: Option<usize>) -> Option<RunState> {
    let engine = world.engine();
    let crash = Arc::new(tokio::sync::Notify::new());
    let mut count = 0usize;
    let trigger = crash.clone();
    let mut observer = move |_: &Event| {
        count += 1;
        if crash_after == Some(count) {
            trigger.notify_one();
        }
    };
    tokio::select! {
        r = engine.drive_until_idle(id, &mut observer) => Some(r.expect("drive")),
        () = crash.notified() => None,
    }
}

/// Runs one seeded workflow to its end; returns the run id.
async fn run_one(world: &World, rng: &mut Rng, seed: u64) -> Uuid {
    let mut g = Gen { rng: rng.clone(), n: 0, compensations: Vec::new() };
    let src = g.workflow("sim");
    *rng = g.rng;
    if std::env::var("CAIRN_SIM_PRINT").is_ok() {
        eprintln!("seed {seed}:\n{src}");
    }
    let engine = world.engine();
    let child = cairn_runtime::lang::parse(CHILD, "child.yaml", &engine.task_names()).expect("child");
    engine.publish(&child, "sim").await.expect("publish child");
    let w = cairn_runtime::lang::parse(&src, "sim.yaml", &engine.task_names())
        .unwrap_or_else(|d| panic!("seed {seed}: the generator wrote an invalid workflow:\n{d}\n{src}"));
    let v = engine.publish(&w, "sim").await.expect("publish");
    let items: Vec<Value> = (0..rng.below(4)).map(|i| json!(i)).collect();
    // A seeded run id: the flaky tasks' schedule (drawn from run, step and
    // attempt) is the seed's too.
    let run_id = Some(Uuid::from_u64_pair(seed, rng.next()));
    let start = cairn_runtime::Start { run_id, ..Default::default() };
    let (id, _) =
        engine.start_with(&w, v, json!({ "n": rng.below(10), "items": items }), "sim", start).await.expect("start");
    for round in 0..400 {
        let crash_after = rng.chance(40).then(|| 1 + rng.below(8) as usize);
        let Some(state) = drive(world, id, crash_after).await else {
            count(&world.stats, "engine dropped mid-run", 1);
            continue;
        };
        if state.status.is_terminal() {
            return id;
        }
        let waiting: Vec<(String, String, u32, Vec<String>, bool)> = state
            .waiting_for_people()
            .into_iter()
            .map(|(step, h)| (step.to_owned(), h.kind.clone(), h.attempt, h.assignees.clone(), !h.fields.is_empty()))
            .collect();
        let engine = world.engine();
        if !waiting.is_empty() && rng.chance(75) {
            let (step, kind, attempt, people, fields) = &waiting[rng.below(waiting.len() as u64) as usize];
            let token = engine.resume_token(id, step, *attempt);
            let by = people[rng.below(people.len() as u64) as usize].clone();
            let answer = if kind == "form" {
                let values = json!({ "size": 1 + rng.below(9) });
                engine.submit(id, step, &Submission { by, token, values }).await.map(|_| ())
            } else {
                let approve = rng.chance(80);
                let mut vote = Vote::new(by, token, approve);
                if *fields && approve {
                    // Sometimes a value out of range first: refused, nothing recorded.
                    if rng.chance(30) {
                        vote.values = json!({ "amount": 10 });
                        let r = engine.decide_approval(id, step, &vote).await;
                        assert!(
                            matches!(
                                &r,
                                Err(cairn_runtime::people::HumanError::Invalid { .. }
                                    | cairn_runtime::people::HumanError::Conflict { .. })
                            ),
                            "seed {seed}: {r:?}"
                        );
                    }
                    vote.values = json!({ "amount": 1 + rng.below(9) });
                    count(&world.stats, "approvals with fields", 1);
                }
                engine.decide_approval(id, step, &vote).await.map(|_| ())
            };
            // Another answer may have won (a quorum of `any`): not an error.
            if let Err(e) = answer {
                assert!(matches!(e, cairn_runtime::people::HumanError::Conflict { .. }), "seed {seed}: {e}");
            }
            count(&world.stats, "answers by people", 1);
            continue;
        }
        count(&world.stats, "clock moves", 1);
        match engine.wake_at(id).await.expect("wake_at") {
            Some(t) => world.clock.set(t),
            // Waiting for people only: time passes (deadlines, reminders).
            None if !waiting.is_empty() => world.clock.advance(Duration::from_secs(60 * (1 + rng.below(600)))),
            None => panic!("seed {seed}: run {id} is stuck in round {round}: {state:?}"),
        }
    }
    panic!("seed {seed}: run {id} did not end in 400 rounds");
}

// ---- the checks ---------------------------------------------------------------

async fn dump(db: &ReadDb) -> BTreeMap<String, Vec<Vec<Val>>> {
    let mut out = BTreeMap::new();
    for p in models::all() {
        for t in p.tables() {
            let rows = db.rows(&format!("SELECT * FROM {t} ORDER BY 1, 2"), &[]).await.expect("dump");
            out.insert((*t).to_owned(), rows);
        }
    }
    out
}

async fn check_run(world: &World, engine: &Engine, id: Uuid, seed: u64) {
    let recorded = world.store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
    let events: Vec<Event> = recorded.iter().map(|r| Event::decode(r).expect("decode")).collect();
    let Some(Event::RunStarted(started)) = events.first() else { panic!("seed {seed}: no RunStarted") };
    // Replay decides as recorded.
    let w = engine.definition(&started.workflow, started.workflow_version).await.expect("definition");
    let report = cairn_runtime::replay::check(&w, &recorded).expect("replay");
    assert!(report.divergence.is_none(), "seed {seed}: run {id} diverges on replay: {:?}", report.divergence);
    // Attempts, timers and outcomes are unique.
    let mut starts = BTreeSet::new();
    let mut timers = BTreeSet::new();
    let mut outcomes = BTreeSet::new();
    let mut children = Vec::new();
    for e in &events {
        match e {
            Event::StepStarted(s) => {
                assert!(
                    starts.insert((s.step_id.clone(), s.attempt)),
                    "seed {seed}: {} attempt {} started twice",
                    s.step_id,
                    s.attempt
                );
            }
            Event::TimerStarted(t) => {
                assert!(timers.insert(t.timer_id.clone()), "seed {seed}: timer id {} reused", t.timer_id)
            }
            Event::StepCompleted(s) => {
                assert!(
                    outcomes.insert((s.step_id.clone(), s.attempt)),
                    "seed {seed}: {} attempt {} has two outcomes",
                    s.step_id,
                    s.attempt
                );
            }
            Event::StepFailed(s) => {
                assert!(
                    outcomes.insert((s.step_id.clone(), s.attempt)),
                    "seed {seed}: {} attempt {} has two outcomes",
                    s.step_id,
                    s.attempt
                );
            }
            Event::ChildRunStarted(c) => children.push(c.child_run_id),
            _ => {}
        }
    }
    let unique: BTreeSet<&Uuid> = children.iter().collect();
    assert_eq!(unique.len(), children.len(), "seed {seed}: a child run id was reused");
    for c in children {
        Box::pin(check_run(world, engine, c, seed)).await;
    }
}

async fn check_history(db: &ReadDb, store: &Arc<dyn EventStore>, id: Uuid, seed: u64) {
    let recorded = store.read_stream(&cairn_events::run_stream(id), 1).await.expect("read");
    // Every start, with its visit: a start is a retry of its visit only
    // when a RetryScheduled named that attempt.
    let mut started: Vec<(String, i64, i64)> = Vec::new();
    let mut visit: HashMap<String, i64> = HashMap::new();
    let mut retry: HashMap<String, u32> = HashMap::new();
    for r in &recorded {
        match Event::decode(r).expect("decode") {
            Event::RetryScheduled(x) => {
                retry.insert(x.step_id, x.next_attempt);
            }
            Event::StepSkipped(x) => {
                retry.remove(&x.step_id);
            }
            Event::RunResumed(_) => retry.clear(),
            Event::StepStarted(x) => {
                let v = visit.entry(x.step_id.clone()).or_default();
                if retry.remove(&x.step_id) != Some(x.attempt) {
                    *v += 1;
                }
                started.push((x.step_id, i64::from(x.attempt), *v));
            }
            _ => {}
        }
    }
    let rows: Vec<(String, i64, i64)> = db
        .rows(
            "SELECT step_id, attempt, visit FROM step_history WHERE run_id = $1 AND kind = 'attempt' ORDER BY position",
            &[Val::from(id.to_string().as_str())],
        )
        .await
        .expect("history")
        .into_iter()
        .map(|r| {
            (r[0].as_text().unwrap_or_default().to_owned(), r[1].as_int().unwrap_or(0), r[2].as_int().unwrap_or(0))
        })
        .collect();
    assert_eq!(rows, started, "seed {seed}: the history does not list every visit and attempt in order");
}

async fn check_log(store: &Arc<dyn EventStore>, seed: u64) {
    let report = cairn_events::verify(&**store).await.expect("verify");
    assert!(report.is_intact(), "seed {seed}: the log does not verify: {report:?}");
    let mut out = Vec::new();
    cairn_events::export::export(
        &**store,
        &cairn_events::export::ExportFilter::default(),
        cairn_events::export::Format::Jsonl,
        &mut out,
        None,
    )
    .await
    .expect("export");
    cairn_events::export::verify_export(&mut Cursor::new(out), cairn_events::export::Format::Jsonl, None)
        .unwrap_or_else(|b| panic!("seed {seed}: the export does not verify: {b}"));
}

/// The store's view of the simulated clock: ahead of the engine's by a
/// seeded skew, as an append comes some time after the decision it
/// records (so replay sees timers fall due between the two).
struct Skewed {
    inner: Arc<ManualClock>,
    skew: chrono::Duration,
}

impl cairn_events::clock::Clock for Skewed {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.now() + self.skew
    }

    fn sleep_until(&self, t: chrono::DateTime<chrono::Utc>) -> BoxFuture<'static, ()> {
        self.inner.sleep_until(t - self.skew)
    }
}

/// Where one seed runs: a fresh store and read database on one backend.
struct Place {
    store: Arc<dyn EventStore>,
    read: ReadDb,
    fresh: ReadDb,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite_place(clock: cairn_events::clock::ClockHandle) -> Place {
    let dir = tempfile::tempdir().expect("tmp");
    let config = cairn_events::sqlite::SqliteConfig { clock, ..Default::default() };
    let store = cairn_events::sqlite::SqliteStore::open(dir.path().join("c.db"), config).await.expect("store");
    let read = ReadDb::sqlite(&dir.path().join("read.db")).await.expect("read db");
    let fresh = ReadDb::sqlite(&dir.path().join("fresh.db")).await.expect("fresh db");
    Place { store, read, fresh, _dir: Some(dir) }
}

async fn postgres_place(clock: cairn_events::clock::ClockHandle) -> Option<Place> {
    let (opts, schema) = cairn_events::testing::fresh_pg_schema().await?;
    let config = cairn_events::postgres::PgConfig { max_connections: 4, clock };
    let store = cairn_events::postgres::PgStore::connect_with(opts.clone(), schema, config).await.expect("store");
    let read = ReadDb::postgres(opts).await.expect("read db");
    let (fresh_opts, _) = cairn_events::testing::fresh_pg_schema().await?;
    let fresh = ReadDb::postgres(fresh_opts).await.expect("fresh db");
    Some(Place { store, read, fresh, _dir: None })
}

async fn one_seed(seed: u64, postgres: bool, stats: Stats) {
    let clock = ManualClock::new(chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("start time"));
    let skew = chrono::Duration::milliseconds(i64::try_from(Rng(seed ^ 0x5eed).below(3000)).unwrap_or(0));
    let store_clock = cairn_events::clock::ClockHandle(Arc::new(Skewed { inner: clock.clone(), skew }));
    let place = if postgres {
        match postgres_place(store_clock).await {
            Some(p) => p,
            None => return,
        }
    } else {
        sqlite_place(store_clock).await
    };
    let mut config = Config::parse(CONFIG, "cairn.yaml").expect("config");
    config.token_key = vec![7; 32];
    let world = World { stats, store: place.store.clone(), clock, executions: Arc::default(), config };
    let mut rng = Rng(seed);
    let batch = 1 + rng.below(16) as usize;
    let live =
        Worker::new(world.store.clone(), place.read.clone(), models::all()).await.expect("worker").with_batch(batch);
    let mut runs = Vec::new();
    for _ in 0..1 + rng.below(2) {
        runs.push(run_one(&world, &mut rng, seed).await);
        live.catch_up().await.expect("catch up");
    }
    let engine = world.engine();
    for id in &runs {
        check_run(&world, &engine, *id, seed).await;
        check_history(&place.read, &world.store, *id, seed).await;
    }
    check_log(&world.store, seed).await;
    // Read models: incremental (seeded batches) = one fold from scratch = a rebuild.
    let incremental = dump(&place.read).await;
    for s in live.status().await.expect("status") {
        assert_eq!(
            (s.name.as_str(), s.error, s.parked),
            (s.name.as_str(), None, 0),
            "seed {seed}: a projection stopped or parked"
        );
    }
    let scratch =
        Worker::new(world.store.clone(), place.fresh.clone(), models::all()).await.expect("worker").with_batch(100_000);
    scratch.catch_up().await.expect("fold from scratch");
    assert_eq!(
        dump(&place.fresh).await,
        incremental,
        "seed {seed}: incremental read models differ from a fold from scratch"
    );
    for name in live.names() {
        live.rebuild(name).await.expect("rebuild");
    }
    assert_eq!(dump(&place.read).await, incremental, "seed {seed}: a rebuild differs from the live read models");
    // At least once, and no more than a crash explains: every executed key
    // belongs to a recorded attempt.
    let keys: BTreeSet<String> = world.executions.lock().expect("executions").keys().cloned().collect();
    let mut recorded_keys = BTreeSet::new();
    for r in world.store.read_all(1, 1_000_000).await.expect("read") {
        count(&world.stats, &format!("event {}", r.event_type), 1);
        if r.event_type == "StepSkipped" && r.payload.contains("was won by") {
            count(&world.stats, "races won", 1);
        }
        if r.event_type == "ErrorCaught" {
            count(&world.stats, "errors caught", 1);
        }
        if r.event_type == "StepSkipped" && r.payload_value().is_ok_and(|p| p.get("guard").is_some()) {
            count(&world.stats, "guards false", 1);
        }
        if r.event_type == "RunStarted" {
            count(&world.stats, "runs", 1);
        }
        if r.event_type == "StepFailed" && r.payload.contains("sim.transient") {
            count(&world.stats, "transient failures", 1);
        }
        if let Ok(Event::StepStarted(s)) = Event::decode(&r) {
            // A dag's steps run in threads `…d<N>.<step>`.
            let dag = |seg: &str| {
                seg.strip_prefix('d').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            };
            if s.scope.split('.').rev().nth(1).is_some_and(dag) {
                count(&world.stats, "dag steps started", 1);
            }
            let run = r.stream_id.trim_start_matches("run-");
            recorded_keys.insert(format!("{run}:{}:{}", s.step_id, s.attempt));
        }
    }
    assert!(keys.is_subset(&recorded_keys), "seed {seed}: a task ran for an attempt that was never recorded");
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("CAIRN_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![s];
    }
    let n: u64 = std::env::var("CAIRN_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let from: u64 = std::env::var("CAIRN_SIM_FROM").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    (from..from + n).collect()
}

async fn simulate(postgres: bool) {
    let backend = if postgres { "postgres" } else { "sqlite" };
    let test = if postgres { "deterministic_simulation_on_postgres" } else { "deterministic_simulation_on_sqlite" };
    let seeds = seeds();
    let stats: Stats = Arc::default();
    for seed in &seeds {
        let outcome = std::panic::AssertUnwindSafe(one_seed(*seed, postgres, stats.clone())).catch_unwind().await;
        if let Err(panic) = outcome {
            eprintln!(
                "\nsimulation failed on {backend} at seed {seed}; reproduce with:\n  CAIRN_SIM_SEED={seed} cargo test -p cairn-runtime --test simulation {test} -- --nocapture\n"
            );
            std::panic::resume_unwind(panic);
        }
    }
    let stats = stats.lock().expect("stats");
    // The generated constructs were exercised, not merely generated.
    assert!(stats.get("guards false").is_some_and(|n| *n > 0), "no guard was ever false: {stats:?}");
    assert!(stats.get("errors caught").is_some_and(|n| *n > 0), "no error was ever caught: {stats:?}");
    assert!(stats.get("races won").is_some_and(|n| *n > 0), "no race ever cancelled a loser: {stats:?}");
    assert!(stats.get("dag steps started").is_some_and(|n| *n > 0), "no dag step ever ran: {stats:?}");
    assert!(stats.get("approvals with fields").is_some_and(|n| *n > 0), "no approval carried fields: {stats:?}");
    assert!(stats.get("transient failures").is_some_and(|n| *n > 0), "no retrier list was exercised: {stats:?}");
    let summary: Vec<String> = stats.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    eprintln!(
        "simulation on {backend}: {} seeds from {} passed every check\n  {}",
        seeds.len(),
        seeds[0],
        summary.join(", ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_simulation_on_sqlite() {
    simulate(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_simulation_on_postgres() {
    simulate(true).await;
}
