/* The prompt view: one forward pass per text (POST /api/prompt), each token shaded by its
   strongest feature; a token's features and the text's features open their dashboards. */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const { shade, fmt, shown } = saescopeDashboard;
  let result = null, timer = null, seq = 0;

  function showError(e) { $("error").textContent = e ? String(e.message || e) : ""; }

  async function openFeature(id) {
    showError(null);
    try {
      const f = await saescope.api(`/api/features/${id}?${saescope.query()}`);
      renderFeature($("dashboard"), f, { onFeature: openFeature });
      $("dashboard").scrollIntoView({ behavior: "instant", block: "start" });
    } catch (e) { showError(e); }
  }

  function chip(feature, value) {
    const c = document.createElement("span");
    c.className = "chip";
    c.dataset.feature = feature;
    c.textContent = `#${feature} ${fmt(value, 2)}`;
    c.addEventListener("click", () => openFeature(feature));
    return c;
  }

  function selectToken(i) {
    const t = result.tokens[i];
    for (const s of $("tokens").children) s.classList.toggle("on", Number(s.dataset.i) === i);
    const box = $("token-features");
    box.replaceChildren();
    box.classList.remove("muted");
    const title = document.createElement("div");
    title.textContent = `${JSON.stringify(t.token)} (position ${i})`;
    box.append(title);
    if (t.skipped) box.append(`not encoded: ${t.skipped === "first" ? "the first position" : "an outlier token"}`);
    else if (!t.features.length) box.append("no feature fires");
    for (const f of t.features) box.append(chip(f.feature, f.act));
  }

  function shadeBy(feature) {
    const spans = $("tokens").children;
    result.tokens.forEach((t, i) => {
      const top = t.features[0] ? t.features[0].act : 0;
      const own = feature == null ? top : (t.features.find((f) => f.feature === feature) || {}).act || 0;
      spans[i].style.background = shade(own, result.max);
    });
  }

  function draw() {
    const box = $("tokens");
    box.replaceChildren();
    box.classList.remove("muted");
    result.tokens.forEach((t, i) => {
      const s = document.createElement("span");
      s.className = "tok" + (t.skipped ? " skipped" : "");
      s.dataset.i = i;
      s.textContent = shown(t.token);
      const top = t.features[0];
      s.title = t.skipped ? `not encoded (${t.skipped})`
        : top ? `#${top.feature}: ${fmt(top.act)}` : "no feature fires";
      s.addEventListener("click", () => selectToken(i));
      box.append(s);
    });
    shadeBy(null);
    const list = $("features");
    list.replaceChildren();
    list.classList.remove("muted");
    if (!result.features.length) list.textContent = "no feature fires on this text";
    for (const f of result.features.slice(0, 60)) {
      const c = chip(f.feature, f.max);
      c.title = `max ${fmt(f.max)} on ${f.count} token(s)`;
      c.addEventListener("mouseenter", () => shadeBy(f.feature));
      c.addEventListener("mouseleave", () => shadeBy(null));
      list.append(c);
    }
  }

  async function run() {
    const mine = ++seq;
    showError(null);
    $("status").textContent = "running...";
    try {
      const got = await saescope.api("/api/prompt", {
        run: saescope.run, sae: saescope.sae, text: $("text").value, top: Number($("top").value) || 5 });
      if (mine !== seq) return;
      result = got;
      draw();
      $("status").textContent = `${got.tokens.length} tokens`;
    } catch (e) {
      if (mine === seq) { showError(e); $("status").textContent = ""; }
    }
  }

  $("go").addEventListener("click", run);
  $("text").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(run, 400); });
  saescope.setup(run).catch(showError);
})();
