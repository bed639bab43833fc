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
