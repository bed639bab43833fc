//! The pages the people a run waits for answer from (issue 18, part 1),
//! against a real `cairn serve` whose notifications go through a real SMTP
//! server, on SQLite and on PostgreSQL (`CAIRN_TEST_PG_URL`, required under
//! CI): the link in each e-mail opens that person's page, a wrong value is
//! shown beside its field with what was typed kept, a right one is recorded
//! once, each approver decides from their own link, and every link that is
//! not theirs, not this request's, reused or expired gets a clear page and
//! records nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[macro_use]
mod common;
#[path = "common/server.rs"]
mod server;
#[allow(unreachable_pub)]
#[path = "../../runtime/tests/common/servers.rs"]
mod servers;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use server::Server;

const FLOW: &str = r##"name: launch
steps:
  - id: brief
    form:
      title: Brief for the launch post
      assignees: [ana]
      fields:
        - { name: topic, type: text, label: Topic, required: true, min_length: 3, help: "What the post is about" }
        - { name: words, type: integer, min: 100, max: 2000, default: 600 }
        - { name: tone, type: select, options: [plain, warm], default: plain }
        - { name: channels, type: multiselect, options: [blog, mail, social] }
        - { name: urgent, type: boolean }
  - id: write
    ai:
      model: scripted
      prompt: "Write the post about {{ steps.brief.output.topic }}"
      scripted:
        - "# Cairn 1.0 is out\n\nWe **ship** durable workflows *today*.\n\n- replay any run\n- resume from the step that broke\n\n<script>alert(1)</script>\n\nSee [docs](https://example.com/docs), not [trap](javascript:alert(1))."
  - id: review
    approval:
      approvers: [ana, ben]
      quorum: all
      summary: "Publish “{{ steps.brief.output.topic }}”?"
      content:
        topic: "{{ steps.brief.output.topic }}"
        words: "{{ steps.brief.output.words }}"
        draft: "{{ steps.write.output.text }}"
"##;

/// A server on the database `db` (its own SQLite file when `None`) mailing
/// through `smtp`; the key of an admin.
fn serve(smtp: &servers::Server, db: Option<&str>) -> (Server, String) {
    serve_with(smtp, db, &[])
}

fn serve_with(smtp: &servers::Server, db: Option<&str>, args: &[&str]) -> (Server, String) {
    // The config lives beside the SMTP server's mailbox, as long as it.
    let config = smtp.dir.path().join(format!("cairn-{}.yaml", uuid::Uuid::now_v7().simple()));
    let yaml = format!(
        "email: {{ host: 127.0.0.1, port: {}, tls: none, from: \"Cairn <cairn@example.com>\", base_url: \"http://cairn.local\", retry_interval: 1s }}\npeople:\n  ana: {{ email: ana@example.com }}\n  ben: {{ email: ben@example.com }}\n",
        smtp.port
    );
    std::fs::write(&config, yaml).unwrap();
    let config = config.display().to_string();
    let mut env = vec![("CAIRN_CONFIG", config.as_str())];
    if let Some(url) = db {
        env.push(("CAIRN_DATABASE_URL", url));
    }
    let s = Server::start_with(args, &env);
    let key = s.key("admin", "admin", "ops");
    (s, key)
}

/// The link (path and query) in a mail to `to` about `step` of any run
/// (for a test with one run waiting there; else [`link_of`]).
async fn link(s: &Server, smtp: &servers::Server, to: &str, step: &str) -> String {
    link_of(s, smtp, to, step, "").await
}

/// The link in the mail to `to` about `step` of run `run` (any run when
/// empty), waiting up to 30 s for it (mails are not in the order sent); when
/// none comes, the server's and the mail server's logs say why.
async fn link_of(s: &Server, smtp: &servers::Server, to: &str, step: &str, run: &str) -> String {
    let start = Instant::now();
    let about = format!("{run}/steps/{step}?");
    loop {
        let mails = servers::mails(smtp);
        let mine = mails.iter().find(|m| m.contains(&format!("To: {to}")) && m.contains(&about));
        if let Some(m) = mine {
            let at = m.find("http://cairn.local/").expect("a link");
            let url: String = m[at..].chars().take_while(|c| !c.is_whitespace()).collect();
            return url.trim_start_matches("http://cairn.local").to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no mail to {to} about {step}: {mails:?}\n== server\n{}\n== smtp\n{}",
            s.logs(),
            std::fs::read_to_string(smtp.dir.path().join("server.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Page {
    status: u16,
    location: Option<String>,
    headers: reqwest::header::HeaderMap,
    html: String,
}

async fn get(s: &Server, path: &str) -> Page {
    let r = no_redirects().get(format!("{}{path}", s.url)).send().await.unwrap();
    page(r).await
}

async fn post(s: &Server, path: &str, form: &[(&str, &str)]) -> Page {
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let r = no_redirects()
        .post(format!("{}{path}", s.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    page(r).await
}

fn no_redirects() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn page(r: reqwest::Response) -> Page {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let location = headers.get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Page { status, location, headers, html: r.text().await.unwrap() }
}

/// The path and token of a link.
fn split(link: &str) -> (&str, &str) {
    let (path, query) = link.split_once('?').unwrap();
    (path, query.strip_prefix("token=").unwrap())
}

/// Every page's headers: no framing, no sniffing, the token not sent on as
/// a referrer, nothing cached; no inline script ever. A person's page and
/// the sign-in page allow no script at all; the console's signed-in pages
/// only its one script file, from this server.
fn assert_secure(p: &Page) {
    let h = |n: &str| p.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let csp = h("content-security-policy");
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h("x-content-type-options"), "nosniff");
    assert_eq!(h("referrer-policy"), "no-referrer");
    assert_eq!(h("cache-control"), "no-store");
    assert!(h("content-type").starts_with("text/html"), "{}", h("content-type"));
    if p.html.contains("<nav aria-label=\"Console\">") {
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert_eq!(p.html.matches("<script").count(), 1, "one script tag");
        assert!(p.html.contains("<script src=\"/assets/console.js\" defer></script>"), "{}", p.html);
    } else {
        assert!(!csp.contains("script-src"), "no script is allowed: {csp}");
        assert!(!p.html.contains("<script"), "no script in the page");
    }
}

async fn events(s: &Server, key: &str, run: &str) -> Vec<Value> {
    let r = s.get(&format!("/runs/{run}/events"), key).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["items"].as_array().cloned().expect("items")
}

fn count(evs: &[Value], kind: &str) -> usize {
    evs.iter().filter(|e| e["event_type"] == kind).count()
}

async fn people_answer_from_their_links(db: &str) {
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (s, key) = serve(&smtp, Some(db));
    let r = s.post_yaml("/workflows", &key, FLOW).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.post("/runs", &key, &json!({"workflow": "launch"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let run = r.json["run_id"].as_str().unwrap().to_owned();

    // The form, from the link in Ana's mail.
    let brief = link(&s, &smtp, "ana@example.com", "brief").await;
    let (path, token) = split(&brief);
    assert!(token.starts_with("cat_"), "a personal token: {token}");
    let p = get(&s, &brief).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert_secure(&p);
    assert!(p.html.contains("Brief for the launch post") && p.html.contains("What the post is about"), "{}", p.html);
    assert!(p.html.contains(r#"name="words" value="600""#), "the default is filled in: {}", p.html);
    assert!(p.html.contains(r#"<option value="plain" selected>"#), "{}", p.html);
    assert!(p.html.contains("For <strong>ana</strong>"), "{}", p.html);

    // Wrong values: each error beside its field, what was typed kept, nothing recorded.
    let wrong = [
        ("_token", token),
        ("topic", "ab"),
        ("words", "5000"),
        ("tone", "warm"),
        ("channels", "mail"),
        ("urgent", "true"),
    ];
    let p = post(&s, path, &wrong).await;
    assert_eq!(p.status, 422, "{}", p.html);
    assert_secure(&p);
    assert!(p.html.contains(r#"id="f-topic-error""#) && p.html.contains(r#"id="f-words-error""#), "{}", p.html);
    assert!(
        p.html.contains(r#"name="topic" value="ab""#) && p.html.contains(r#"name="words" value="5000""#),
        "{}",
        p.html
    );
    assert!(p.html.contains(r#"<option value="warm" selected>"#), "{}", p.html);
    assert!(p.html.contains(r#"value="mail" checked"#) && p.html.contains(r#"value="true" checked"#), "{}", p.html);
    assert!(p.html.contains(r#"aria-invalid="true""#), "{}", p.html);
    assert_eq!(count(&events(&s, &key, &run).await, "InputSubmitted"), 0);
    // Not a number at all: the engine's own message, still beside the field.
    let p = post(&s, path, &[("_token", token), ("topic", "Launch"), ("words", "many")]).await;
    assert_eq!(p.status, 422);
    assert!(p.html.contains(r#"id="f-words-error""#) && p.html.contains(r#"value="many""#), "{}", p.html);

    // Ben's token is not Ana's: it cannot submit her form as him, nor as her.
    // (Ben is not an assignee of the form; forge one for him anyway.)
    let forged = token.replacen(&hex("ana"), &hex("ben"), 1);
    let p = post(&s, path, &[("_token", &forged), ("topic", "Launch post")]).await;
    assert_eq!(p.status, 404, "{}", p.html);
    assert!(p.html.contains("This link is not valid"));
    // Another run of the same workflow, another step's path with this token,
    // an unknown run, no token, a request-wide token: the same page.
    let r = s.post("/runs", &key, &json!({"workflow": "launch"})).await;
    let other = r.json["run_id"].as_str().unwrap().to_owned();
    for bad in [
        format!("/runs/{other}/steps/brief?token={token}"),
        format!("{}?token={token}", path.replace("/brief", "/review")),
        format!("/runs/{}/steps/brief?token={token}", uuid_nil()),
        path.to_owned(),
        format!("{path}?token=crt_0000"),
    ] {
        let p = get(&s, &bad).await;
        assert_eq!(p.status, 404, "{bad}: {}", p.html);
        assert!(p.html.contains("This link is not valid"), "{bad}");
        assert_secure(&p);
    }

    // Right values: recorded once, then the page confirms and takes no other answer.
    let right = [
        ("_token", token),
        ("topic", "Launch <post>"),
        ("words", "800"),
        ("channels", "blog"),
        ("channels", "mail"),
        ("urgent", "false"),
    ];
    let p = post(&s, path, &right).await;
    assert_eq!(p.status, 303, "{}", p.html);
    let back = p.location.expect("a redirect to the page");
    let p = get(&s, &back).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(p.html.contains("your answer is recorded"), "{}", p.html);
    let p = post(&s, path, &right).await;
    assert!(p.html.contains("your answer is recorded") && !p.html.contains("<form"), "{}", p.html);
    let evs = events(&s, &key, &run).await;
    assert_eq!(count(&evs, "InputSubmitted"), 1, "one submission whatever the reloads");
    let sub = evs.iter().find(|e| e["event_type"] == "InputSubmitted").unwrap();
    let data = &sub["payload"];
    assert_eq!(data["submitted_by"], "ana", "{sub}");
    assert_eq!(
        data["values"],
        json!({"topic": "Launch <post>", "words": 800, "tone": "plain", "channels": ["blog", "mail"], "urgent": false}),
        "{sub}"
    );

    // The approval: each approver from their own mail; the content shown as
    // a table, escaped, with its hash and the quorum's progress.
    let ana = link_of(&s, &smtp, "ana@example.com", "review", &run).await;
    let ben = link_of(&s, &smtp, "ben@example.com", "review", &run).await;
    assert_ne!(split(&ana).1, split(&ben).1, "each approver has a token of their own");
    let p = get(&s, &ana).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert_secure(&p);
    assert!(p.html.contains("<th scope=\"row\">topic</th><td>Launch &lt;post&gt;</td>"), "{}", p.html);
    assert!(!p.html.contains("<post>"), "content is escaped");
    // The AI draft in it, formatted from its Markdown, and nothing in it acts.
    assert!(p.html.contains("<h3>Cairn 1.0 is out</h3>") && p.html.contains("<strong>ship</strong>"), "{}", p.html);
    assert!(p.html.contains("<li>replay any run</li>"), "{}", p.html);
    assert!(p.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !p.html.contains("javascript:"), "{}", p.html);
    assert!(p.html.contains(r#"<a href="https://example.com/docs">docs</a>"#), "{}", p.html);
    assert!(p.html.contains("0 of 2 needed (all)"), "{}", p.html);
    let r = s.get(&format!("/runs/{run}"), &key).await;
    let hash = r.json["waiting"][0]["content_hash"].as_str().unwrap().to_owned();
    assert!(p.html.contains(&hash), "the content hash is shown");
    // A wrong content hash (the content changed under the approver): nothing recorded, shown again.
    let (apath, atoken) = split(&ana);
    let p = post(&s, apath, &[("_token", atoken), ("_content_hash", "00"), ("_decision", "approve")]).await;
    assert_eq!(p.status, 409, "{}", p.html);
    assert!(p.html.contains("changed while you read it"), "{}", p.html);
    // No decision chosen.
    let p = post(&s, apath, &[("_token", atoken), ("_content_hash", &hash)]).await;
    assert_eq!(p.status, 422, "{}", p.html);
    let p = post(
        &s,
        apath,
        &[("_token", atoken), ("_content_hash", &hash), ("_decision", "approve"), ("_comment", "Ship it")],
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.html);
    // Used twice: Ana's link now only says what she decided.
    let p = get(&s, &ana).await;
    assert!(
        p.html.contains("You <strong>approved</strong>") && p.html.contains("Ship it") && !p.html.contains("<form"),
        "{}",
        p.html
    );
    let p = post(&s, apath, &[("_token", atoken), ("_content_hash", &hash), ("_decision", "reject")]).await;
    assert!(!p.html.contains("<form") && p.html.contains("approved"), "{}", p.html);
    // Ben sees Ana's decision, and his completes the quorum.
    let p = get(&s, &ben).await;
    assert!(
        p.html.contains("1 of 2 needed") && p.html.contains("<strong>ana</strong> approved: “Ship it”"),
        "{}",
        p.html
    );
    let (bpath, btoken) = split(&ben);
    let p = post(&s, bpath, &[("_token", btoken), ("_content_hash", &hash), ("_decision", "approve")]).await;
    assert_eq!(p.status, 303, "{}", p.html);
    let done = s.wait_status(&run, &key, &["completed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    let evs = events(&s, &key, &run).await;
    assert_eq!(count(&evs, "ApprovalDecided"), 2);
    // After the run ended, the form's link is closed too (and says by whom it was answered).
    let p = get(&s, &brief).await;
    assert!(p.html.contains("your answer is recorded"), "{}", p.html);
}

/// An approval with fields on the approver's page: the fields under the
/// content, approving without the required ones or with a bad one says so
/// beside each (what was typed kept, nothing recorded); the right values
/// complete the step with them.
async fn an_approver_gives_the_approvals_fields_on_the_page(db: &str) {
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (s, key) = serve(&smtp, Some(db));
    let wf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/refund-approval.yaml"))
        .expect("example")
        .replace("approvers: [lead]", "approvers: [lead@example.com]");
    assert_eq!(s.post_yaml("/workflows", &key, &wf).await.status, 201);
    let r = s.post("/runs", &key, &json!({"workflow": "refund-approval"})).await;
    let run = r.json["run_id"].as_str().unwrap().to_owned();
    let lead = link(&s, &smtp, "lead@example.com", "review").await;
    let p = get(&s, &lead).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert_secure(&p);
    assert!(p.html.contains("<legend>With your approval</legend>"), "{}", p.html);
    assert!(
        p.html.contains(r#"<label for="f-amount">Amount to refund <span class="required">(required)</span>"#),
        "{}",
        p.html
    );
    assert!(
        p.html.contains(r#"<option value="wrong_item">"#) && p.html.contains("Shown to the customer"),
        "{}",
        p.html
    );
    let hash =
        s.get(&format!("/runs/{run}"), &key).await.json["waiting"][0]["content_hash"].as_str().unwrap().to_owned();
    let (path, token) = split(&lead);
    let p = post(&s, path, &[("_token", token), ("_content_hash", &hash), ("_decision", "approve"), ("amount", "900")])
        .await;
    assert_eq!(p.status, 422, "{}", p.html);
    assert!(p.html.contains("Nothing was recorded: 2 things to fix"), "{}", p.html);
    assert!(p.html.contains(r#"name="amount" value="900""#), "what was typed is kept: {}", p.html);
    assert!(p.html.contains("is required") && p.html.contains("500"), "{}", p.html);
    assert_eq!(count(&events(&s, &key, &run).await, "ApprovalDecided"), 0);
    let p = post(
        &s,
        path,
        &[
            ("_token", token),
            ("_content_hash", &hash),
            ("_decision", "approve"),
            ("amount", "35"),
            ("reason", "goodwill"),
        ],
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.html);
    let done = s.wait_status(&run, &key, &["completed"]).await;
    assert_eq!(done["output"]["refunded"], json!(35.0), "{done}");
    assert_eq!(done["output"]["reason"], "goodwill", "{done}");
}

/// A request whose deadline passed: its link says so and records nothing.
async fn an_expired_link_says_so(db: &str) {
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (s, key) = serve(&smtp, Some(db));
    let flow = "name: quick\nsteps:\n  - id: ask\n    form:\n      assignees: [ana]\n      deadline: 1s\n      fields: [{ name: note, required: true }]\n";
    let r = s.post_yaml("/workflows", &key, flow).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.post("/runs", &key, &json!({"workflow": "quick"})).await;
    let run = r.json["run_id"].as_str().unwrap().to_owned();
    let l = link(&s, &smtp, "ana@example.com", "ask").await;
    assert_eq!(get(&s, &l).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let p = get(&s, &l).await;
    assert_eq!(p.status, 410, "{}", p.html);
    assert!(p.html.contains("This request expired"), "{}", p.html);
    let (path, token) = split(&l);
    let p = post(&s, path, &[("_token", token), ("note", "late")]).await;
    assert_eq!(p.status, 410, "{}", p.html);
    assert_eq!(count(&events(&s, &key, &run).await, "InputSubmitted"), 0);
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn uuid_nil() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}

/// Node.js, the npm packages (playwright-core, axe-core) that
/// `.ci/install-test-tools` puts in target/test-tools/node, and Debian's
/// chromium; `None` (SKIPPED) when missing outside CI, a failure under CI.
fn browser_tools() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools/node/node_modules");
    let chromium = std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!node).then_some("node"),
        (!root.join("playwright-core").exists()).then_some("playwright-core"),
        (!root.join("axe-core").exists()).then_some("axe-core"),
        (!std::path::Path::new(&chromium).exists()).then_some("chromium"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Some((root, std::path::PathBuf::from(chromium)));
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{missing:?} not installed; run `bash .ci/install-test-tools`"
    );
    eprintln!("SKIPPED: {missing:?} not installed; run `bash .ci/install-test-tools`");
    None
}

/// `node people.mjs MODE URL`: a real browser through a person's page.
fn browse(modules: &std::path::Path, chromium: &std::path::Path, mode: &str, url: &str, key: &str) {
    let shots = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots/people");
    std::fs::create_dir_all(&shots).unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/people.mjs");
    let o = std::process::Command::new("node")
        .arg(script)
        .args([mode, url])
        .arg(&shots)
        .env("CAIRN_NODE_MODULES", modules)
        .env("CAIRN_CHROMIUM", chromium)
        .env("CAIRN_KEY", key)
        .output()
        .expect("run node");
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "the browser run `{mode}` failed (screenshots in {}):\n{out}", shots.display());
    assert!(out.contains(&format!("{mode}: ok")), "{out}");
}

/// [`browse`], telling `ready` when the script prints `ready` (then the
/// test acts, and the script checks what the page shows).
fn browse_until_ready(
    modules: &std::path::Path,
    chromium: &std::path::Path,
    mode: &str,
    url: &str,
    key: &str,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    use std::io::BufRead;
    let shots = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots/people");
    std::fs::create_dir_all(&shots).unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/people.mjs");
    let mut child = std::process::Command::new("node")
        .arg(script)
        .args([mode, url])
        .arg(&shots)
        .env("CAIRN_NODE_MODULES", modules)
        .env("CAIRN_CHROMIUM", chromium)
        .env("CAIRN_KEY", key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run node");
    let mut out = String::new();
    let mut ready = Some(ready);
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap_or_default();
        if line.trim() == "ready"
            && let Some(tx) = ready.take()
        {
            let _ = tx.send(());
        }
        out.push_str(&line);
        out.push('\n');
    }
    let o = child.wait_with_output().expect("node");
    out.push_str(&String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "the browser run `{mode}` failed (screenshots in {}):\n{out}", shots.display());
    assert!(out.contains(&format!("{mode}: ok")), "{out}");
}

/// In Debian's chromium: Ana signs in to the console with her key and finds
/// the form in her inbox and the run's timeline; she opens the form from her e-mail, types a wrong
/// value and sees the error beside the field, fixes it and sees it recorded;
/// then approves the draft from her approval e-mail; Ben's approval ends the
/// run. An operator then resumes a failed run from its page, seeing the
/// plan before it runs. axe-core finds no serious or critical violation on
/// any page shown.
/// Screenshots are left in target/screenshots/people/.
#[tokio::test]
async fn a_person_answers_in_a_real_browser() {
    let Some((modules, chromium)) = browser_tools() else { return };
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (s, key) = serve(&smtp, None);
    let r = s.post_yaml("/workflows", &key, FLOW).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.post("/runs", &key, &json!({"workflow": "launch"})).await;
    let run = r.json["run_id"].as_str().unwrap().to_owned();
    let form = link(&s, &smtp, "ana@example.com", "brief").await;
    // An operator watches another run of it: answered meanwhile, its page
    // updates in place (timeline and graph), no reload.
    let watched =
        s.post("/runs", &key, &json!({"workflow": "launch"})).await.json["run_id"].as_str().unwrap().to_owned();
    let watched_form = link_of(&s, &smtp, "ana@example.com", "brief", &watched).await;
    let watcher = s.key("wes", "operator", "wes");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (m, c, u) = (modules.clone(), chromium.clone(), format!("{}/ui/sign-in?next=/ui/runs/{watched}", s.url));
    let watching = tokio::task::spawn_blocking(move || browse_until_ready(&m, &c, "live", &u, &watcher, ready_tx));
    ready_rx.await.expect("the page is up");
    let (wpath, wtoken) = split(&watched_form);
    let p = post(&s, wpath, &[("_token", wtoken), ("topic", "Watched live")]).await;
    assert_eq!(p.status, 303, "{}", p.html);
    watching.await.unwrap();
    // Signed in with her key, Ana finds the form in her inbox and the run's timeline.
    let ana_key = s.key("ana", "approver", "ana");
    let (m, c, u) = (modules.clone(), chromium.clone(), format!("{}/ui/sign-in", s.url));
    tokio::task::spawn_blocking(move || browse(&m, &c, "console", &u, &ana_key)).await.unwrap();
    let (m, c, u) = (modules.clone(), chromium.clone(), format!("{}{form}", s.url));
    tokio::task::spawn_blocking(move || browse(&m, &c, "form", &u, "")).await.unwrap();
    let evs = events(&s, &key, &run).await;
    let sub = evs.iter().find(|e| e["event_type"] == "InputSubmitted").expect("the browser's submission");
    assert_eq!(
        sub["payload"]["values"],
        json!({"topic": "Launch of Cairn 1.0", "words": 800, "tone": "plain", "channels": ["blog"], "urgent": false})
    );
    let ana = link_of(&s, &smtp, "ana@example.com", "review", &run).await;
    let u = format!("{}{ana}", s.url);
    tokio::task::spawn_blocking(move || browse(&modules, &chromium, "approve", &u, "")).await.unwrap();
    let ben = link_of(&s, &smtp, "ben@example.com", "review", &run).await;
    let r = s.get(&format!("/runs/{run}"), &key).await;
    let hash = r.json["waiting"][0]["content_hash"].as_str().unwrap().to_owned();
    let (path, token) = split(&ben);
    let p = post(&s, path, &[("_token", token), ("_content_hash", &hash), ("_decision", "approve")]).await;
    assert_eq!(p.status, 303, "{}", p.html);
    let done = s.wait_status(&run, &key, &["completed"]).await;
    assert_eq!(done["status"], "completed");
    let all = events(&s, &key, &run).await;
    let decided = evs_of(&all, "ApprovalDecided");
    assert_eq!(decided[0]["payload"]["decided_by"], "ana");
    assert_eq!(decided[0]["payload"]["comment"], "Looks right to me");

    // An operator resumes a failed run from its page: the plan first, then the resume.
    assert_eq!(s.post_yaml("/workflows", &key, FLAKY).await.status, 201);
    let flaky = s.post("/runs", &key, &json!({"workflow": "flaky"})).await.json["run_id"].as_str().unwrap().to_owned();
    s.wait_status(&flaky, &key, &["failed"]).await;
    let op = s.key("olga", "operator", "olga");
    let u = format!("{}/ui/sign-in?next=/ui/runs/{flaky}", s.url);
    let (m, c) = browser_tools().unwrap();
    tokio::task::spawn_blocking(move || browse(&m, &c, "resume", &u, &op)).await.unwrap();
    let done = s.wait_status(&flaky, &key, &["completed"]).await;
    assert_eq!(done["output"], json!({"text": "Hello"}));
    let all = events(&s, &key, &flaky).await;
    assert_eq!(evs_of(&all, "RunResumed")[0]["payload"]["reason"], "the CMS is back");
}

fn evs_of<'a>(evs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["event_type"] == kind).collect()
}

/// A request with a cookie (and optionally a form), no redirects followed.
async fn with_cookie(s: &Server, method: &str, path: &str, cookie: &str, form: Option<&[(&str, &str)]>) -> Page {
    let c = no_redirects();
    let mut r = if method == "POST" { c.post(format!("{}{path}", s.url)) } else { c.get(format!("{}{path}", s.url)) };
    if !cookie.is_empty() {
        r = r.header("cookie", cookie);
    }
    if let Some(f) = form {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(f).finish();
        r = r.header("content-type", "application/x-www-form-urlencoded").body(body);
    }
    page(r.send().await.unwrap()).await
}

/// Signs in with `key`: the `name=value` of the session cookie and its attributes.
async fn sign_in(s: &Server, key: &str, https: bool) -> (String, String) {
    let body: String =
        form_urlencoded::Serializer::new(String::new()).extend_pairs([("key", key), ("next", "/ui/runs")]).finish();
    let mut r = no_redirects()
        .post(format!("{}/ui/sign-in", s.url))
        .header("content-type", "application/x-www-form-urlencoded");
    if https {
        r = r.header("x-forwarded-proto", "https");
    }
    let p = page(r.body(body).send().await.unwrap()).await;
    assert_eq!(p.status, 303, "{}", p.html);
    assert_eq!(p.location.as_deref(), Some("/ui/runs"));
    let set = p.headers.get("set-cookie").and_then(|v| v.to_str().ok()).expect("a session cookie").to_owned();
    let pair = set.split(';').next().unwrap().trim().to_owned();
    (pair, set)
}

/// The value of a hidden input in a page.
fn hidden(html: &str, name: &str) -> String {
    let at = html.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("no {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

async fn the_console_signs_in_and_shows_runs(db: &str) {
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (s, key) = serve(&smtp, Some(db));
    let ana = s.key("ana", "approver", "ana");
    let r = s.post_yaml("/workflows", &key, FLOW).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.post("/runs", &key, &json!({"workflow": "launch", "inputs": {}})).await;
    let run = r.json["run_id"].as_str().unwrap().to_owned();

    // Not signed in: every console page sends you to sign in, and back after.
    let p = with_cookie(&s, "GET", "/ui/inbox", "", None).await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/ui/sign-in?next=%2Fui%2Finbox")));
    let p = with_cookie(&s, "GET", "/ui/sign-in?next=/ui/inbox", "", None).await;
    assert_eq!(p.status, 200);
    assert_secure(&p);
    assert!(p.html.contains(r#"type="password""#), "{}", p.html);
    // A wrong key: said so, no cookie.
    let p =
        with_cookie(&s, "POST", "/ui/sign-in", "", Some(&[("key", "cairn_nope_nope"), ("next", "/ui/inbox")])).await;
    assert_eq!(p.status, 401, "{}", p.html);
    assert!(p.html.contains("not known or was revoked") && p.headers.get("set-cookie").is_none());
    // An open redirect is not possible through `next`.
    let p = with_cookie(&s, "POST", "/ui/sign-in", "", Some(&[("key", &ana), ("next", "//evil.example/ui")])).await;
    assert_eq!(p.location.as_deref(), Some("/ui/inbox"));

    let (cookie, attrs) = sign_in(&s, &ana, false).await;
    for a in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(a), "{attrs}");
    }
    assert!(!attrs.contains("Secure"), "no Secure over plain HTTP: {attrs}");
    let (_, tls) = sign_in(&s, &ana, true).await;
    assert!(tls.contains("; Secure"), "Secure behind an HTTPS proxy: {tls}");

    // The inbox: what waits for Ana, with a link that answers as her.
    link(&s, &smtp, "ana@example.com", "brief").await; // the request is recorded
    let p = with_cookie(&s, "GET", "/ui/inbox", &cookie, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert_secure(&p);
    assert!(p.html.contains("Brief for the launch post") && p.html.contains("ana (approver)"), "{}", p.html);
    let at = p.html.find(&format!("/runs/{run}/steps/brief?token=")).expect("an answer link");
    let answer: String = p.html[at..].chars().take_while(|c| *c != '"').collect();
    let f = get(&s, &answer).await;
    assert_eq!(f.status, 200, "{}", f.html);
    assert!(f.html.contains("For <strong>ana</strong>"));

    // Runs, filtered; a run with its timeline.
    let p = with_cookie(&s, "GET", "/ui/runs?status=waiting", &cookie, None).await;
    assert!(p.html.contains(&format!("/ui/runs/{run}")), "{}", p.html);
    let p = with_cookie(&s, "GET", "/ui/runs?status=completed&workflow=launch", &cookie, None).await;
    assert!(p.html.contains("No runs match"), "{}", p.html);
    // By time: a day's bounds include the whole day.
    let started = s.get(&format!("/runs/{run}"), &key).await.json["started_at"].as_str().unwrap().to_owned();
    let today = started[..10].to_owned(); // the run's day, whatever the clock says now
    let p = with_cookie(&s, "GET", &format!("/ui/runs?since={today}&until={today}"), &cookie, None).await;
    assert!(p.html.contains(&format!("/ui/runs/{run}")), "{}", p.html);
    let p = with_cookie(&s, "GET", "/ui/runs?until=2001-01-01", &cookie, None).await;
    assert!(p.html.contains("No runs match"), "{}", p.html);
    let p = with_cookie(&s, "GET", "/ui/runs?since=yesterday", &cookie, None).await;
    assert!(p.html.contains("is not a day") && p.html.contains(&format!("/ui/runs/{run}")), "{}", p.html);
    let p = with_cookie(&s, "GET", &format!("/ui/runs/{run}"), &cookie, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(
        p.html.contains("RunStarted") && p.html.contains("InputRequested") && p.html.contains("answer as you"),
        "{}",
        p.html
    );
    // The graph: each step's box in its state.
    assert!(p.html.contains("<svg") && p.html.contains("role=\"img\""), "{}", p.html);
    let node = |state: &str, y: u32| format!("<g class=\"node state-{state}\"><rect x=\"20\" y=\"{y}\"");
    assert!(p.html.contains(&node("waiting", 10)) && p.html.contains(&node("not-reached", 86)), "{}", p.html);
    assert!(
        p.html.contains("<td><code>brief</code></td><td>form</td><td class=\"state-waiting\">waiting</td>"),
        "{}",
        p.html
    );
    let p = with_cookie(&s, "GET", &format!("/ui/runs/{}", uuid_nil()), &cookie, None).await;
    assert_eq!(p.status, 404);

    // A cookie edited (a later expiry) or made up is no session.
    let value = cookie.split_once('=').unwrap().1;
    let bits: Vec<&str> = value.rsplitn(3, '.').collect(); // mac, expiry, key id
    let later = bits[1].parse::<i64>().unwrap() + 3600;
    let forged = format!("cairn_session={}.{later}.{}", bits[2], bits[0]);
    assert_eq!(with_cookie(&s, "GET", "/ui/runs", &forged, None).await.status, 303);
    let made_up = format!("cairn_session={}.{later}.{}", bits[2], "0".repeat(64));
    assert_eq!(with_cookie(&s, "GET", "/ui/runs", &made_up, None).await.status, 303);

    // Sign out needs the session's CSRF token.
    let p = with_cookie(&s, "GET", "/ui/runs", &cookie, None).await;
    let token = hidden(&p.html, "_csrf");
    let p = with_cookie(&s, "POST", "/ui/sign-out", &cookie, Some(&[("_csrf", "0000")])).await;
    assert_eq!(p.status, 403, "{}", p.html);
    let p = with_cookie(&s, "POST", "/ui/sign-out", &cookie, Some(&[("_csrf", &token)])).await;
    assert_eq!(p.status, 303);
    assert!(p.headers.get("set-cookie").and_then(|v| v.to_str().ok()).is_some_and(|c| c.contains("Max-Age=0")));

    // Revoking the key ends its sessions (within the key cache's second).
    let (cookie, _) = sign_in(&s, &ana, false).await;
    assert_eq!(with_cookie(&s, "GET", "/ui/runs", &cookie, None).await.status, 200);
    let o = s.cairn(&["keys", "revoke", "ana"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(with_cookie(&s, "GET", "/ui/runs", &cookie, None).await.status, 303);
}

/// A session ends when its time is up (`--session-ttl`).
#[tokio::test]
async fn a_console_session_expires() {
    let Some(smtp) = servers::smtp_on(None) else { return };
    // Two seconds: the first read must land inside them even on a busy machine.
    let (s, _) = serve_with(&smtp, None, &["--session-ttl", "2"]);
    let viewer = s.key("vic", "viewer", "vic");
    let (cookie, attrs) = sign_in(&s, &viewer, false).await;
    assert!(attrs.contains("Max-Age=2"), "{attrs}");
    assert_eq!(with_cookie(&s, "GET", "/ui/runs", &cookie, None).await.status, 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let p = with_cookie(&s, "GET", "/ui/runs", &cookie, None).await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/ui/sign-in?next=%2Fui%2Fruns")));
}

const FLAKY: &str = r#"name: flaky
steps:
  - id: draft
    transform: { title: "Hello" }
  - id: publish
    task: fail
    with: { succeed_on_attempt: 3, kind: cms.unavailable }
    retry: { max_attempts: 2, initial_interval: 10ms }
  - id: announce
    task: echo
    with: { text: "{{ steps.draft.output.title }}" }
"#;

/// A resume from the console shows the plan first and records nothing
/// until confirmed, and only as planned; cancel and resume need an
/// operator's role and the session's CSRF token.
async fn the_console_plans_a_resume_before_it_runs(db: &str) {
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (s, key) = serve(&smtp, Some(db));
    let op = s.key("olga", "operator", "olga");
    let viewer = s.key("vic", "viewer", "vic");
    assert_eq!(s.post_yaml("/workflows", &key, FLAKY).await.status, 201);
    let run = s.post("/runs", &key, &json!({"workflow": "flaky"})).await.json["run_id"].as_str().unwrap().to_owned();
    s.wait_status(&run, &key, &["failed"]).await;
    let page_of = format!("/ui/runs/{run}");

    // A viewer sees the run, no action, and is refused if they post one anyway.
    let (vc, _) = sign_in(&s, &viewer, false).await;
    let p = with_cookie(&s, "GET", &page_of, &vc, None).await;
    assert!(p.html.contains("failed") && !p.html.contains("Plan a resume"), "{}", p.html);
    let vt = hidden(&p.html, "_csrf");
    let p = with_cookie(&s, "POST", &format!("{page_of}/resume"), &vc, Some(&[("_csrf", &vt), ("step", "plan")])).await;
    assert_eq!(p.status, 403, "{}", p.html);
    assert!(p.html.contains("operator"), "{}", p.html);

    // The operator plans: the diff, and nothing recorded.
    let (oc, _) = sign_in(&s, &op, false).await;
    let p = with_cookie(&s, "GET", &page_of, &oc, None).await;
    assert!(p.html.contains("Plan a resume"), "{}", p.html);
    for (id, kind, state, visits, attempts) in [
        ("draft", "transform", "completed", 1, 1),
        ("publish", "task", "failed", 1, 2),
        ("announce", "task", "not-reached", 0, 0),
    ] {
        let shown = state.replace('-', " ");
        let row = format!(
            "<td><code>{id}</code></td><td>{kind}</td><td class=\"state-{state}\">{shown}</td><td>{visits}</td><td>{attempts}</td>"
        );
        assert!(p.html.contains(&row), "{row}: {}", p.html);
    }
    assert!(p.html.contains("visits 1, attempts 2"), "the graph shows the retries: {}", p.html);
    assert!(p.html.contains("attempt 2 due") && p.html.contains("<code>cms.unavailable</code>"), "{}", p.html);
    let ot = hidden(&p.html, "_csrf");
    let p =
        with_cookie(&s, "POST", &format!("{page_of}/resume"), &oc, Some(&[("_csrf", "nope"), ("step", "plan")])).await;
    assert_eq!(p.status, 403, "a form without the session's CSRF token: {}", p.html);
    let plan = with_cookie(
        &s,
        "POST",
        &format!("{page_of}/resume"),
        &oc,
        Some(&[("_csrf", &ot), ("step", "plan"), ("policy", "failed-only")]),
    )
    .await;
    assert_eq!(plan.status, 200, "{}", plan.html);
    assert_secure(&plan);
    for (step, mark) in [("draft", "kept"), ("publish", "rerun"), ("announce", "newly reached")] {
        assert!(plan.html.contains(&format!("<td><code>{step}</code></td><td>")), "{step}: {}", plan.html);
        assert!(plan.html.contains(&format!("<td>{mark}</td>")), "{mark}: {}", plan.html);
    }
    assert_eq!(s.get(&format!("/runs/{run}"), &key).await.json["status"], "failed", "a plan records nothing");
    // A plan made at another version of the run is not carried out: shown again.
    let at = hidden(&plan.html, "at_version");
    let stale = (at.parse::<u64>().unwrap() - 1).to_string();
    let p = with_cookie(
        &s,
        "POST",
        &format!("{page_of}/resume"),
        &oc,
        Some(&[("_csrf", &ot), ("step", "confirm"), ("at_version", &stale), ("policy", "failed-only")]),
    )
    .await;
    assert!(p.html.contains("changed since that plan was made"), "{}", p.html);
    assert_eq!(s.get(&format!("/runs/{run}"), &key).await.json["status"], "failed");
    // Confirmed as planned: resumed, and the run completes.
    let p = with_cookie(
        &s,
        "POST",
        &format!("{page_of}/resume"),
        &oc,
        Some(&[
            ("_csrf", &ot),
            ("step", "confirm"),
            ("at_version", &at),
            ("policy", "failed-only"),
            ("reason", "the CMS is back"),
        ]),
    )
    .await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some(page_of.as_str())), "{}", p.html);
    let done = s.wait_status(&run, &key, &["completed"]).await;
    assert_eq!(done["output"], json!({"text": "Hello"}));
    let evs = events(&s, &key, &run).await;
    let resumed = evs_of(&evs, "RunResumed");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["payload"]["by"], "olga");
    // Replay check (any role) and fork (operators) from the run's page.
    let p = with_cookie(&s, "GET", &format!("{page_of}/replay"), &vc, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(p.html.contains("The log replays exactly"), "{}", p.html);
    let p = with_cookie(&s, "POST", &format!("{page_of}/fork"), &vc, Some(&[("_csrf", &vt), ("at", "announce")])).await;
    assert_eq!(p.status, 403, "a viewer may not fork");
    let p = with_cookie(&s, "POST", &format!("{page_of}/fork"), &oc, Some(&[("_csrf", &ot), ("at", "nowhere")])).await;
    assert_eq!(p.status, 409, "{}", p.html);
    assert!(p.html.contains("Not forked") && p.html.contains("nowhere"), "{}", p.html);
    let p = with_cookie(&s, "POST", &format!("{page_of}/fork"), &oc, Some(&[("_csrf", &ot), ("at", "announce")])).await;
    assert_eq!(p.status, 303, "{}", p.html);
    let forked = p.location.unwrap().trim_start_matches("/ui/runs/").to_owned();
    assert_ne!(forked, run);
    let done = s.wait_status(&forked, &key, &["completed"]).await;
    assert_eq!(done["output"], json!({"text": "Hello"}), "{done}");

    // Cancel, from the page of a run that waits.
    assert_eq!(s.post_yaml("/workflows", &key, FLOW).await.status, 201);
    let waiting =
        s.post("/runs", &key, &json!({"workflow": "launch"})).await.json["run_id"].as_str().unwrap().to_owned();
    let p = with_cookie(&s, "GET", &format!("/ui/runs/{waiting}"), &oc, None).await;
    assert!(p.html.contains("Cancel the run"), "{}", p.html);
    let p = with_cookie(
        &s,
        "POST",
        &format!("/ui/runs/{waiting}/cancel"),
        &oc,
        Some(&[("_csrf", &ot), ("reason", "not needed")]),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.html);
    assert_eq!(s.get(&format!("/runs/{waiting}"), &key).await.json["status"], "cancelled");
}

/// The workflows' pages: the list, a workflow's versions, source and graph,
/// and starting a run from a form built from its `inputs` schema (checked
/// by the schema, each refusal said and what was typed kept).
async fn the_console_lists_workflows_and_starts_runs(db: &str) {
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (s, key) = serve(&smtp, Some(db));
    let flow = r#"name: priced
inputs:
  type: object
  properties:
    total: { type: number, description: "The order's total" }
    rush: { type: boolean, default: false }
  required: [total]
steps:
  - id: echo
    task: echo
    with: { t: "{{ inputs.total }}" }
"#;
    assert_eq!(s.post_yaml("/workflows", &key, flow).await.status, 201);
    let op = s.key("olga", "operator", "olga");
    let viewer = s.key("vic", "viewer", "vic");
    let (oc, _) = sign_in(&s, &op, false).await;
    let p = with_cookie(&s, "GET", "/ui/workflows", &oc, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert_secure(&p);
    assert!(p.html.contains(r#"<a href="/ui/workflows/priced">priced</a>"#), "{}", p.html);
    let p = with_cookie(&s, "GET", "/ui/workflows/priced", &oc, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(p.html.contains("name: priced") && p.html.contains("<g class=\"node state-plain\">"), "{}", p.html);
    assert!(p.html.contains(r#"name="total""#) && p.html.contains("The order&#39;s total"), "{}", p.html);
    let token = hidden(&p.html, "_csrf");
    // A value the schema refuses: said, kept, nothing started.
    let form = [("_csrf", token.as_str()), ("_version", "1"), ("total", "lots")];
    let p = with_cookie(&s, "POST", "/ui/workflows/priced/start", &oc, Some(&form)).await;
    assert_eq!(p.status, 422, "{}", p.html);
    assert!(p.html.contains("Nothing was started") && p.html.contains(r#"value="lots""#), "{}", p.html);
    let r = s.get("/runs?workflow=priced", &key).await;
    assert_eq!(r.json["items"].as_array().map(Vec::len), Some(0), "{}", r.text);
    // Right: started, and its page.
    let form = [("_csrf", token.as_str()), ("_version", "1"), ("total", "12.5"), ("rush", "true")];
    let p = with_cookie(&s, "POST", "/ui/workflows/priced/start", &oc, Some(&form)).await;
    assert_eq!(p.status, 303, "{}", p.html);
    let run = p.location.unwrap().trim_start_matches("/ui/runs/").to_owned();
    let done = s.wait_status(&run, &key, &["completed"]).await;
    assert_eq!(done["inputs"], json!({"total": 12.5, "rush": true}), "{done}");
    assert_eq!(done["started_by"], "olga");
    // A viewer sees the workflow but no start form, and may not start.
    let (vc, _) = sign_in(&s, &viewer, false).await;
    let p = with_cookie(&s, "GET", "/ui/workflows/priced", &vc, None).await;
    assert!(!p.html.contains("Start a run"), "{}", p.html);
    let vt = hidden(&p.html, "_csrf");
    let form = [("_csrf", vt.as_str()), ("_version", "1"), ("total", "1")];
    assert_eq!(with_cookie(&s, "POST", "/ui/workflows/priced/start", &vc, Some(&form)).await.status, 403);
    assert_eq!(with_cookie(&s, "GET", "/ui/workflows/nope", &vc, None).await.status, 404);

    // Authoring: check (every diagnostic with line and column, what was
    // typed kept), preview the graph, publish.
    let p = with_cookie(&s, "GET", "/ui/workflows/new", &oc, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert_secure(&p);
    let broken = "name: drafted\nsteps:\n  - id: one\n    task: no_such_task\n  - id: two\n    task: nor_this_one\n";
    let form = [("_csrf", token.as_str()), ("_action", "check"), ("source", broken)];
    let p = with_cookie(&s, "POST", "/ui/workflows/new", &oc, Some(&form)).await;
    assert_eq!(p.status, 422, "{}", p.html);
    assert!(p.html.contains("line 4, column") && p.html.contains("no_such_task"), "{}", p.html);
    assert!(p.html.contains("line 6, column"), "every diagnostic: {}", p.html);
    assert!(p.html.contains("task: no_such_task") && !p.html.contains("value=\"publish\""), "{}", p.html);
    let good = "name: drafted\nsteps:\n  - id: one\n    task: echo\n  - id: two\n    transform: { x: \"{{ steps.one.output }}\" }\n";
    let form = [("_csrf", token.as_str()), ("_action", "check"), ("source", good)];
    let p = with_cookie(&s, "POST", "/ui/workflows/new", &oc, Some(&form)).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(
        p.html.contains("No problems") && p.html.contains("<svg") && p.html.contains("value=\"publish\""),
        "{}",
        p.html
    );
    assert_eq!(s.get("/workflows/drafted", &key).await.status, 404, "a check publishes nothing");
    // The same as you type (the editor's script): JSON, for the session's forms only.
    let form = [("_csrf", token.as_str()), ("source", broken)];
    let p = with_cookie(&s, "POST", "/ui/workflows/check", &oc, Some(&form)).await;
    let v: Value = serde_json::from_str(&p.html).unwrap();
    assert_eq!(
        (p.status, v["valid"].as_bool(), v["diagnostics"][0]["line"].as_u64()),
        (200, Some(false), Some(4)),
        "{v}"
    );
    let form = [("_csrf", "nope"), ("source", broken)];
    assert_eq!(with_cookie(&s, "POST", "/ui/workflows/check", &oc, Some(&form)).await.status, 403);
    assert_eq!(with_cookie(&s, "POST", "/ui/workflows/check", "", Some(&form)).await.status, 401);
    // A viewer may check but not publish; a form without the CSRF token does nothing.
    let form = [("_csrf", vt.as_str()), ("_action", "publish"), ("source", good)];
    assert_eq!(with_cookie(&s, "POST", "/ui/workflows/new", &vc, Some(&form)).await.status, 403);
    let form = [("_csrf", "nope"), ("_action", "publish"), ("source", good)];
    assert_eq!(with_cookie(&s, "POST", "/ui/workflows/new", &oc, Some(&form)).await.status, 403);
    let form = [("_csrf", token.as_str()), ("_action", "publish"), ("source", good)];
    let p = with_cookie(&s, "POST", "/ui/workflows/new", &oc, Some(&form)).await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/ui/workflows/drafted?version=1")), "{}", p.html);
    let r = s.get("/workflows/drafted", &key).await;
    assert_eq!((r.status, r.json["versions"][0]["published_by"].as_str()), (200, Some("olga")), "{}", r.text);

    // Audit (operators): who did what, with positions and hashes, by actor.
    let p = with_cookie(&s, "GET", "/ui/audit?actor=olga", &oc, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert_secure(&p);
    assert!(
        p.html.contains("<td>olga</td>")
            && p.html.contains("WorkflowVersionPublished")
            && p.html.contains("RunStarted"),
        "{}",
        p.html
    );
    assert!(!p.html.contains("<td>ops</td>"), "only olga's records: {}", p.html);
    assert_eq!(with_cookie(&s, "GET", "/ui/audit", &vc, None).await.status, 403, "a viewer may not read the audit log");
    let p = with_cookie(&s, "GET", "/ui/audit?run=not-a-run", &oc, None).await;
    assert!(p.html.contains("not a run id"), "{}", p.html);
    // The export downloads from the page, and checks offline.
    assert!(with_cookie(&s, "GET", "/ui/audit", &oc, None).await.html.contains("/ui/audit/export?format=jsonl"));
    let p = with_cookie(&s, "GET", "/ui/audit/export?format=jsonl", &oc, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    let disposition = p.headers.get("content-disposition").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(disposition.contains("attachment") && disposition.contains("cairn-audit.jsonl"), "{disposition}");
    let file = s.dir.path().join("downloaded.jsonl");
    std::fs::write(&file, &p.html).unwrap();
    let o = s.cairn(&["verify", "--export", &file.display().to_string()]);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(with_cookie(&s, "GET", "/ui/audit/export", &vc, None).await.status, 403);
    // Costs (any role): tokens of an AI step, by workflow and by model, with bars.
    let writer = "name: writer\nsteps:\n  - id: draft\n    ai:\n      model: scripted\n      prompt: Write\n      scripted: [{ content: Hello, input_tokens: 12, output_tokens: 34 }]\n";
    assert_eq!(s.post_yaml("/workflows", &key, writer).await.status, 201);
    let run = s.post("/runs", &key, &json!({"workflow": "writer"})).await.json["run_id"].as_str().unwrap().to_owned();
    s.wait_status(&run, &key, &["completed"]).await;
    // The run's timeline says what the AI attempt sent and got back.
    let p = with_cookie(&s, "GET", &format!("/ui/runs/{run}"), &vc, None).await;
    assert!(p.html.contains("reply (12 in, 34 out tokens") && p.html.contains("<q>Hello</q>"), "{}", p.html);
    assert!(p.html.contains("sent: <q>Write</q>"), "{}", p.html);
    let p = with_cookie(&s, "GET", "/ui/costs", &vc, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(p.html.contains("<tr><td>writer</td><td>1</td><td>12</td><td>34</td>"), "{}", p.html);
    assert!(p.html.contains("class=\"bar\""), "{}", p.html);
    let p = with_cookie(&s, "GET", "/ui/costs?by=model", &vc, None).await;
    assert!(p.html.contains("<strong>model</strong>") && p.html.contains("scripted"), "{}", p.html);
    // A range of days: through today holds the attempt, through yesterday
    // not; the other groupings keep the range; a bad day is said, not a 500.
    // The run's day, whatever the clock says now (the attempt's is the same).
    let started = s.get(&format!("/runs/{run}"), &key).await.json["started_at"].as_str().unwrap().to_owned();
    let today: chrono::NaiveDate = started[..10].parse().unwrap();
    let yesterday = today.pred_opt().expect("day");
    let p = with_cookie(&s, "GET", &format!("/ui/costs?by=workflow&since={today}&until={today}"), &vc, None).await;
    assert!(p.html.contains("<tr><td>writer</td>"), "{}", p.html);
    assert!(p.html.contains(&format!("href=\"/ui/costs?by=model&amp;since={today}&amp;until={today}\"")), "{}", p.html);
    let p = with_cookie(&s, "GET", &format!("/ui/costs?until={yesterday}"), &vc, None).await;
    assert!(
        !p.html.contains("<tr><td>writer</td>") && p.html.contains("No AI attempt was recorded in these days"),
        "{}",
        p.html
    );
    let p = with_cookie(&s, "GET", &format!("/ui/costs?since={today}&until={yesterday}"), &vc, None).await;
    assert!(p.html.contains("they were swapped") && p.html.contains("<tr><td>writer</td>"), "{}", p.html);
    let p = with_cookie(&s, "GET", "/ui/costs?since=someday", &vc, None).await;
    assert_eq!(p.status, 200);
    assert!(p.html.contains("`someday` is not a day"), "{}", p.html);
}

const NESTED: &str = r#"name: nested
steps:
  - id: each
    map:
      items: [1, 2, 3]
      steps:
        - id: price
          transform: { total: "{{ item }}" }
  - id: fan
    parallel:
      branches:
        - name: left
          steps:
            - id: ask
              approval: { approvers: [ana], summary: "Go?" }
        - name: right
          steps:
            - id: count
              transform: { n: 1 }
            - id: twice
              transform: { n: 2 }
  - id: after
    transform: { done: true }
"#;

/// The run's graph draws what is inside a parallel (its branches side by
/// side, each step in its own state) and a map (its steps once, with how
/// many iterations stand where), and the table names each nested step by
/// its place.
async fn the_console_draws_parallel_branches_and_map_items(db: &str) {
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (s, key) = serve(&smtp, Some(db));
    assert_eq!(s.post_yaml("/workflows", &key, NESTED).await.status, 201);
    let run = s.post("/runs", &key, &json!({"workflow": "nested"})).await.json["run_id"].as_str().unwrap().to_owned();
    s.wait_status(&run, &key, &["waiting"]).await;
    let (cookie, _) = sign_in(&s, &key, false).await;
    let p = with_cookie(&s, "GET", &format!("/ui/runs/{run}"), &cookie, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    let has = |needle: &str| assert!(p.html.contains(needle), "{needle}: {}", p.html);
    // Frames for the containers, in the state of what they hold.
    has("<g class=\"node frame state-completed\">");
    has("map · 3 items · completed</text>");
    has("<g class=\"node frame state-waiting\">");
    has(">parallel · waiting</text>");
    // The map's step once, with its three iterations; each branch's steps.
    has(">transform · 3 completed</text>");
    has(">approval · waiting</text>");
    has("class=\"branch\">left</text>");
    has("class=\"branch\">right</text>");
    for (path, kind, state, shown, visits) in [
        ("each", "map", "completed", "completed", 1),
        ("each[each] › price", "transform", "completed", "3 completed", 3),
        ("fan", "parallel", "waiting", "waiting", 1),
        ("fan › left › ask", "approval", "waiting", "waiting", 1),
        ("fan › right › count", "transform", "completed", "completed", 1),
        ("fan › right › twice", "transform", "completed", "completed", 1),
        ("after", "transform", "not-reached", "not reached", 0),
    ] {
        has(&format!(
            "<td><code>{path}</code></td><td>{kind}</td><td class=\"state-{state}\">{shown}</td><td>{visits}</td>"
        ));
    }
    // The branches sit side by side: two columns at different x, one y.
    let x_of = |id: &str| -> (f64, f64) {
        let at = p.html.find(&format!("class=\"id\">{id}</text>")).expect(id);
        let head = &p.html[..at];
        let x = head.rfind("<text x=\"").map(|i| &head[i + 9..]).unwrap();
        let y = x.split_once("y=\"").unwrap().1;
        (x.split('"').next().unwrap().parse().unwrap(), y.split('"').next().unwrap().parse().unwrap())
    };
    let (ask, count) = (x_of("ask"), x_of("count"));
    assert!(ask.0 < count.0 && ask.1 == count.1, "ask {ask:?}, count {count:?}");
    assert!(x_of("twice").1 > count.1, "twice under count");
    // The workflow's own page draws the same shape, plain.
    let p = with_cookie(&s, "GET", "/ui/workflows/nested", &cookie, None).await;
    assert!(
        p.html.contains("<g class=\"node frame state-plain\">") && p.html.contains("class=\"id\">twice</text>"),
        "{}",
        p.html
    );
}

/// A dag on the run's page: a frame with its steps in rows by what they
/// depend on (a step below every step it depends on, independent steps
/// side by side), an arrow per dependency, the skip of a guard drawn.
async fn the_console_draws_a_dag_in_rows_by_dependency(db: &str) {
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (s, key) = serve(&smtp, Some(db));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/release-dag.yaml");
    let wf = std::fs::read_to_string(root).expect("example");
    assert_eq!(s.post_yaml("/workflows", &key, &wf).await.status, 201);
    let run =
        s.post("/runs", &key, &json!({"workflow": "release-dag"})).await.json["run_id"].as_str().unwrap().to_owned();
    let done = s.wait_status(&run, &key, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (cookie, _) = sign_in(&s, &key, false).await;
    let p = with_cookie(&s, "GET", &format!("/ui/runs/{run}"), &cookie, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    let has = |needle: &str| assert!(p.html.contains(needle), "{needle}: {}", p.html);
    has(">dag · completed</text>");
    for (path, kind, state) in [
        ("release", "dag", "completed"),
        ("release › build_linux", "task", "completed"),
        ("release › sign_mac", "transform", "skipped"),
        ("release › publish", "transform", "completed"),
    ] {
        has(&format!("<td><code>{path}</code></td><td>{kind}</td><td class=\"state-{state}\">"));
    }
    let at = |id: &str| -> (f64, f64) {
        let i = p.html.find(&format!("class=\"id\">{id}</text>")).expect(id);
        let head = &p.html[..i];
        let x = head.rfind("<text x=\"").map(|i| &head[i + 9..]).unwrap();
        let y = x.split_once("y=\"").unwrap().1;
        (x.split('"').next().unwrap().parse().unwrap(), y.split('"').next().unwrap().parse().unwrap())
    };
    let (checkout, linux, mac, docs) = (at("checkout"), at("build_linux"), at("build_mac"), at("docs"));
    let (test, sign, publish) = (at("test_linux"), at("sign_mac"), at("publish"));
    assert!(checkout.1 < linux.1 && linux.1 == mac.1 && mac.1 == docs.1, "one row after checkout");
    assert!(linux.0 < mac.0 && mac.0 < docs.0, "side by side in listed order");
    assert!(test.1 == sign.1 && test.1 > linux.1 && publish.1 > test.1, "each below what it depends on");
    // One arrow per dependency (8) inside the frame.
    let frame =
        &p.html[p.html.find(">dag · completed</text>").unwrap()..p.html.find("class=\"id\">announce</text>").unwrap()];
    assert_eq!(frame.matches("<line class=\"edge\"").count(), 8, "{frame}");
}

/// A caught failure on the run's page: the step drawn as caught, the
/// timeline saying what was caught and where control went; a guard's skip
/// says why.
async fn the_console_shows_caught_errors_and_skips(db: &str) {
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (s, key) = serve(&smtp, Some(db));
    let wf = "name: routed\nsteps:\n  - id: maybe\n    when: 'false'\n    transform: { x: 1 }\n  - id: charge\n    task: fail\n    with: { kind: card.declined, retryable: false }\n    catch: [{ errors: [card.declined], next: handle }]\n  - id: fine\n    transform: { ok: true }\n    end: true\n  - id: handle\n    transform: { why: '{{ steps.charge.error.kind }}' }\n";
    assert_eq!(s.post_yaml("/workflows", &key, wf).await.status, 201);
    let run = s.post("/runs", &key, &json!({"workflow": "routed"})).await.json["run_id"].as_str().unwrap().to_owned();
    let done = s.wait_status(&run, &key, &["completed", "failed"]).await;
    assert_eq!(done["output"], json!({"why": "card.declined"}), "{done}");
    let (cookie, _) = sign_in(&s, &key, false).await;
    let p = with_cookie(&s, "GET", &format!("/ui/runs/{run}"), &cookie, None).await;
    assert!(
        p.html.contains("<g class=\"node state-caught\">") && p.html.contains(">task · caught</text>"),
        "{}",
        p.html
    );
    assert!(
        p.html.contains("<code>card.declined</code> caught after attempt 1; on to <code>handle</code>"),
        "{}",
        p.html
    );
    assert!(p.html.contains("when: `false` is false") && p.html.contains(">transform · skipped</text>"), "{}", p.html);
    assert!(p.html.contains(">transform · not reached</text>"), "`fine` is not reached: {}", p.html);
}

/// The console lists schedules with their next firings, and the delivery
/// log (dead letters included) for operators.
async fn the_console_lists_schedules_and_deliveries(db: &str) {
    let Some(smtp) = servers::smtp_on(None) else { return };
    let (s, key) = serve(&smtp, Some(db));
    let flow = "name: nightly\nsteps:\n  - id: a\n    task: echo\n    with: { n: 1 }\n";
    assert_eq!(s.post_yaml("/workflows", &key, flow).await.status, 201);
    let body = json!({ "workflow": "nightly", "cron": "0 30 2 * * *", "timezone": "Europe/Stockholm" });
    let r = s
        .send(
            "PUT",
            "/schedules/nightly-report",
            Some(&key),
            Some(("application/json", body.to_string().into_bytes())),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let next = r.json["next_firings"][0].as_str().expect("a next firing").to_owned();
    let op = s.key("olga", "operator", "olga");
    let viewer = s.key("vic", "viewer", "vic");
    let (oc, _) = sign_in(&s, &op, false).await;
    let p = with_cookie(&s, "GET", "/ui/schedules", &oc, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert_secure(&p);
    assert!(
        p.html.contains("nightly-report") && p.html.contains("<code>0 30 2 * * *</code> in Europe/Stockholm"),
        "{}",
        p.html
    );
    assert!(p.html.contains(&next) && p.html.contains("active"), "{}", p.html);
    assert!(p.html.contains(r#"<a href="/ui/schedules">Schedules</a>"#), "in the console's navigation: {}", p.html);
    let p = with_cookie(&s, "GET", "/ui/deliveries?status=dead", &oc, None).await;
    assert_eq!(p.status, 200, "{}", p.html);
    assert!(p.html.contains("No delivery here"), "{}", p.html);
    let (vc, _) = sign_in(&s, &viewer, false).await;
    let p = with_cookie(&s, "GET", "/ui/deliveries", &vc, None).await;
    assert_eq!(p.status, 403, "{}", p.html);
    let p = with_cookie(&s, "GET", "/ui/schedules", "", None).await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some("/ui/sign-in?next=%2Fui%2Fschedules")));
}

on_both!(
    people_answer_from_their_links,
    an_expired_link_says_so,
    the_console_signs_in_and_shows_runs,
    the_console_plans_a_resume_before_it_runs,
    the_console_lists_workflows_and_starts_runs,
    the_console_draws_parallel_branches_and_map_items,
    the_console_shows_caught_errors_and_skips,
    the_console_draws_a_dag_in_rows_by_dependency,
    an_approver_gives_the_approvals_fields_on_the_page,
    the_console_lists_schedules_and_deliveries,
);
