/* The feature browser: find features by id, token, text or density; show one's dashboard. */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const fmt = saescopeDashboard.fmt;

  function showError(e) { $("error").textContent = e ? String(e.message || e) : ""; }

  async function openFeature(id, push) {
    showError(null);
    try {
      const f = await saescope.api(`/api/features/${encodeURIComponent(id)}?${saescope.query()}`);
      renderFeature($("dashboard"), f, { onFeature: (j) => openFeature(j, true) });
      $("steer-link").hidden = false;
      $("steer-link").firstElementChild.href =
        `steer.html?${saescope.query({ feature: f.id, value: Math.ceil(2 * f.max_act) || 10 })}`;
      if (push) history.pushState({ feature: f.id }, "", `?${saescope.query({ feature: f.id })}`);
      document.title = `saescope explore: feature ${f.id}`;
    } catch (e) { showError(e); }
  }

  function table(rows, columns) {
    const t = document.createElement("table");
    t.className = "list";
    const head = t.insertRow();
    for (const c of ["feature", ...columns]) {
      const th = document.createElement("th");
      th.textContent = c;
      head.append(th);
    }
    for (const r of rows) {
      const tr = t.insertRow();
      tr.className = "pick";
      tr.dataset.feature = r.feature;
      tr.addEventListener("click", () => openFeature(r.feature, true));
      tr.insertCell().textContent = `#${r.feature}`;
      for (const c of columns) {
        const v = r[c];
        tr.insertCell().textContent = typeof v === "number" && !Number.isInteger(v) ? fmt(v, 4) : v;
      }
    }
    return t;
  }

  async function search(params, columns) {
    showError(null);
    try {
      const q = new URLSearchParams(saescope.query(params));
      const got = await saescope.api(`/api/search?${q}`);
      const box = $("results");
      box.replaceChildren();
      if (!got.results.length) box.textContent = "no features found";
      else box.append(table(got.results, columns));
    } catch (e) { showError(e); }
  }

  $("find").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const by = $("by").value, q = $("query").value;
    if (by === "id") openFeature(q.trim(), true);
    else if (by === "token") search({ token: q }, ["count", "mean_act", "density"]);
    else search({ text: q }, ["count", "density"]);
  });
  $("browse").addEventListener("click", () => {
    const p = { order: $("order").value, descending: $("descending").value, limit: 50 };
    if ($("lo").value !== "") p.lo = $("lo").value;
    if ($("hi").value !== "") p.hi = $("hi").value;
    search(p, ["density", "max_act"]);
  });
  window.addEventListener("popstate", () => {
    const id = new URLSearchParams(location.search).get("feature");
    if (id !== null) openFeature(id, false);
  });

  saescope.setup(() => { $("results").replaceChildren(); $("dashboard").replaceChildren(); })
    .then(() => {
      const id = new URLSearchParams(location.search).get("feature");
      if (id !== null) openFeature(id, false);
    })
    .catch(showError);
})();
