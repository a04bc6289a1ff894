// The saga console's pages, drawn from its JSON API (/sagas/api/...). Plain DOM: every value from
// the journal goes in as text, never as HTML.
(() => {
  "use strict";
  const body = document.body;
  const base = body.dataset.base;
  const api = `${base}/api`;
  const main = document.getElementById("main");
  const TERMINAL = new Set(["COMPLETED", "COMPENSATED", "FAILED"]);
  const STATES = ["EXECUTING", "COMPENSATING", "FAILED", "COMPENSATED", "COMPLETED", "PENDING"];
  const PAGE = 25;

  // Follow the Airflow UI's colour mode when shown inside it (same origin), else the system's.
  try {
    const parentRoot = window.parent !== window ? window.parent.document.documentElement : null;
    const dark = parentRoot
      ? parentRoot.classList.contains("dark") || parentRoot.style.colorScheme === "dark"
      : window.matchMedia("(prefers-color-scheme: dark)").matches;
    if (dark) document.documentElement.dataset.theme = "dark";
  } catch (e) { /* not same origin: keep light */ }

  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }
  const top = (href, text) => h("a", { href, target: "_top" }, text);  // a page of Airflow's UI
  const badge = (state) => h("span", { class: `badge s-${state}` }, state || "—");
  const dash = "—";

  function when(iso) {
    if (!iso) return dash;
    return new Date(iso).toISOString().replace("T", " ").slice(0, 19);
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return dash;
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
    const s = Math.round(seconds);
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }
  function requester(r) {
    if (!r) return dash;
    const via = { ui: "UI", rest_api: "REST API", cli: "CLI", operator: "operator", timetable: "schedule", test: "test" }[r.via] || r.via;
    return [r.name || dash, via ? h("span", { class: "sub" }, `via ${via}`) : null];
  }

  async function call(url, options) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, ...options });
    if (response.status === 401) { window.location.reload(); throw new Error("signed out"); }
    let payload = null;
    try { payload = await response.json(); } catch (e) { payload = null; }
    if (!response.ok) {
      const detail = payload && payload.detail ? payload.detail : response.statusText;
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return payload;
  }
  function fail(error) {
    main.replaceChildren(h("p", { class: "error-box" }, `Could not load: ${error.message}`));
  }
  function schedule(refresh, ms) {
    setTimeout(() => { if (document.visibilityState === "visible") refresh(); else schedule(refresh, ms); }, ms);
  }

  // ------------------------------------------------------------------ the list
  async function showList() {
    const query = new URLSearchParams(window.location.search);
    const state = query.get("state") || "";
    const offset = Math.max(0, parseInt(query.get("offset") || "0", 10) || 0);
    const params = new URLSearchParams({ limit: PAGE, offset });
    if (state) params.set("state", state);
    let page;
    try { page = await call(`${api}/sagas?${params}`); } catch (e) { fail(e); return; }

    const go = (next) => {
      const q = new URLSearchParams();
      if (next.state) q.set("state", next.state);
      if (next.offset) q.set("offset", next.offset);
      history.replaceState(null, "", `${base}/${q.toString() ? `?${q}` : ""}`);
      showList();
    };
    const all = Object.values(page.counts).reduce((a, b) => a + b, 0);
    const chip = (value, label, n) =>
      h("button", { class: "chip", "aria-pressed": String(state === value), "data-state": value || "ALL",
                    onclick: () => go({ state: value, offset: 0 }) }, label, h("span", { class: "n" }, n.toLocaleString("en")));
    const filters = h("div", { class: "filters", role: "group", "aria-label": "Filter by state" },
      chip("", "All", all),
      STATES.filter((s) => page.counts[s] || s === state).map((s) => chip(s, s.charAt(0) + s.slice(1).toLowerCase(), page.counts[s] || 0)));

    const rows = page.sagas.map((s) =>
      h("tr", { "data-saga-id": s.saga_id, "data-state": s.state },
        h("td", {}, h("a", { class: "project", href: s.links.detail }, s.project || s.saga_name),
          h("span", { class: "sub mono" }, s.saga_id.slice(0, 8))),
        h("td", {}, requester(s.requester)),
        h("td", {}, badge(s.state)),
        h("td", { class: "when" }, when(s.started_at)),
        h("td", { class: "num" }, duration(s.duration_seconds)),
        h("td", { class: "cause" }, s.first_cause || "")));
    const table = rows.length
      ? h("table", { class: "sagas" },
          h("thead", {}, h("tr", {}, ["Project / saga", "Requester", "State", "Started (UTC)", "Duration", "First failure cause"].map((t) => h("th", {}, t)))),
          h("tbody", {}, rows))
      : h("p", { class: "empty" }, state ? `No ${state} saga.` : "No saga yet: a run of dbt_project_create starts one.");
    const last = Math.min(offset + page.sagas.length, page.total_entries);
    const pager = h("div", { class: "pager" },
      h("span", {}, page.total_entries ? `${(offset + 1).toLocaleString("en")}–${last.toLocaleString("en")} of ${page.total_entries.toLocaleString("en")}` : ""),
      h("span", {},
        h("button", { disabled: offset === 0, onclick: () => go({ state, offset: Math.max(0, offset - PAGE) }) }, "← Newer"), " ",
        h("button", { disabled: last >= page.total_entries, onclick: () => go({ state, offset: offset + PAGE }) }, "Older →")));
    main.replaceChildren(filters, table, pager);
    if (page.sagas.some((s) => !TERMINAL.has(s.state))) schedule(showList, 10000);
  }

  // ------------------------------------------------------------------ one saga
  async function showSaga() {
    const id = body.dataset.sagaId;
    let s;
    try { s = await call(`${api}/sagas/${encodeURIComponent(id)}`); } catch (e) { fail(e); return; }
    const parts = [
      h("div", { class: "crumbs" }, body.classList.contains("embedded")
        ? top(`${body.dataset.uiBase}/plugin/sagas`, "All sagas ↗")  // in a DAG run's tab: open the Sagas view
        : h("a", { href: `${base}/` }, "← All sagas")),
      h("div", { class: "title" }, h("h2", {}, s.project || s.saga_name), badge(s.state)),
      h("p", { class: "ids" }, "saga ", h("code", {}, s.saga_id), " · ", s.saga_name, " · run ",
        top(s.links.run, s.run_id), s.run_state ? ` (${s.run_state})` : ""),
      h("dl", { class: "facts" },
        fact("Requester", requester(s.requester)),
        fact("Started (UTC)", when(s.started_at)),
        fact("Finished (UTC)", when(s.finished_at)),
        fact("Duration", duration(s.duration_seconds)),
        fact("Idempotency key", s.idempotency_key || dash),
        fact("DAG run", top(s.links.run, "open in Airflow ↗"))),
    ];
    if (s.first_cause) parts.push(h("div", { class: "cause-box" }, h("strong", {}, "First failure cause: "), s.first_cause));
    parts.push(redrivePanel(s));
    parts.push(h("h2", {}, "Timeline"), timelineTable(s));
    parts.push(h("h2", {}, "Resources"), resourcesTable(s.resources));
    parts.push(h("h2", {}, "Request"), h("pre", { class: "json" }, JSON.stringify(s.request, null, 2)));
    if (s.redrive.requests.length) parts.push(h("h2", {}, "Re-drives"), redrivesTable(s.redrive.requests));
    if (s.duplicate_requests.length) {
      parts.push(h("h2", {}, "Duplicate requests (same idempotency key)"),
        h("ul", {}, s.duplicate_requests.map((d) => h("li", {}, top(d.link, d.run_id), ` at ${when(d.at)}`))));
    }
    parts.push(h("details", {}, h("summary", {}, `Events (${s.events.length})`), eventsTable(s.events)));
    main.replaceChildren(...parts.filter(Boolean));
    if (!TERMINAL.has(s.state) || s.redrive.in_progress) schedule(showSaga, 3000);
  }
  const fact = (label, value) => [h("div", {}, h("dt", {}, label), h("dd", {}, value))];

  function timelineTable(s) {
    const rows = s.timeline.map((t) => {
      const undo = t.kind === "compensation";
      return h("tr", { class: t.state === "PENDING" ? "dim" : null, "data-step": t.step, "data-kind": t.kind, "data-state": t.state },
        h("td", { class: "num" }, t.position),
        h("td", {}, h("code", {}, t.step)),
        h("td", {}, h("span", { class: `phase${undo ? " undo" : ""}` }, undo ? "↩ compensation" : "→ forward")),
        h("td", {}, t.state === "PENDING" ? h("span", { class: "sub" }, "not run") : badge(t.state)),
        h("td", { class: "num" }, t.state === "PENDING" ? "" : t.attempts),
        h("td", { class: "when" }, when(t.started_at)),
        h("td", { class: "num" }, duration(t.duration_seconds)),
        h("td", { class: "err" }, t.error || ""),
        h("td", {}, t.log ? top(t.log.href || t.log, t.log.label || "log") : ""));
    });
    return h("table", { class: "timeline" },
      h("thead", {}, h("tr", {}, ["#", "Step", "Phase", "State", "Attempts", "Started (UTC)", "Duration", "Error", "Log"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows));
  }

  function resourcesTable(resources) {
    if (!resources.length) return h("p", { class: "empty" }, "No step recorded a resource.");
    return h("table", { class: "resources" },
      h("thead", {}, h("tr", {}, ["Kind", "Name", "Made by", "Now"].map((c) => h("th", {}, c)))),
      h("tbody", {}, resources.map((r) =>
        h("tr", { "data-status": r.status },
          h("td", {}, r.kind), h("td", {}, h("code", {}, r.name)), h("td", {}, h("code", {}, r.step)),
          h("td", {}, r.status)))));
  }

  function redrivesTable(requests) {
    return h("table", { class: "redrives" },
      h("thead", {}, h("tr", {}, ["Asked for (UTC)", "By", "Recovery run", "Run state"].map((c) => h("th", {}, c)))),
      h("tbody", {}, requests.map((r) =>
        h("tr", {}, h("td", { class: "when" }, when(r.at)), h("td", {}, r.requested_by || dash),
          h("td", {}, r.link ? top(r.link, r.recovery_run_id) : dash), h("td", {}, r.recovery_run_state || dash)))));
  }

  function eventsTable(events) {
    return h("table", { class: "events" },
      h("thead", {}, h("tr", {}, ["At (UTC)", "Step", "Event", "Detail"].map((c) => h("th", {}, c)))),
      h("tbody", {}, events.map((e) =>
        h("tr", {}, h("td", { class: "when" }, when(e.at)), h("td", {}, e.step ? h("code", {}, e.step) : ""),
          h("td", {}, e.event), h("td", { class: "mono" }, e.detail ? JSON.stringify(e.detail) : "")))));
  }

  function redrivePanel(s) {
    const r = s.redrive;
    if (r.in_progress) {
      return h("div", { class: "ok-box" }, `Re-drive asked for by ${r.in_progress.requested_by}: `,
        top(r.in_progress.link, `${r.in_progress.recovery_dag_id} run ${r.in_progress.recovery_run_id}`),
        ` is ${r.in_progress.recovery_run_state}. This page follows it.`);
    }
    if (!r.possible) return null;
    const retry = r.compensations_to_retry.length ? r.compensations_to_retry.join(", ") : "the remaining ones";
    const text = h("p", {}, h("strong", {}, "A compensation failed for good. "),
      "Once its cause is fixed, re-drive the remaining compensations (", h("code", {}, retry), ").");
    if (!r.allowed) {
      return h("div", { class: "redrive" }, text,
        h("p", { class: "sub" }, "You may not re-drive: it takes the right to trigger this DAG and saga_recovery."));
    }
    const dialog = h("dialog", { class: "confirm", "aria-labelledby": "redrive-title" },
      h("h3", { id: "redrive-title" }, "Re-drive this saga?"),
      h("p", {}, "This triggers ", h("code", {}, "saga_recovery"), " with ", h("code", {}, `{"saga_id": "${s.saga_id}"}`),
        ": it retries the compensations of ", h("code", {}, retry), " and leaves everything already undone as it is."),
      h("p", { class: "sub" }, "It is recorded in the saga's journal under your name."),
      h("form", { method: "dialog" }, h("menu", {},
        h("button", { class: "btn", value: "cancel" }, "Cancel"),
        h("button", { class: "btn danger", value: "confirm" }, "Re-drive"))));
    const button = h("button", { class: "btn danger", onclick: () => dialog.showModal() }, "Re-drive compensations…");
    dialog.addEventListener("close", async () => {
      if (dialog.returnValue !== "confirm") return;
      button.disabled = true;
      try {
        const started = await call(r.api, { method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" }, body: "{}" });
        const note = started.recovery_dag_paused ? " saga_recovery is paused: the run waits until it is unpaused." : "";
        button.replaceWith(h("span", { class: "sub" }, `Re-drive asked for: run ${started.recovery_run_id}.${note}`));
        schedule(showSaga, 1500);
      } catch (e) {
        button.disabled = false;
        button.after(h("p", { class: "error-box" }, `Re-drive refused: ${e.message}`));
      }
    });
    return h("div", { class: "redrive" }, text, button, dialog);
  }

  if (body.dataset.view === "list") showList();
  else if (body.dataset.view === "detail") showSaga();
})();
