// The Feature Disentangler: GET /api/seed/disentangler once; the slider redraws both panels.
"use strict";

const CELL_W = 30, CELL_H = 14, LABEL_W = 96, TOP = 18, ERR_W = 60;

function rowMax(row) {
  return Math.max(1e-12, ...row);
}

// One heatmap: rows = units (neurons or features), columns = classes; each row scaled to max 1.
function drawUnits(svg, units, classes, label, extra) {
  svg.replaceChildren();
  const width = LABEL_W + classes.length * CELL_W + (extra ? ERR_W + 10 : 0);
  const height = TOP + units.length * CELL_H + 4;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  classes.forEach((c, j) => {
    const t = seedSvg("text", { x: LABEL_W + j * CELL_W + CELL_W / 2, y: TOP - 5, "text-anchor": "middle" }, svg);
    t.textContent = c.replace("class ", "c");
  });
  units.forEach((u, i) => {
    const y = TOP + i * CELL_H;
    const g = seedSvg("g", { class: "row", "data-id": u.id }, svg);
    const t = seedSvg("text", { x: LABEL_W - 4, y: y + CELL_H - 3, "text-anchor": "end" }, g);
    t.textContent = label(u);
    const m = rowMax(u.class_means);
    u.class_means.forEach((v, j) => {
      const r = seedSvg("rect", {
        class: "cell", x: LABEL_W + j * CELL_W, y, width: CELL_W - 1, height: CELL_H - 1,
        fill: seedColor(v / m), "data-value": v,
      }, g);
      seedSvg("title", {}, r).textContent = `${label(u)}, ${classes[j]}: mean ${seedFmt(v, 3)}`;
    });
    if (extra) extra(g, u, i, y);
  });
}

function neuronLabel(u) {
  return `n${u.id} (${u.responds} cl.)`;
}

function featureLabel(u) {
  return `f${u.id} c${u.class} ${seedFmt(u.purity, 2)}`;
}

function main(data) {
  const slider = document.getElementById("slider");
  const x0 = LABEL_W + data.classes.length * CELL_W + 10;
  const neurons = data.neurons.units.map((u) => ({
    ...u, responds: u.class_means.filter((v) => v > data.neurons.respond_threshold).length,
  }));

  function show(i) {
    const lvl = data.levels[i];
    document.getElementById("l1").textContent = lvl.l1_coef;
    document.getElementById("l0").textContent = seedFmt(lvl.l0, 2);
    document.getElementById("mse").textContent = seedFmt(lvl.mse, 2);
    document.getElementById("ev").textContent = seedFmt(lvl.explained_variance, 3);
    document.getElementById("alive").textContent = `${lvl.alive}/${lvl.d_sae}`;
    document.getElementById("purity").textContent = seedFmt(lvl.mean_purity, 3);
    drawUnits(document.getElementById("neurons"), neurons, data.classes, neuronLabel, (g, u, k, y) => {
      const fvu = Math.min(1, lvl.neuron_fvu[u.id]);
      const r = seedSvg("rect", { class: "fvu", x: x0, y, width: Math.max(1, fvu * ERR_W), height: CELL_H - 1, fill: "#d44" }, g);
      seedSvg("title", {}, r).textContent = `n${u.id}: ${seedFmt(100 * fvu, 1)}% of its variance unexplained at L1 ${lvl.l1_coef}`;
    });
    drawUnits(document.getElementById("features"), lvl.features, data.classes, featureLabel);
    document.getElementById("features-note").textContent =
      `${lvl.alive} alive of ${lvl.d_sae} latents at L1 ${lvl.l1_coef}, sorted by class; label: id, class, purity. ` +
      `${lvl.features.filter((f) => f.purity >= 0.9).length} features are >= 90% pure.`;
  }

  document.getElementById("npurity").textContent = seedFmt(data.neurons.mean_purity, 3);
  document.getElementById("neurons-note").textContent =
    `${neurons.length} neurons (classifier accuracy ${seedFmt(100 * data.accuracy, 1)}%); ` +
    `${neurons.filter((u) => u.responds >= 2).length} respond (mean > ${data.neurons.respond_threshold}) to 2 or more classes. ` +
    "Red: variance the SAE leaves unexplained.";
  slider.max = data.levels.length - 1;
  slider.value = data.default;
  slider.disabled = false;
  slider.addEventListener("input", () => show(Number(slider.value)));
  show(data.default);
}

seedFetch("/api/seed/disentangler").then(main).catch((e) => {
  const el = document.getElementById("error");
  el.textContent = e.message;
  el.hidden = false;
});
