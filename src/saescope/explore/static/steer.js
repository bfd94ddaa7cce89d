/* The steering playground: features and values, one mode, generation with and without the
   edits side by side (POST /api/steer, saescope.steer.steer_prompt). */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);

  function showError(e) { $("error").textContent = e ? String(e.message || e) : ""; }

  function addEdit(id, value) {
    const row = document.createElement("div");
    row.className = "edit row";
    row.innerHTML = '<label>feature <input class="fid" type="number" min="0" style="width:90px"></label>' +
      '<label>value <input class="fval" type="number" step="any" style="width:90px"></label>' +
      '<button type="button" class="plain remove">remove</button> <a class="feature open">dashboard</a>';
    row.querySelector(".fid").value = id ?? "";
    row.querySelector(".fval").value = value ?? 10;
    row.querySelector(".remove").addEventListener("click", () => row.remove());
    row.querySelector(".open").addEventListener("click", () => {
      location.href = saescope.featureUrl(row.querySelector(".fid").value); });
    $("edits").append(row);
  }

  function effects(features) {
    const box = $("effects");
    box.replaceChildren();
    box.classList.remove("muted");
    if (!features.length) { box.textContent = "no feature edited"; return; }
    const t = document.createElement("table");
    t.className = "list";
    const head = t.insertRow();
    for (const c of ["feature", "value", "token", "p unsteered", "p steered"]) {
      const th = document.createElement("th"); th.textContent = c; head.append(th);
    }
    for (const f of features) for (const tok of f.top_tokens) {
      const r = t.insertRow();
      for (const v of [`#${f.id}`, f.value, JSON.stringify(tok.token),
                       tok.p_unsteered.toPrecision(3), tok.p_steered.toPrecision(3)])
        r.insertCell().textContent = v;
    }
    box.append(t);
  }

  async function go() {
    showError(null);
    const features = [];
    for (const row of $("edits").children) {
      const id = row.querySelector(".fid").value, value = row.querySelector(".fval").value;
      if (id === "") continue;
      if (value === "" || !isFinite(Number(value))) {
        showError(`feature ${id}: give a finite value`);
        return;
      }
      features.push({ id: Number(id), value: Number(value) });
    }
    const body = { run: saescope.run, sae: saescope.sae, prompt: $("prompt").value, features,
                   mode: $("mode").value, max_new_tokens: Number($("new").value) || 20,
                   temperature: Number($("temp").value) || 0 };
    if ($("seed").value !== "") body.seed = Number($("seed").value);
    $("status").textContent = "generating...";
    try {
      const got = await saescope.api("/api/steer", body);
      for (const side of ["unsteered", "steered"]) {
        const lead = document.createElement("span");
        lead.className = "prompt";
        lead.textContent = got.prompt;
        $(side).replaceChildren(lead, got[side]);
      }
      effects(got.features);
      $("status").textContent = "";
    } catch (e) { showError(e); $("status").textContent = ""; }
  }

  $("add").addEventListener("click", () => addEdit());
  $("go").addEventListener("click", go);
  const url = new URLSearchParams(location.search);
  addEdit(url.get("feature"), url.get("value"));
  saescope.setup().catch(showError);
})();
