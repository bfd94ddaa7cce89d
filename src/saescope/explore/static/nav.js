/* Shared by every page: the nav bar, the run picker (run and SAE, kept in the URL and in
   localStorage) and api(), a fetch of the JSON API that throws the server's one-line message. */
(function (root) {
  "use strict";
  const PAGES = [["index.html", "Features"], ["prompt.html", "Prompt"], ["steer.html", "Steering"],
                 ["disentangler.html", "Disentangler"], ["sparsity.html", "Sparsity"]];

  async function api(path, body) {
    const init = body === undefined ? {} : {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
    const r = await fetch(path, init);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) throw new Error((data && data.detail) || `${r.status} ${r.statusText}`);
    return data;
  }

  const here = () => location.pathname.split("/").pop() || "index.html";

  function query(extra) {
    const q = new URLSearchParams();
    if (saescope.run) q.set("run", saescope.run);
    if (saescope.sae) q.set("sae", saescope.sae);
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q.toString();
  }

  /* Builds the nav; resolves once the runs are known. onChange() runs after each pick. */
  async function setup(onChange) {
    const nav = document.createElement("header");
    nav.className = "nav";
    const brand = document.createElement("span");
    brand.className = "brand";
    brand.textContent = "saescope explore";
    nav.append(brand);
    for (const [file, name] of PAGES) {
      const a = document.createElement("a");
      a.href = file;
      a.textContent = name;
      a.dataset.page = file;
      if (file === here()) a.className = "here";
      nav.append(a);
    }
    const label = document.createElement("label");
    label.className = "picker";
    label.textContent = "run ";
    const pick = document.createElement("select");
    pick.id = "run-picker";
    label.append(pick);
    nav.append(label);
    document.body.prepend(nav);

    const runs = await api("/api/runs");
    const url = new URLSearchParams(location.search);
    const saved = JSON.parse(localStorage.getItem("saescope.pick") || "null") || {};
    const want = { run: url.get("run") || saved.run, sae: url.get("sae") || saved.sae };
    let chosen = null;
    for (const r of runs) {
      for (const s of r.saes) {
        const o = document.createElement("option");
        o.value = JSON.stringify({ run: r.name, sae: r.saes.length > 1 ? s.name : null });
        o.textContent = (r.saes.length > 1 ? `${r.name} / ${s.name}` : r.name) +
                        (s.index ? "" : " (not indexed)");
        pick.append(o);
        if (r.name === want.run && (r.saes.length === 1 || s.name === want.sae)) chosen = o.value;
      }
    }
    if (chosen) pick.value = chosen;
    const apply = () => {
      const v = JSON.parse(pick.value || "{}");
      saescope.run = v.run || null;
      saescope.sae = v.sae || null;
      localStorage.setItem("saescope.pick", pick.value);
      for (const a of nav.querySelectorAll("a[data-page]")) a.href = `${a.dataset.page}?${query()}`;
    };
    apply();
    pick.addEventListener("change", () => { apply(); if (onChange) onChange(); });
    saescope.runs = runs;
    document.body.dataset.ready = "true";  // the runs are known (tests wait for this)
    return runs;
  }

  const saescope = root.saescope || {};
  Object.assign(saescope, { api, setup, query, run: null, sae: null,
    featureUrl: (id) => `index.html?${query({ feature: id })}` });
  root.saescope = saescope;
})(window);
