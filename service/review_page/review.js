// The reviewer's page: claim one item at a time, keyboard verdicts, undo, stats. No dependencies.
// The token and name are kept in sessionStorage (this tab only); the image is fetched with the
// token and shown through a blob: URL, so nothing on the page needs credentials in a URL.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const store = window.sessionStorage;
  let token = store.getItem("review.token") || "";
  let reviewer = store.getItem("review.reviewer") || "";
  let domain = store.getItem("review.domain") || "";
  let current = null;       // the item on screen
  let picked = false;       // a choice was made for it
  let choice = null;        // label name or null (none / benign)
  let unsafe = false;
  const done = [];          // ids this page gave verdicts to, most recent last: what z undoes
  const held = [];          // items claimed but set aside by an undo, shown again next
  let labelsByDomain = {};  // from /domains: the bundle's label order, stable across items
  let imageUrl = null;

  function setStatus(text, error) {
    const s = $("status");
    s.textContent = text;
    s.className = error ? "error" : "";
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + token };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (r.status === 401 || r.status === 403) {
      const e = await r.json().catch(() => ({}));
      store.removeItem("review.token");
      token = "";
      showLogin(e.error ? e.error.message : "the token was refused");
      throw new Error("auth");
    }
    if (!r.ok) {
      const e = await r.json().catch(() => ({}));
      throw new Error(e.error ? e.error.code + ": " + e.error.message : "HTTP " + r.status);
    }
    return r;
  }

  function showLogin(message) {
    $("login").hidden = false;
    $("queue").hidden = true;
    $("stats").hidden = true;
    $("reviewer").value = reviewer;
    $("domain-filter").value = domain;
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  async function loadDomains() {
    try {
      const r = await fetch("/domains");
      if (!r.ok) return;
      const body = await r.json();
      labelsByDomain = {};
      for (const d of body.domains) labelsByDomain[d.domain] = d.labels.map((l) => ({ name: l.name, unsafe: l.unsafe }));
    } catch (e) { /* the answer's own labels are used instead */ }
  }

  function labelsOf(item) {
    const served = labelsByDomain[item.domain];
    if (served) return served;
    return item.answer.labels.map((l) => ({ name: l.label, unsafe: l.unsafe }))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  async function refreshLeft() {
    try {
      const stats = await (await api("GET", "/review/stats")).json();
      let n = 0;
      for (const [d, s] of Object.entries(stats.domains)) if (!domain || d === domain) n += s.pending;
      $("left").textContent = n + " left" + (domain ? " in " + domain : "");
      $("left").dataset.left = String(n);
    } catch (e) { /* shown by the next call */ }
  }

  async function next() {
    let item = held.shift();
    if (!item) {
      const q = "/review/claim?limit=1&reviewer=" + encodeURIComponent(reviewer) +
        (domain ? "&domain=" + encodeURIComponent(domain) : "");
      const body = await (await api("POST", q)).json();
      item = body.items[0];
    }
    await show(item || null);
    refreshLeft();
  }

  async function show(item) {
    current = item;
    picked = false; choice = null; unsafe = false;
    $("empty").hidden = !!item;
    $("viewer").hidden = !item;
    document.querySelector("#queue aside").hidden = !item;
    $("queue").dataset.itemId = item ? item.id : "";
    if (imageUrl) { URL.revokeObjectURL(imageUrl); imageUrl = null; }
    if (!item) return;
    const a = item.answer;
    $("item-domain").textContent = item.domain;
    $("item-version").textContent = item.version;
    $("item-reason").textContent = "reason: " + item.reason;
    const d = $("decision");
    if (a.flagged) { d.textContent = "Model: flagged"; d.className = "flagged"; }
    else if (a.out_of_scope) { d.textContent = "Model: out of scope"; d.className = "review"; }
    else if (a.needs_review) { d.textContent = "Model: needs review"; d.className = "review"; }
    else { d.textContent = "Model: not flagged"; d.className = ""; }
    d.textContent += a.top_label ? " (top label " + a.top_label + ")" : "";
    const tbody = document.querySelector("#top-labels tbody");
    tbody.replaceChildren();
    for (const l of a.labels.slice(0, 5)) {
      const tr = document.createElement("tr");
      for (const v of [l.label + (l.unsafe ? " (unsafe)" : ""), l.probability.toFixed(3), l.unsafe ? l.threshold.toFixed(3) : ""]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      if (l.flagged) tr.className = "flagged";
      tbody.appendChild(tr);
    }
    renderChoices();
    if (item.image_available === false) { $("image").removeAttribute("src"); setStatus("image purged by retention"); return; }
    const r = await api("GET", "/review/items/" + encodeURIComponent(item.id) + "/image");
    imageUrl = URL.createObjectURL(await r.blob());
    $("image").src = imageUrl;
    setStatus("");
  }

  function renderChoices() {
    const ol = $("choices");
    ol.replaceChildren();
    const labels = current ? labelsOf(current) : [];
    const rows = [{ name: null, text: "none of them / benign", unsafe: false }]
      .concat(labels.slice(0, 9).map((l) => ({ name: l.name, text: l.name, unsafe: l.unsafe })));
    rows.forEach((row, i) => {
      const li = document.createElement("li");
      li.value = i;
      li.textContent = row.text + (row.unsafe ? " (unsafe)" : "");
      if (row.unsafe) li.classList.add("unsafe-label");
      if (picked && choice === row.name) li.classList.add("selected");
      li.dataset.key = String(i);
      ol.appendChild(li);
    });
    $("unsafe").textContent = unsafe ? "yes" : "no";
  }

  function pick(i) {
    if (!current) return;
    const labels = labelsOf(current);
    if (i === 0) { choice = null; unsafe = false; }
    else if (i <= Math.min(labels.length, 9)) { choice = labels[i - 1].name; unsafe = labels[i - 1].unsafe; }
    else return;
    picked = true;
    renderChoices();
    setStatus("Enter submits");
  }

  async function submit() {
    if (!current) return;
    if (!picked) { setStatus("pick a label (1-9) or 0 first", true); return; }
    const id = current.id;
    await api("POST", "/review/items/" + encodeURIComponent(id) + "/verdict", { label: choice, unsafe, reviewer });
    done.push(id);
    await next();
    setStatus("saved verdict on " + id.slice(0, 8));
  }

  async function undo() {
    const id = done.pop();
    if (!id) { setStatus("nothing to undo", true); return; }
    const body = await (await api("DELETE", "/review/items/" + encodeURIComponent(id) +
      "/verdict?reviewer=" + encodeURIComponent(reviewer))).json();
    if (current) held.unshift(current);  // still claimed by us: shown again after this one
    await show(body);
    refreshLeft();
    setStatus("verdict withdrawn; pick again");
  }

  function pct(r) {
    return r.rate === null ? "n/a" : (100 * r.rate).toFixed(1) + "% [" + (100 * r.lo).toFixed(1) + ", " + (100 * r.hi).toFixed(1) + "]";
  }

  function table(head, rows) {
    const t = document.createElement("table");
    const tr = document.createElement("tr");
    for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); }
    t.appendChild(tr);
    for (const row of rows) {
      const r = document.createElement("tr");
      for (const v of row) { const td = document.createElement("td"); td.textContent = v; r.appendChild(td); }
      t.appendChild(r);
    }
    return t;
  }

  async function showStats() {
    const stats = await (await api("GET", "/review/stats")).json();
    const out = $("stats-body");
    out.replaceChildren();
    const fmt = (x) => (x === null ? "n/a" : (100 * x).toFixed(1) + "%");
    out.appendChild(table(["domain", "pending", "decided", "agreement", "audited", "false flags", "misses"],
      Object.entries(stats.domains).map(([d, s]) => [d, s.pending, s.decided, fmt(s.agreement), s.audit.n,
        pct(s.audit.false_flag), pct(s.audit.miss)])));
    for (const [d, s] of Object.entries(stats.domains)) {
      const div = document.createElement("div");
      div.className = "stats-domain";
      const h = document.createElement("h2");
      h.textContent = d + ": per label";
      div.appendChild(h);
      div.appendChild(table(["label", "reviewer said", "model said", "both", "recall", "precision"],
        Object.entries(s.labels).map(([l, v]) => [l, v.reviewer, v.model, v.both, fmt(v.recall), fmt(v.precision)])));
      out.appendChild(div);
    }
  }

  async function route() {
    if (!token || !reviewer) { showLogin(); return; }
    $("login").hidden = true;
    $("who").textContent = reviewer;
    const stats = location.hash === "#stats";
    $("stats").hidden = !stats;
    $("queue").hidden = stats;
    try {
      if (stats) await showStats();
      else if (!current) await next();
    } catch (e) { if (e.message !== "auth") setStatus(e.message, true); }
  }

  document.addEventListener("keydown", async (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    if ($("queue").hidden) return;
    try {
      if (e.key >= "0" && e.key <= "9") { pick(Number(e.key)); e.preventDefault(); }
      else if (e.key === "Enter") { e.preventDefault(); await submit(); }
      else if (e.key === "z") await undo();
      else if (e.key === "u" && current) { unsafe = !unsafe; picked = picked || false; renderChoices(); }
      else if (e.key === "r" && !current) await next();
    } catch (err) { if (err.message !== "auth") setStatus(err.message, true); }
  });

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    reviewer = $("reviewer").value.trim();
    domain = $("domain-filter").value;
    store.setItem("review.token", token);
    store.setItem("review.reviewer", reviewer);
    store.setItem("review.domain", domain);
    $("token").value = "";
    route();
  });
  window.addEventListener("hashchange", route);
  loadDomains().then(route);
})();
