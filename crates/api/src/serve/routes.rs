//! Every operation of the API: method, path, role, parameters, body,
//! responses and errors. The router and `/openapi.json` both come from
//! this table.

use axum::http::Method;
use serde_json::json;

use super::api::{Api, Finished, In, op};
use super::{docs, live, people, reads, runs, schedules, subscriptions, tasks, triggers, workflows};
use crate::keys::Role;

fn definition_body() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "application/yaml",
            json!({"type": "string", "description": "The workflow definition in YAML (docs/workflow-language.md)."}),
        ),
        (
            "application/json",
            json!({"type": "object", "description": "The workflow definition as JSON (the same fields as the YAML)."}),
        ),
    ]
}

/// The router, the OpenAPI document and each operation's access.
pub fn api() -> Finished {
    let mut a = Api::default();
    let api = &mut a;

    // ---- system
    let o = op(Method::GET, "/healthz", "healthz", "system", "Liveness: the process answers")
        .ok::<docs::Health>(api, 200, "Alive.");
    api.add(o, docs::healthz);
    let o = op(Method::GET, "/readyz", "readyz", "system", "Readiness: the event store and the read models answer")
        .ok::<docs::Ready>(api, 200, "Ready.")
        .error(503, "The database does not answer, or a projection stopped.");
    api.add(o, docs::readyz);
    let o = op(Method::GET, "/metrics", "metrics", "system", "Metrics in the Prometheus text format")
        .describe(
            "Runs started and ended by workflow and status, run and step durations (histograms), step failures, \
             retries, AI attempts, tokens and cost, wake-up lateness and lease takeovers, counted by this process; \
             projection lag, parked events, task queue depths and quarantined runs, read at each scrape. For \
             Prometheus: `authorization: {credentials: cairn_…}` with a viewer key. See docs/operations.md.",
        )
        .role(Role::Viewer)
        .reply(200, "The metrics.", vec![("text/plain", json!({"type": "string"}))]);
    api.add(o, super::metrics::get);
    let o = op(Method::GET, "/openapi.json", "openapi", "system", "This document (OpenAPI 3.1)").reply(
        200,
        "The document.",
        vec![("application/json", json!({"type": "object"}))],
    );
    api.add(o, docs::openapi);
    let o = op(Method::GET, "/docs", "docs", "system", "Interactive API docs (Swagger UI)").reply(
        200,
        "The page.",
        vec![("text/html", json!({"type": "string"}))],
    );
    api.add(o, docs::page);
    let o = op(Method::GET, "/docs/{file}", "docs_asset", "system", "A file of the docs page")
        .path_param(
            "file",
            "`swagger-ui.css`, `swagger-ui-bundle.js`, `swagger-ui-standalone-preset.js` or `favicon-32x32.png`.",
        )
        .reply(
            200,
            "The file.",
            vec![
                ("text/css", json!({"type": "string"})),
                ("text/javascript", json!({"type": "string"})),
                ("image/png", json!({"type": "string", "contentMediaType": "image/png"})),
            ],
        )
        .error(404, "No such file.");
    api.add(o, docs::asset);

    // ---- workflows
    let o = op(Method::POST, "/workflows", "create_workflow", "workflows", "Create a workflow (version 1)")
        .describe("The body is the definition, YAML or JSON. A definition with errors is refused (422) with every diagnostic, each with its line and column; nothing is published.")
        .role(Role::Operator)
        .body(definition_body())
        .ok::<workflows::WorkflowView>(api, 201, "Created.")
        .header("Location", "The version's URL.")
        .link("GetWorkflow", "get_workflow", &[("name", "$response.body#/name")])
        .link("PublishVersion", "publish_version", &[("name", "$response.body#/name")])
        .link("ArchiveWorkflow", "archive_workflow", &[("name", "$response.body#/name")])
        .ok::<workflows::WorkflowView>(api, 200, "This exact definition is already the newest version.")
        .error(409, "A workflow with this name exists (publish a new version instead).");
    api.add(o, workflows::create);
    let o = op(Method::GET, "/workflows", "list_workflows", "workflows", "List workflows")
        .role(Role::Viewer)
        .ok::<workflows::WorkflowList>(api, 200, "Workflows by name.");
    api.add(o, workflows::list);
    let o = op(
        Method::POST,
        "/workflows/validate",
        "validate_workflow",
        "workflows",
        "Validate a definition without publishing it",
    )
    .role(Role::Viewer)
    .body(definition_body())
    .ok::<workflows::Validation>(api, 200, "The definition is valid.")
    .error(422, "The definition has errors: every diagnostic, with line and column.");
    api.add(o, workflows::validate);
    let o = op(Method::GET, "/workflows/{name}", "get_workflow", "workflows", "A workflow with its versions")
        .role(Role::Viewer)
        .path_param("name", "The workflow's name.")
        .ok::<workflows::WorkflowView>(api, 200, "The workflow.")
        .error(404, "No such workflow.");
    api.add(o, workflows::get);
    let o = op(Method::POST, "/workflows/{name}/shadow", "shadow_workflow", "workflows", "Re-check past runs against a new definition")
        .describe("Shadow re-validation: every recorded run of the workflow is judged under the definition in the body, calling no model or service. `findings` lists recorded outputs the new contracts reject, branches the new conditions send elsewhere and steps the new definition lacks; `divergence` is the first decision a replay under it makes otherwise. Nothing is published or recorded. See docs/recovery.md.")
        .role(Role::Viewer)
        .path_param("name", "The workflow's name.")
        .body(definition_body())
        .ok::<workflows::Shadow>(api, 200, "Every run, re-checked.")
        .error(404, "No such workflow.")
        .error(422, "The definition has errors, or names another workflow (`name-mismatch`).");
    api.add(o, workflows::shadow);
    let o = op(Method::POST, "/workflows/{name}/versions", "publish_version", "workflows", "Publish a new version")
        .describe("Running runs keep the version they started with; new runs take the newest unless they name one.")
        .role(Role::Operator)
        .path_param("name", "The workflow's name (the definition's `name` must match).")
        .body(definition_body())
        .ok::<workflows::WorkflowView>(api, 201, "Published.")
        .header("Location", "The version's URL.")
        .ok::<workflows::WorkflowView>(api, 200, "This exact definition is already the newest version.")
        .error(404, "No such workflow.")
        .error(409, "The workflow is archived, or another version was published at the same moment.");
    api.add(o, workflows::new_version);
    let o = op(Method::GET, "/workflows/{name}/versions/{version}", "get_version", "workflows", "One version's source")
        .role(Role::Viewer)
        .path_param("name", "The workflow's name.")
        .path_param("version", "The version number.")
        .ok::<workflows::VersionSource>(api, 200, "The version.")
        .error(404, "No such workflow or version.");
    api.add(o, workflows::version);
    let o = op(Method::POST, "/workflows/{name}/archive", "archive_workflow", "workflows", "Archive a workflow")
        .describe("No new runs; its history and running runs are kept. Archiving twice is harmless.")
        .role(Role::Operator)
        .path_param("name", "The workflow's name.")
        .ok::<workflows::WorkflowView>(api, 200, "Archived.")
        .error(404, "No such workflow.")
        .error(409, "The workflow changed at the same moment; try again.");
    api.add(o, workflows::archive);

    // ---- schedules
    let o = op(Method::GET, "/schedules", "list_schedules", "schedules", "List schedules with their next firings")
        .role(Role::Viewer)
        .ok::<schedules::ScheduleList>(api, 200, "Schedules by name (deleted ones too, with the state `deleted`).");
    api.add(o, schedules::list);
    let o = op(Method::PUT, "/schedules/{name}", "define_schedule", "schedules", "Define or redefine a schedule")
        .describe("From now on a run of the workflow starts at each time the cron expression names in the time zone (DST handled: a time skipped by the change fires just after it, a repeated one fires once). Redefining moves on from now; a deleted schedule comes back. The expression, zone, policy, workflow and inputs are checked first: nothing is recorded when one is wrong. See docs/operations.md \"Schedules\".")
        .role(Role::Operator)
        .path_param("name", "Letters, digits, `-`, `_`, `.`.")
        .json_body::<schedules::DefineSchedule>(api)
        .ok::<crate::commands::schedules::ScheduleView>(api, 200, "Defined; with its next firings.")
        .error(409, "Changed at the same moment; try again.")
        .error(422, "A bad expression, zone, overlap policy, duration, workflow or inputs.");
    api.add(o, schedules::define);
    let o = op(Method::GET, "/schedules/{name}", "get_schedule", "schedules", "A schedule with its next firings")
        .role(Role::Viewer)
        .path_param("name", "The schedule's name.")
        .ok::<crate::commands::schedules::ScheduleView>(api, 200, "The schedule.")
        .error(404, "No such schedule.");
    api.add(o, schedules::get);
    let o = op(Method::DELETE, "/schedules/{name}", "delete_schedule", "schedules", "Delete a schedule")
        .describe("It fires nothing more; its runs and its history stay.")
        .role(Role::Operator)
        .path_param("name", "The schedule's name.")
        .ok::<crate::commands::schedules::ScheduleView>(api, 200, "Deleted.")
        .error(404, "No such schedule.")
        .error(409, "Already deleted, or changed at the same moment.");
    api.add(o, schedules::delete);
    let o = op(Method::POST, "/schedules/{name}/pause", "pause_schedule", "schedules", "Pause a schedule")
        .role(Role::Operator)
        .path_param("name", "The schedule's name.")
        .optional_json_body::<schedules::PauseSchedule>(api)
        .ok::<crate::commands::schedules::ScheduleView>(api, 200, "Paused (pausing twice is harmless).")
        .error(404, "No such schedule.")
        .error(409, "Deleted, or changed at the same moment.");
    api.add(o, schedules::pause);
    let o = op(Method::POST, "/schedules/{name}/resume", "resume_schedule", "schedules", "Resume a paused schedule")
        .describe("Firings go on from now; the paused time is not caught up.")
        .role(Role::Operator)
        .path_param("name", "The schedule's name.")
        .ok::<crate::commands::schedules::ScheduleView>(api, 200, "Active.")
        .error(404, "No such schedule.")
        .error(409, "Deleted, or changed at the same moment.");
    api.add(o, schedules::resume);
    let o = op(Method::POST, "/schedules/{name}/backfill", "backfill_schedule", "schedules", "Backfill a past range")
        .describe("Starts a run for each time the expression names in `[from, to]` (at most 1,000), whatever runs already; a time that has its run is left as it is, so repeating a backfill starts nothing new.")
        .role(Role::Operator)
        .path_param("name", "The schedule's name.")
        .json_body::<schedules::Backfill>(api)
        .ok::<schedules::Backfilled>(api, 200, "Each time with its run.")
        .error(404, "No such schedule.")
        .error(409, "Deleted.")
        .error(422, "A range reversed, in the future or of more than 1,000 firings.");
    api.add(o, schedules::backfill);

    // ---- webhook triggers
    let o = op(Method::GET, "/triggers", "list_triggers", "triggers", "List webhook triggers")
        .role(Role::Viewer)
        .ok::<triggers::TriggerList>(api, 200, "Triggers by name.");
    api.add(o, triggers::list);
    let o = op(Method::PUT, "/triggers/{name}", "define_trigger", "triggers", "Define or redefine a webhook trigger")
        .describe("`POST /hooks/{name}` then starts a run of the workflow for each delivery whose signature matches: `github` (`X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`) or `stripe` (`Stripe-Signature: t=<unix time>,v1=<HMAC-SHA256 of \"t.body\">`, refused when older than the tolerance). The secret is named (`CAIRN_SECRET_<NAME>` on the server), never sent or stored. The delivery id is the run's idempotency key. See docs/operations.md \"Webhook triggers\".")
        .role(Role::Admin)
        .path_param("name", "Letters, digits, `-`, `_`, `.`.")
        .json_body::<triggers::DefineTrigger>(api)
        .ok::<crate::commands::triggers::TriggerView>(api, 200, "Defined.")
        .error(409, "Changed at the same moment; try again.")
        .error(422, "A bad name, style, delivery-id place, template, workflow, or a secret the server does not have.");
    api.add(o, triggers::define);
    let o = op(Method::GET, "/triggers/{name}", "get_trigger", "triggers", "A webhook trigger")
        .role(Role::Viewer)
        .path_param("name", "The trigger's name.")
        .ok::<crate::commands::triggers::TriggerView>(api, 200, "The trigger.")
        .error(404, "No such trigger.");
    api.add(o, triggers::get);
    let o = op(Method::DELETE, "/triggers/{name}", "delete_trigger", "triggers", "Delete a webhook trigger")
        .role(Role::Admin)
        .path_param("name", "The trigger's name.")
        .reply(204, "Deleted: its hook answers 404.", Vec::new())
        .error(404, "No such trigger.")
        .error(409, "Changed at the same moment; try again.");
    api.add(o, triggers::delete);
    let o = op(Method::POST, "/hooks/{name}", "deliver_hook", "triggers", "Deliver a webhook (no API key: signed)")
        .describe("Verifies the signature against the raw body, finds the delivery id, maps the body (JSON, or text) and headers to the inputs, and starts the run. A delivery id seen before starts nothing and answers 200 with its run. A bad signature is answered 401 `bad-signature` and recorded as a refused request (`GET /audit?outcome=denied`).")
        .path_param("name", "The trigger's name.")
        .body(vec![("application/json", json!({"description": "The provider's payload, as it sends it: the signature covers these exact bytes."}))])
        .ok::<triggers::Delivery>(api, 201, "A run started.")
        .ok::<triggers::Delivery>(api, 200, "This delivery id started a run before: nothing new.")
        .error(400, "No delivery id, or the body and headers do not map to the inputs.")
        .error(401, "The signature is missing, malformed, too old or does not match.")
        .error(404, "No such trigger.")
        .error(422, "The mapped inputs do not satisfy the workflow's `inputs` schema.");
    api.add(o, triggers::hook);

    // ---- lifecycle subscriptions and deliveries
    let o = op(Method::GET, "/subscriptions", "list_subscriptions", "subscriptions", "List lifecycle subscriptions")
        .role(Role::Viewer)
        .ok::<subscriptions::SubscriptionList>(api, 200, "Subscriptions by name.");
    api.add(o, subscriptions::list);
    let o = op(Method::PUT, "/subscriptions/{name}", "define_subscription", "subscriptions", "Subscribe to lifecycle events")
        .describe("Each matching event (after this moment) is POSTed to `url`, signed (`Cairn-Signature: t=<unix time>,v1=<HMAC-SHA256 of \"t.body\">` with the named secret), or starts the workflow `start`; at least once, retried with backoff (1 s, 2 s, 4 s, … up to 5 minutes), dead after `max_attempts`. Deliveries never delay or fail the run they are about. See docs/operations.md \"Lifecycle subscriptions\".")
        .role(Role::Admin)
        .path_param("name", "Letters, digits, `-`, `_`, `.`.")
        .json_body::<subscriptions::DefineSubscription>(api)
        .ok::<crate::commands::subscriptions::SubscriptionView>(api, 200, "Subscribed.")
        .error(422, "Unknown events, a bad URL, a secret the server does not have, or an unknown workflow.");
    api.add(o, subscriptions::define);
    let o =
        op(Method::DELETE, "/subscriptions/{name}", "delete_subscription", "subscriptions", "Delete a subscription")
            .role(Role::Admin)
            .path_param("name", "The subscription's name.")
            .reply(204, "Deleted.", Vec::new())
            .error(404, "No such subscription.");
    api.add(o, subscriptions::delete);
    let o = op(Method::GET, "/deliveries", "list_deliveries", "subscriptions", "The delivery log, newest first")
        .describe("Every delivery with its status (`pending`: tried again at `next_at`; `delivered`; `dead`: no attempts left, until retried), attempts, last HTTP status and error.")
        .role(Role::Operator)
        .query::<subscriptions::DeliveryQuery>(api)
        .ok::<subscriptions::DeliveryList>(api, 200, "Deliveries.");
    api.add(o, subscriptions::deliveries);
    let o = op(Method::POST, "/deliveries/{id}/retry", "retry_delivery", "subscriptions", "Put a dead delivery back")
        .role(Role::Operator)
        .path_param("id", "`SUBSCRIPTION@POSITION`.")
        .reply(202, "Pending again: the dispatcher tries it at once.", Vec::new())
        .error(404, "No such delivery.")
        .error(409, "The delivery is not dead.");
    api.add(o, subscriptions::retry);

    // ---- runs
    let o = op(Method::POST, "/runs", "start_run", "runs", "Start a run")
        .describe("The inputs are checked against the workflow's `inputs` schema. With an `Idempotency-Key`, the same key and body give the same run (200, `Idempotent-Replayed: true`); the same key with another body is refused (422).")
        .role(Role::Operator)
        .param(In::Header, "Idempotency-Key", false, "Makes retries safe: 1 to 255 visible ASCII characters, scoped to the caller.", json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"}))
        .param(In::Header, "Prefer", false, "`wait=N` (RFC 7240): wait up to N seconds (at most 60) for the run to end, and answer with it as it then is: with its output or error when it ended. Other preferences are ignored.", json!({"type": "string"}))
        .json_body::<runs::StartRun>(api)
        .ok::<runs::RunView>(api, 201, "Started; it runs in the background (with `Prefer: wait=N`, the run as it is when it ended or N seconds passed).")
        .header("Location", "The run's URL.")
        .header("Preference-Applied", "`wait=N` when the answer waited.")
        .link("GetRun", "get_run", &[("id", "$response.body#/run_id")])
        .link("RunHistory", "run_history", &[("id", "$response.body#/run_id")])
        .link("RunContext", "run_context", &[("id", "$response.body#/run_id")])
        .link("RunEvents", "run_events", &[("id", "$response.body#/run_id")])
        .link("CancelRun", "cancel_run", &[("id", "$response.body#/run_id")])
        .ok::<runs::RunView>(api, 200, "This Idempotency-Key already started this run.")
        .header("Idempotent-Replayed", "`true`.")
        .error(404, "No such workflow, or no such version of it.")
        .error(409, "The workflow is archived.");
    api.add(o, runs::start);
    let o = op(Method::GET, "/runs", "list_runs", "runs", "List runs, newest first")
        .role(Role::Viewer)
        .query::<runs::RunsQuery>(api)
        .ok::<runs::RunPage>(api, 200, "A page of runs.");
    api.add(o, runs::list);
    let o =
        op(Method::GET, "/runs/{id}", "get_run", "runs", "A run: status, inputs, output or error, what it waits for")
            .describe("With `?wait=N`, waits up to N seconds (at most 60) for the run to end first.")
            .role(Role::Viewer)
            .id_param("id", "The run id.")
            .query::<runs::GetRunQuery>(api)
            .ok::<runs::RunView>(api, 200, "The run.")
            .error(404, "No such run.");
    api.add(o, runs::get);
    let o = op(Method::POST, "/runs/{id}/cancel", "cancel_run", "runs", "Cancel a run (and its child runs)")
        .role(Role::Operator)
        .id_param("id", "The run id.")
        .optional_json_body::<runs::CancelRun>(api)
        .ok::<runs::RunView>(api, 200, "Cancelled.")
        .error(404, "No such run.")
        .error(409, "The run has already ended.");
    api.add(o, runs::cancel);
    let o = op(Method::POST, "/runs/{id}/resume", "resume_run", "runs", "Resume a failed run from a step")
        .describe("Plans the resume from the run's events and the dependency graph: the steps kept, run again, run again only if what they read changed, newly reached and no longer reached; approvals requested again; the AI cost; HTTP requests that are not idempotent (refused unless `force`). With `dry_run` only the plan is returned. Otherwise `RunResumed` is recorded, only if nothing was recorded on the run since it was read (of two concurrent resumes one gets 409 `conflict`), and the run continues in the background. See docs/recovery.md.")
        .role(Role::Operator)
        .id_param("id", "The run id.")
        .optional_json_body::<runs::ResumeRun>(api)
        .ok::<runs::Resumed>(api, 200, "The plan; with `resumed: true` it was recorded and the run goes on.")
        .link("GetRun", "get_run", &[("id", "$request.path.id")])
        .error(404, "No such run.")
        .error(409, "The run cannot be resumed in its state: still running (`run-running`), completed (`run-completed`: fork it), cancelled (`run-cancelled`: add `force`), compensated (`run-compensated`), a child run (`child-run`: resume its parent), or another resume won (`conflict`).")
        .error(422, "The request cannot be planned: an unknown step (`unknown-step`), a step never reached (`step-not-reached`), a step marked `resumable: false` (`not-resumable`), HTTP requests that are not idempotent (`not-idempotent`: add `force`), a kept output that breaks its contract (`kept-output-invalid`), inputs that break the schema (`invalid-inputs`), or a definition that is gone (`definition-gone`).");
    api.add(o, runs::resume);
    let o = op(Method::POST, "/runs/{id}/fork", "fork_run", "runs", "Start a new run from a step of this one")
        .describe("The new run is of the same workflow version; its `RunStarted` names this run, the position and the step (`fork_of`); the outputs this run recorded before the step are carried over (`StepKept`) and it runs from the step on, with `inputs` merged over this run's. This run is never changed. The step is a top-level step this run reached. See docs/recovery.md.")
        .role(Role::Operator)
        .id_param("id", "The source run's id.")
        .json_body::<runs::ForkRun>(api)
        .ok::<runs::RunView>(api, 201, "The new run; it runs in the background.")
        .header("Location", "The new run's URL.")
        .link("GetRun", "get_run", &[("id", "$response.body#/run_id")])
        .error(404, "No such run.")
        .error(422, "An unknown step (`unknown-step`), a step the run never reached or one inside a container (`step-not-reached`), inputs that break the schema (`invalid-inputs`), or a definition that is gone (`definition-gone`).");
    api.add(o, runs::fork);
    let o = op(Method::GET, "/runs/{id}/replay", "replay_run", "runs", "Replay a run: decide again at every recorded event")
        .describe("Re-folds the run under its pinned definition and asks the decider again at every event (the time each was recorded as now), comparing with what was recorded. `divergence` names the first event that differs (an engine change that would take another path); null when every decision is reproduced. Reads the log only.")
        .role(Role::Viewer)
        .id_param("id", "The run id.")
        .ok::<cairn_runtime::replay::ReplayReport>(api, 200, "The replay.")
        .error(404, "No such run.")
        .error(422, "The pinned definition no longer compiles (`definition`).");
    api.add(o, runs::replay_run);
    let o = op(Method::GET, "/runs/{id}/state", "run_state", "runs", "A run's state at a point (time travel)")
        .describe("The state after the run's first `at` events, as of log `position`, or just before `step` first started (at most one; none: now): status, inputs, the outputs so far, the work under way and who is waited for.")
        .role(Role::Viewer)
        .id_param("id", "The run id.")
        .query::<runs::StateQuery>(api)
        .ok::<cairn_runtime::replay::Snapshot>(api, 200, "The state then.")
        .error(404, "No such run.")
        .error(422, "The point is outside the run (`out-of-range`), or the step never started (`step-not-reached`).");
    api.add(o, runs::state_at);
    let o = op(
        Method::GET,
        "/runs/{id}/history",
        "run_history",
        "runs",
        "A run's timeline: attempts, retries, branches, AI calls, answers",
    )
    .role(Role::Viewer)
    .id_param("id", "The run id.")
    .ok::<runs::History>(api, 200, "The timeline.")
    .error(404, "No such run.");
    api.add(o, runs::history);
    let o = op(Method::GET, "/runs/{id}/context", "run_context", "runs", "A run's inputs and step outputs")
        .role(Role::Viewer)
        .id_param("id", "The run id.")
        .ok::<runs::RunContext>(api, 200, "The context.")
        .error(404, "No such run.");
    api.add(o, runs::context);
    let o = op(Method::GET, "/runs/{id}/events", "run_events", "runs", "A run's raw events with positions and hashes")
        .role(Role::Viewer)
        .id_param("id", "The run id.")
        .query::<runs::EventsQuery>(api)
        .ok::<runs::EventPage>(api, 200, "The events.")
        .error(404, "No such run.");
    api.add(o, runs::events);
    let o = op(Method::GET, "/runs/{id}/live", "run_live", "runs", "A run's events live (Server-Sent Events)")
        .describe("Each SSE `id` is the event's stream version, `event` its type and `data` the event as in `/runs/{id}/events`. Reconnect with `Last-Event-ID` to miss nothing. After the run's last event an `end` event follows and the stream closes.")
        .role(Role::Viewer)
        .id_param("id", "The run id.")
        .param(In::Header, "Last-Event-ID", false, "Resume after this stream version.", json!({"type": "string", "pattern": "^[0-9]{1,15}$"}))
        .query::<live::LiveQuery>(api)
        .reply(
            200,
            "The event stream: one SSE event per stored event, then `end`.",
            vec![(
                "text/event-stream",
                json!({
                    "type": "object",
                    "description": "One Server-Sent Event.",
                    "properties": {
                        "id": {"type": "string", "description": "The event's stream version."},
                        "event": {"type": "string", "description": "The event type, or `end`."},
                        "data": {"type": "string", "description": "The event as JSON (a RawEvent), or `{\"stream_version\":N}` for `end`."},
                        "retry": {"type": "integer"},
                    },
                    "required": ["data"],
                }),
            )],
        )
        .error(404, "No such run.");
    api.add(o, live::live);

    // ---- people
    let o = op(Method::GET, "/inbox", "inbox", "people", "Forms and approvals waiting for people")
        .role(Role::Viewer)
        .query::<people::InboxQuery>(api)
        .ok::<people::Inbox>(api, 200, "What waits.");
    api.add(o, people::inbox);
    let o = op(Method::POST, "/runs/{id}/steps/{step}/submission", "submit_form", "people", "Submit a form a run waits for")
        .describe("Acts as the key's identity, which must be one of the form's assignees (when it has any). Every invalid field is reported at once.")
        .role(Role::Approver)
        .id_param("id", "The run id.")
        .path_param("step", "The form step.")
        .json_body::<people::SubmitForm>(api)
        .ok::<people::Answered>(api, 201, "Recorded; the run continues in the background.")
        .error(403, "The identity is not an assignee, or the token is not this request's.")
        .error(404, "No such run.")
        .error(409, "Nothing waits at that step, or someone answered first (`winner` names the event).");
    api.add(o, people::submit);
    let o = op(Method::POST, "/runs/{id}/steps/{step}/decision", "decide_approval", "people", "Approve or reject an approval a run waits for")
        .describe("Acts as the key's identity, which must be a listed approver. Send the `content_hash` you were shown: if the content changed since, the decision is refused.")
        .role(Role::Approver)
        .id_param("id", "The run id.")
        .path_param("step", "The approval step.")
        .json_body::<people::Decide>(api)
        .ok::<people::Answered>(api, 201, "Recorded; the run continues in the background.")
        .error(403, "The identity is not a listed approver, or the token is not this request's.")
        .error(404, "No such run.")
        .error(409, "Nothing waits at that step, the content changed, or this approver already decided (`winner` names the event).");
    api.add(o, people::decide);

    // ---- task queues
    let o = op(Method::POST, "/tasks/poll", "poll_tasks", "tasks", "Long-poll task queues for work")
        .describe("Claims up to `max` tasks of the named queues, longest offered first, waiting up to `wait_ms` for one when none is offered. Each claim is recorded in its run (`TaskClaimed`, with the worker's name). Heartbeat each task at a third of its `heartbeat_timeout_ms`, then complete or fail it with its `token`; a task whose heartbeats stop is failed with `heartbeat-timeout` and the step's retry policy offers it again. An empty list after the wait: poll again. The protocol is in docs/api.md.")
        .role(Role::Worker)
        .json_body::<tasks::Poll>(api)
        .ok::<tasks::Polled>(api, 200, "The tasks claimed, possibly none.");
    api.add(o, tasks::poll);
    let o = op(Method::POST, "/tasks/heartbeat", "heartbeat_task", "tasks", "Keep a claimed task")
        .describe("Moves the claim's heartbeat deadline to now plus the step's `heartbeat_timeout`. A refusal (409) means the worker should stop: the attempt expired, was cancelled or was answered.")
        .role(Role::Worker)
        .json_body::<tasks::Heartbeat>(api)
        .ok::<tasks::Beat>(api, 200, "The claim holds until `heartbeat_by`.")
        .error(400, "The token is malformed (`bad-task-token`).")
        .error(404, "No claim of that task has this token (`unknown-task`).")
        .error(409, "The attempt expired (`task-expired`), was cancelled (`task-cancelled`) or was answered (`task-finished`): stop working on it.");
    api.add(o, tasks::heartbeat);
    let o = op(Method::POST, "/tasks/complete", "complete_task", "tasks", "Complete a claimed task with its output")
        .describe("Records the attempt's output (checked against the step's `output_contract` and the limits; a breach is recorded as the attempt's failure) and the run goes on. Completing again with the same token answers `recorded: false`; an attempt that expired or was cancelled records nothing.")
        .role(Role::Worker)
        .json_body::<tasks::Complete>(api)
        .ok::<tasks::Answer>(api, 200, "Recorded (or recorded before by this token).")
        .error(400, "The token is malformed (`bad-task-token`).")
        .error(404, "No claim of that task has this token (`unknown-task`).")
        .error(409, "The attempt expired (`task-expired`), was cancelled (`task-cancelled`), or this token failed it (`task-finished`); nothing was recorded.");
    api.add(o, tasks::complete);
    let o = op(Method::POST, "/tasks/fail", "fail_task", "tasks", "Fail a claimed task")
        .describe("Records the attempt's failure with the worker's error kind; the step's `retry` and `catch` decide what follows (`retryable: false` stops retries). Failing again with the same token answers `recorded: false`.")
        .role(Role::Worker)
        .json_body::<tasks::Fail>(api)
        .ok::<tasks::Answer>(api, 200, "Recorded (or recorded before by this token).")
        .error(400, "The token is malformed (`bad-task-token`).")
        .error(404, "No claim of that task has this token (`unknown-task`).")
        .error(409, "The attempt expired (`task-expired`), was cancelled (`task-cancelled`), or this token completed it (`task-finished`); nothing was recorded.");
    api.add(o, tasks::fail);
    let o = op(Method::GET, "/queues", "list_queues", "tasks", "Task queues and their depths")
        .role(Role::Viewer)
        .ok::<tasks::Queues>(api, 200, "Every queue with tasks offered or claimed.");
    api.add(o, tasks::queues);

    // ---- audit, costs, export
    let o = op(Method::GET, "/audit", "audit", "audit", "Who did what, when, with what outcome")
        .role(Role::Operator)
        .query::<reads::AuditQuery>(api)
        .ok::<reads::AuditPage>(api, 200, "A page of the audit log.");
    api.add(o, reads::audit);
    let o = op(Method::GET, "/costs", "costs", "audit", "Tokens and money by run, workflow, model or day")
        .role(Role::Viewer)
        .query::<reads::CostsQuery>(api)
        .ok::<reads::Costs>(api, 200, "Totals.");
    api.add(o, reads::costs);
    let o = op(Method::GET, "/exports/audit", "export_audit", "audit", "Compliance export, streamed")
        .describe("Every record with its position and hash. JSONL ends with each stream's chain head and a manifest (range, count, hash of the records); for CSV, get those from `/exports/audit/manifest` with the same parameters and the `Cairn-Export-Through` this response gave. Check offline with `cairn verify --export FILE` (docs/compliance.md).")
        .role(Role::Operator)
        .query::<reads::ExportQuery>(api)
        .reply(200, "The export.", vec![("application/x-ndjson", json!({"type": "string"})), ("text/csv", json!({"type": "string"}))])
        .header("Cairn-Export-Through", "The last log position the export covers.");
    api.add(o, reads::export);
    let o = op(
        Method::GET,
        "/exports/audit/manifest",
        "export_manifest",
        "audit",
        "The chain heads and manifest of an export",
    )
    .role(Role::Operator)
    .query::<reads::ExportQuery>(api)
    .reply(200, "Heads and manifest as JSON lines.", vec![("application/x-ndjson", json!({"type": "string"}))])
    .header("Cairn-Export-Through", "The last log position covered.");
    api.add(o, reads::manifest);

    a.finish()
}
