/* The Sparsity Explorer's source picker and its language-model view: for a language-model run
   the app serves (an indexed SAE of kind "lm"), POST /api/heatmap gives tokens x the text's most
   active features; a click on a cell shows the feature's top contexts (GET /api/features/{id},
   drawn by dashboard.js) and links to its dashboard. The URL keeps the pick:
   sparsity.html?source=lm&run=R[&sae=S]. Needs seed.js, dashboard.js and sparsity.js. */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const { context, fmt, shown } = saescopeDashboard;
  const CW = 16, CH = 16, TOP = 52;
  let pick = null, seq = 0, clicks = 0, timer = null;

  function showError(e) {
    $("lm-error").textContent = e ? String(e.message || e) : "";
    $("lm-error").hidden = !e;
  }

  function query(extra) {
    const q = new URLSearchParams({ run: pick.run });
    if (pick.sae) q.set("sae", pick.sae);
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q.toString();
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }

  async function describe(data, i, j) {
    const f = data.features[j], t = data.tokens[i], act = data.acts[i][j];
    const mine = ++clicks;
    const title = el("p", { id: "lm-info-title" }, act > 0
      ? `Feature #${f.feature} fires at ${fmt(act)} on ${JSON.stringify(t.token)} (token ${i}); ` +
        `its largest activation on this text is ${fmt(f.max)}, on ${f.count} token(s).`
      : `Feature #${f.feature} is silent on ${JSON.stringify(t.token)} (token ${i}).`);
    const link = el("a", { id: "info-browser", href: `index.html?${query({ feature: f.feature })}` },
      `Open #${f.feature}'s dashboard in the feature browser`);
    const box = el("div", { id: "lm-contexts", class: "sae-dash" }, "loading its top contexts...");
    const line = el("p");
    line.append(link);
    $("lm-info").replaceChildren(title, line, box);
    try {
      const feat = await saescope.api(`/api/features/${f.feature}?${query()}`);
      if (mine !== clicks) return;
      const max = feat.max_act || Math.max(0, ...(feat.top || []).map((e) => e.max));
      const top = (feat.top || []).map((ex) => context(ex, max));
      box.replaceChildren(el("h3", {}, `Top contexts of #${feat.id} (density ${fmt(feat.density, 5)})`),
        ...(top.length ? top : [el("div", { class: "none" }, "it never fired in the indexed text")]));
    } catch (e) {
      if (mine === clicks) box.textContent = `no top contexts: ${e.message}`;
    }
  }

  function draw(data) {
    const svg = $("lm-heatmap");
    svg.replaceChildren();
    const labels = data.tokens.map((t) => shown(t.token).slice(0, 16));
    const left = 16 + 7 * Math.max(4, ...labels.map((l) => l.length));
    const nf = data.features.length, nt = data.tokens.length;
    const width = left + nf * CW + 40, height = TOP + nt * CH + 10;
    for (const [k, v] of Object.entries({ width, height, viewBox: `0 0 ${width} ${height}` })) svg.setAttribute(k, v);
    data.features.forEach((f, j) => {
      const x = left + j * CW + CW / 2, y = TOP - 6;
      seedSvg("text", { x, y, transform: `rotate(-60 ${x} ${y})` }, svg).textContent = `#${f.feature}`;
    });
    data.tokens.forEach((t, i) => {
      const label = seedSvg("text", { x: left - 6, y: TOP + i * CH + CH - 4, "text-anchor": "end",
        class: "tok" + (t.skipped ? " skipped" : "") }, svg);
      label.textContent = labels[i];
      seedSvg("title", {}, label).textContent = t.skipped ? `not encoded (${t.skipped})` : JSON.stringify(t.token);
    });
    const scale = data.max > 0 ? data.max : 1;
    let selected = null;
    data.acts.forEach((row, i) => row.forEach((v, j) => {
      const id = data.features[j].feature;
      const r = seedSvg("rect", { class: "cell", x: left + j * CW, y: TOP + i * CH, width: CW - 1,
        height: CH - 1, fill: seedColor(v / scale), "data-row": i, "data-col": j, "data-act": v,
        "data-feature": id }, svg);
      seedSvg("title", {}, r).textContent = `#${id} on ${JSON.stringify(data.tokens[i].token)}: ${fmt(v)}`;
      r.addEventListener("click", () => {
        if (selected) selected.classList.remove("selected");
        r.classList.add("selected");
        selected = r;
        describe(data, i, j);
      });
    }));
  }

  async function run() {
    if (!pick) return;
    const mine = ++seq;
    showError(null);
    $("lm-status").textContent = "running...";
    try {
      const data = await saescope.api("/api/heatmap", { run: pick.run, sae: pick.sae,
        text: $("lm-text").value, columns: Number($("lm-columns").value) || 32 });
      if (mine !== seq) return;
      draw(data);
      $("lm-info").textContent = data.features.length ? "Click a cell." : "No feature fires on this text.";
      $("lm-status").textContent = `${data.tokens.length} tokens × ${data.features.length} features`;
      $("lm-view").dataset.ready = "true";  // tests wait for this
    } catch (e) {
      if (mine === seq) { showError(e); $("lm-status").textContent = ""; }
    }
  }

  function choose(value) {
    const lm = value !== "seed";
    $("seed-view").hidden = lm;
    $("lm-view").hidden = !lm;
    pick = lm ? JSON.parse(value) : null;
    const q = lm ? `?source=lm&${query()}` : "?source=seed";
    history.replaceState(null, "", q);
    if (lm) run();
  }

  async function start() {
    const runs = (await (saescope.ready || Promise.resolve(null))) || [];
    const source = $("source");
    for (const r of runs) {
      for (const s of r.saes.filter((x) => x.index && x.index.kind === "lm")) {
        const o = el("option", {}, `${r.saes.length > 1 ? `${r.name} / ${s.name}` : r.name} (language model ${s.index.model})`);
        o.value = JSON.stringify({ run: r.name, sae: r.saes.length > 1 ? s.name : null });
        source.append(o);
      }
    }
    const url = new URLSearchParams(location.search);
    if (url.get("source") === "lm") {
      const opts = [...source.options].slice(1);
      const want = opts.find((o) => { const v = JSON.parse(o.value);
        return v.run === url.get("run") && (!v.sae || v.sae === url.get("sae")); }) || opts[0];
      if (want) { source.value = want.value; choose(want.value); }
    }
    source.addEventListener("change", () => choose(source.value));
  }

  $("lm-go").addEventListener("click", run);
  $("lm-text").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(run, 500); });
  start().catch(showError);
})();
