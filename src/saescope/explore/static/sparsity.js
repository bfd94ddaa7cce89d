// The Sparsity Explorer: GET /api/seed/sparsity?level=i; a heatmap of inputs x features.
"use strict";

const CW = 13, CH = 11, LEFT = 64, TOP = 40;
const CLASS_HUES = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a6761d", "#f781bf", "#666666"];

function hue(c) {
  return CLASS_HUES[c % CLASS_HUES.length];
}

function describe(data, j, i) {
  // What feature column j represents, and its activation on input row i.
  const f = data.features[j];
  const inp = data.inputs[i];
  const act = data.acts[i][j];
  const info = document.getElementById("info");
  info.replaceChildren();
  const h = document.createElement("p");
  h.id = "info-title";
  // Built from nodes, never HTML: class names come from a data file.
  const fid = document.createElement("b");
  fid.textContent = `f${f.id}`;
  const cls = document.createElement("b");
  cls.id = "info-class";
  cls.style.color = hue(f.class);
  cls.textContent = data.classes[f.class];
  h.append("Feature ", fid, " represents ", cls, ` (purity ${seedFmt(f.purity, 3)}).`);
  const p = document.createElement("p");
  p.textContent = act > 0
    ? `It fires at ${seedFmt(act, 3)} on input #${inp.index} (${data.classes[inp.class]}).`
    : `It is silent on input #${inp.index} (${data.classes[inp.class]}).`;
  const bars = document.createElement("div");
  bars.className = "bars";
  const m = Math.max(1e-12, ...f.class_means);
  f.class_means.forEach((v, c) => {
    const name = document.createElement("span");
    name.textContent = data.classes[c];
    const cell = document.createElement("span");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * v) / m}%`;
    bar.style.background = hue(c);
    cell.appendChild(bar);
    const val = document.createElement("span");
    val.textContent = seedFmt(v, 3);
    bars.append(name, cell, val);
  });
  const cap = document.createElement("p");
  cap.className = "legend";
  cap.textContent = "Mean activation of the feature over each class (all inputs):";
  info.append(h, p, cap, bars);
  const link = browserLink(data, f.id);
  if (link) info.append(link);
}

// At the default stop, when the app serves the classifier SAE's run (data.index_run), a link
// to the feature's dashboard in the feature browser.
function browserLink(data, id) {
  const runs = (window.saescope && window.saescope.runs) || [];
  if (!data.index_run || data.level !== data.default) return null;
  if (!runs.some((r) => r.name === data.index_run)) return null;
  const a = document.createElement("a");
  a.id = "info-browser";
  a.href = `index.html?run=${encodeURIComponent(data.index_run)}&feature=${id}`;
  a.textContent = `Open f${id} in the feature browser (its dashboard over all inputs)`;
  const p = document.createElement("p");
  p.append(a);
  return p;
}

function draw(data) {
  const svg = document.getElementById("heatmap");
  svg.replaceChildren();
  const nf = data.features.length, ni = data.inputs.length;
  const width = LEFT + nf * CW + 10, height = TOP + ni * CH + 10;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  seedSvg("text", { x: LEFT, y: 12 }, svg).textContent = "features (coloured by their class) →";
  data.features.forEach((f, j) => {
    seedSvg("rect", { x: LEFT + j * CW, y: TOP - 10, width: CW - 1, height: 6, fill: hue(f.class) }, svg);
  });
  data.inputs.forEach((inp, i) => {
    const y = TOP + i * CH;
    seedSvg("rect", { x: LEFT - 10, y, width: 6, height: CH - 1, fill: hue(inp.class) }, svg);
    if (i === 0 || data.inputs[i - 1].class !== inp.class) {
      seedSvg("text", { x: LEFT - 14, y: y + CH - 2, "text-anchor": "end" }, svg).textContent = data.classes[inp.class];
    }
  });
  const scale = data.max > 0 ? data.max : 1;
  let selected = null;
  data.acts.forEach((row, i) => {
    row.forEach((v, j) => {
      const r = seedSvg("rect", {
        class: "cell", x: LEFT + j * CW, y: TOP + i * CH, width: CW - 1, height: CH - 1,
        fill: seedColor(v / scale), "data-row": i, "data-col": j, "data-act": v,
        "data-feature": data.features[j].id,
      }, svg);
      seedSvg("title", {}, r).textContent = `f${data.features[j].id} on input #${data.inputs[i].index}: ${seedFmt(v, 3)}`;
      r.addEventListener("click", () => {
        if (selected) selected.classList.remove("selected");
        r.classList.add("selected");
        selected = r;
        describe(data, j, i);
      });
    });
  });
}

function metrics(lvl) {
  document.getElementById("l1").textContent = lvl.l1_coef;
  document.getElementById("l0").textContent = seedFmt(lvl.l0, 2);
  document.getElementById("mse").textContent = seedFmt(lvl.mse, 2);
  document.getElementById("purity").textContent = seedFmt(lvl.mean_purity, 3);
  document.getElementById("alive").textContent = `${lvl.alive}/${lvl.d_sae}`;
}

function fail(e) {
  const el = document.getElementById("error");
  el.textContent = e.message;
  el.hidden = false;
}

let request = 0;
async function load(level) {
  const mine = ++request;
  const q = level === undefined ? "" : `?level=${level}`;
  const data = await seedFetch(`/api/seed/sparsity${q}`);
  if (mine !== request) return null; // the slider moved on
  metrics(data.levels[data.level]);
  draw(data);
  document.getElementById("info").textContent = "Click a cell.";
  return data;
}

load().then((data) => {
  const slider = document.getElementById("slider");
  slider.max = data.levels.length - 1;
  slider.value = data.level;
  slider.disabled = false;
  slider.addEventListener("input", () => load(Number(slider.value)).catch(fail));
}).catch(fail);
