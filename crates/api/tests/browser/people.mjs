// Drives Debian's chromium (playwright-core) through a person's page, as the
// person would: `node people.mjs form|approve URL SHOTS_DIR`. Checks what the
// page shows at each step, runs axe-core on every page (no serious or
// critical violation), saves screenshots into SHOTS_DIR, and exits non-zero
// with the reason on the first thing that is not as it should be.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(process.env.CAIRN_NODE_MODULES + "/");
const { chromium } = require("playwright-core");
const axePath = require.resolve("axe-core/axe.min.js");

const [mode, url, shots] = process.argv.slice(2);
const fail = (msg) => {
  console.error("FAILED: " + msg);
  process.exit(1);
};

async function axe(page, name) {
  await page.addScriptTag({ path: axePath });
  const r = await page.evaluate(async () => await globalThis.axe.run(document, { resultTypes: ["violations"] }));
  const bad = r.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) {
    fail(`${name}: accessibility violations: ` + bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target).join(", ")}`).join("; "));
  }
  console.log(`${name}: axe found no serious or critical violation (${r.violations.length} minor)`);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

const browser = await chromium.launch({
  executablePath: process.env.CAIRN_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
// axe is injected as a script, which the pages' CSP (rightly) forbids.
const context = await browser.newContext({ bypassCSP: true });
const page = await context.newPage();
try {
  const res = await page.goto(url);
  if (res.status() !== 200) fail(`GET ${url}: ${res.status()}`);
  if (mode === "form") {
    await page.getByRole("heading", { name: /Brief for the launch post/ }).waitFor();
    await axe(page, "form");
    await shot(page, "1-form");
    // A wrong value: the server says what is wrong beside the field and keeps what was typed.
    await page.getByLabel("Topic").fill("ab");
    await page.getByLabel("words").fill("5000");
    await page.getByRole("button", { name: "Submit" }).click();
    await page.locator("#f-topic-error").waitFor();
    const err = await page.locator("#f-topic-error").innerText();
    if (!/at least 3/.test(err)) fail(`the topic's error says: ${err}`);
    if ((await page.getByLabel("Topic").inputValue()) !== "ab") fail("what was typed in Topic was not kept");
    if ((await page.getByLabel("words").inputValue()) !== "5000") fail("what was typed in words was not kept");
    await axe(page, "form with errors");
    await shot(page, "2-form-errors");
    // Fixed: recorded, and the page confirms it.
    await page.getByLabel("Topic").fill("Launch of Cairn 1.0");
    await page.getByLabel("words").fill("800");
    await page.getByLabel("blog").check();
    await page.getByLabel("No").check();
    await page.getByRole("button", { name: "Submit" }).click();
    await page.getByRole("heading", { name: /your answer is recorded/ }).waitFor();
    await axe(page, "form confirmation");
    await shot(page, "3-form-recorded");
  } else if (mode === "approve") {
    await page.getByRole("heading", { name: /Approval needed/ }).waitFor();
    const table = await page.locator("section.content table").innerText();
    if (!table.includes("Launch of Cairn 1.0")) fail(`the content shown is: ${table}`);
    // The AI draft is formatted: its heading and its list, not Markdown marks.
    const heading = await page.locator("section.content .draft h3").innerText();
    if (heading !== "Cairn 1.0 is out") fail(`the draft's heading is: ${heading}`);
    const items = await page.locator("section.content .draft li").count();
    if (items !== 2) fail(`the draft's list has ${items} items`);
    await axe(page, "approval");
    await shot(page, "4-approval");
    await page.getByLabel(/Comment/).fill("Looks right to me");
    await page.getByRole("button", { name: "Approve" }).click();
    await page.getByRole("heading", { name: /your decision is recorded/ }).waitFor();
    const text = await page.locator("main").innerText();
    if (!text.includes("Looks right to me")) fail(`the confirmation says: ${text}`);
    await axe(page, "approval confirmation");
    await shot(page, "5-approval-recorded");
  } else if (mode === "console") {
    // URL is the sign-in page; the key comes from CAIRN_KEY.
    await page.getByRole("heading", { name: "Sign in" }).waitFor();
    await axe(page, "sign-in");
    await page.getByLabel("API key").fill(process.env.CAIRN_KEY || "");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Inbox" }).waitFor();
    if (!(await page.locator("main").innerText()).includes("Brief for the launch post")) fail("the inbox does not show the form");
    await axe(page, "inbox");
    await shot(page, "0-inbox");
    // The editor says what is wrong as you type.
    await page.getByRole("link", { name: "Workflows" }).click();
    await page.getByRole("link", { name: "Author a workflow" }).click();
    await page.getByLabel("Definition (YAML)").fill("name: typed\nsteps:\n  - id: one\n    task: no_such_task\n");
    await page.locator("#live-diagnostics li", { hasText: "line 4, column" }).waitFor({ timeout: 10000 });
    await page.getByLabel("Definition (YAML)").fill("name: typed\nsteps:\n  - id: one\n    task: echo\n");
    await page.locator("#live-diagnostics", { hasText: "No problems" }).waitFor({ timeout: 10000 });
    await axe(page, "editor");
    await shot(page, "0-editor");
    await page.getByRole("link", { name: "Runs" }).click();
    await page.getByRole("heading", { name: "Runs" }).waitFor();
    await axe(page, "runs");
    await page.getByRole("link", { name: "Costs" }).click();
    await page.getByRole("heading", { name: "Costs" }).waitFor();
    await axe(page, "costs");
    await page.getByRole("link", { name: "Workflows" }).click();
    await page.getByRole("heading", { name: "Workflows" }).waitFor();
    await axe(page, "workflows");
    await page.getByRole("link", { name: "launch" }).click();
    await page.getByRole("heading", { name: /Workflow launch/ }).waitFor();
    await axe(page, "workflow");
    await page.getByRole("link", { name: "Runs" }).click();
    await page.getByRole("heading", { name: "Runs" }).waitFor();
    await page.locator("table a").first().click();
    await page.getByRole("heading", { name: /^Run / }).waitFor();
    if (!(await page.locator(".timeline").innerText()).includes("InputRequested")) fail("the timeline lacks InputRequested");
    await axe(page, "run");
    await shot(page, "0-run");
    // Answer from the inbox: the same page as the e-mail's link.
    await page.getByRole("link", { name: "Inbox" }).click();
    await page.getByRole("link", { name: "Answer" }).first().click();
    await page.getByRole("heading", { name: /Brief for the launch post/ }).waitFor();
  } else if (mode === "resume") {
    // URL is the sign-in page leading to a failed run; the key (an operator's) from CAIRN_KEY.
    await page.getByLabel("API key").fill(process.env.CAIRN_KEY || "");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: /^Run / }).waitFor();
    await page.getByRole("button", { name: "Plan a resume" }).click();
    await page.getByRole("heading", { name: /Resume plan/ }).waitFor();
    const plan = await page.locator("table.plan").innerText();
    if (!/publish[\s\S]*rerun/.test(plan) || !/draft[\s\S]*kept/.test(plan)) fail(`the plan shown is: ${plan}`);
    await axe(page, "resume plan");
    await shot(page, "6-resume-plan");
    await page.getByLabel(/Reason/).fill("the CMS is back");
    await page.getByRole("button", { name: "Resume as planned" }).click();
    await page.getByRole("heading", { name: /^Run / }).waitFor();
    await shot(page, "7-resumed");
  } else if (mode === "live") {
    // URL is the sign-in page leading to a waiting run's page; the test
    // answers the run's form once this prints "ready", and the page must
    // show it without a reload: the timeline and the graph.
    await page.getByLabel("API key").fill(process.env.CAIRN_KEY || "");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: /^Run / }).waitFor();
    await page.locator("g.node.state-waiting", { hasText: "brief" }).waitFor();
    await axe(page, "run page");
    const loads = [];
    page.on("load", () => loads.push(Date.now()));
    console.log("ready");
    await page.locator("#timeline li", { hasText: "InputSubmitted" }).waitFor({ timeout: 20000 });
    await page.locator("g.node.state-completed", { hasText: "brief" }).waitFor({ timeout: 20000 });
    await page.locator("g.node.state-waiting", { hasText: "review" }).waitFor({ timeout: 20000 });
    if (loads.length) fail("the page was reloaded instead of updated in place");
    await axe(page, "run page, updated live");
    await shot(page, "8-live");
  } else {
    fail(`unknown mode ${mode}`);
  }
} catch (e) {
  await shot(page, `failed-${mode}`).catch(() => {});
  fail(String(e && e.stack ? e.stack : e));
} finally {
  await browser.close();
}
console.log(`${mode}: ok`);
