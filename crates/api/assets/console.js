// Cairn's console: live updates of a run's page (progressive: the page is
// whole without this file). Follows /ui/runs/{id}/live (server-sent events):
// each new event is added to the timeline at once, and the status, the
// graph and the actions are fetched again shortly after (one fetch for a
// burst of events). CAIRN_EVENT_TYPES, the catalog's event names, is
// written in front of this file by the server.
(() => {
  "use strict";
  const root = document.getElementById("live");
  if (!root || !window.EventSource) return;
  const timeline = document.getElementById("timeline");
  const count = document.getElementById("event-count");
  let after = Number(root.dataset.after || "0");
  let timer = null;
  const refresh = async () => {
    try {
      const r = await fetch(window.location.href, { credentials: "same-origin", cache: "no-store" });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      for (const id of ["run-head", "run-steps", "run-actions"]) {
        const now = document.getElementById(id);
        const next = doc.getElementById(id);
        if (now && next) now.replaceWith(document.importNode(next, true));
      }
    } catch (_) {
      // The next event tries again.
    }
  };
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  };
  const add = (msg) => {
    let ev;
    try {
      ev = JSON.parse(msg.data);
    } catch (_) {
      return;
    }
    if (ev.stream_version <= after) return;
    after = ev.stream_version;
    const li = document.createElement("li");
    const v = document.createElement("span");
    v.className = "v";
    v.textContent = String(ev.stream_version);
    const t = document.createElement("time");
    t.textContent = ev.recorded_at;
    const name = document.createElement("strong");
    name.textContent = ev.event_type;
    li.append(v, " ", t, " ", name);
    const step = ev.payload && ev.payload.step_id;
    if (step) {
      const c = document.createElement("code");
      c.textContent = step;
      li.append(" ", c);
    }
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "payload";
    const pre = document.createElement("pre");
    pre.tabIndex = 0;
    pre.textContent = JSON.stringify(ev.payload, null, 2);
    details.append(summary, pre);
    li.append(details);
    li.className = "new";
    if (timeline) timeline.append(li);
    if (count) count.textContent = String(after);
    later();
  };
  const source = new EventSource(root.dataset.stream + "?after=" + after);
  for (const type of CAIRN_EVENT_TYPES) source.addEventListener(type, add);
  source.addEventListener("end", () => {
    source.close();
    later();
  });
})();

// The editor: what Check would say, as you type (the Check button still
// works without this).
(() => {
  "use strict";
  const source = document.getElementById("f-source");
  const out = document.getElementById("live-diagnostics");
  if (!source || !out || !window.fetch) return;
  const csrf = source.form && source.form.querySelector("input[name=_csrf]");
  let timer = null;
  let seq = 0;
  const show = (res) => {
    out.textContent = "";
    const p = document.createElement("p");
    if (res.valid) {
      p.className = "notice";
      p.textContent = `No problems: ${res.name} checks.`;
      out.append(p);
      return;
    }
    p.className = "error";
    p.textContent = `${res.diagnostics.length} problem(s):`;
    const ul = document.createElement("ul");
    for (const d of res.diagnostics) {
      const li = document.createElement("li");
      li.textContent = `line ${d.line}, column ${d.column}: ${d.message} (${d.code})` + (d.help ? ` — ${d.help}` : "");
      ul.append(li);
    }
    out.append(p, ul);
  };
  const check = async () => {
    const mine = ++seq;
    const body = new URLSearchParams({ _csrf: csrf ? csrf.value : "", source: source.value });
    try {
      const r = await fetch("/ui/workflows/check", { method: "POST", body, credentials: "same-origin" });
      if (r.ok && mine === seq) show(await r.json());
    } catch (_) {
      // The Check button still works.
    }
  };
  source.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(check, 400);
  });
})();
