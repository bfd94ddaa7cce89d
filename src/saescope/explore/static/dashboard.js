/* One feature's dashboard, drawn from the JSON of GET /api/features/{id}
   (saescope.analysis.FeatureIndex.feature). No server calls: a click on another feature calls
   opts.onFeature(id). Used by the feature browser and inlined by the offline HTML export.

     renderFeature(el, feature, {onFeature: id => ...})

   Needs dashboard.css. Token text is set as text, never parsed as HTML. */
(function (root) {
  "use strict";

  function h(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children || []) if (c != null) e.append(c);
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }

  function fmt(x, digits) {
    if (x == null || !isFinite(x)) return "-";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
    return x.toFixed(digits == null ? 3 : digits);
  }

  /* A token as shown: newlines and tabs made visible. */
  function shown(token) {
    return String(token).replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");
  }

  /* Background for an activation: orange, its opacity the activation over `max`. */
  function shade(act, max) {
    const a = max > 0 ? Math.max(0, Math.min(1, act / max)) : 0;
    return a > 0 ? `rgba(249, 115, 22, ${(0.12 + 0.78 * a).toFixed(3)})` : "transparent";
  }

  /* One example: its tokens, each shaded by its activation, the value in its tooltip. */
  function context(ex, max) {
    const line = h("div", { class: "ctx" }, [h("span", { class: "max", text: fmt(ex.max, 2) })]);
    ex.tokens.forEach((t, i) => {
      const act = ex.acts[i] || 0;
      const span = h("span", { class: "tok" + (i === ex.at ? " peak" : ""), text: shown(t) });
      span.style.background = shade(act, max);
      span.title = `${JSON.stringify(t)}: ${fmt(act)}`;
      span.dataset.act = act;
      line.append(span);
    });
    return line;
  }

  function histogram(hist) {
    const W = 460, H = 150, L = 40, B = 22, T = 8;
    const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img",
                             class: "histogram" });
    const counts = (hist && hist.counts) || [], edges = (hist && hist.edges) || [];
    if (!counts.length) return box;
    const top = Math.max(1, ...counts), bw = (W - L - 4) / counts.length;
    box.append(svg("line", { x1: L, y1: H - B, x2: W - 2, y2: H - B, stroke: "#9ca3af" }));
    counts.forEach((c, i) => {
      const bh = (H - B - T) * (c / top);
      const r = svg("rect", { x: L + i * bw + 0.5, y: H - B - bh, width: Math.max(bw - 1, 0.5),
                              height: bh, fill: "#f97316", class: "bar" });
      const t = svg("title", {});
      t.textContent = `${fmt(edges[i])} to ${fmt(edges[i + 1])}: ${c}`;
      r.append(t);
      box.append(r);
    });
    const label = (x, y, text, anchor) => {
      const t = svg("text", { x, y, "text-anchor": anchor || "middle" });
      t.textContent = text;
      box.append(t);
    };
    label(L - 4, T + 8, String(top), "end");
    label(L - 4, H - B, "0", "end");
    if (edges.length) {
      label(L, H - 6, fmt(edges[0], 2), "start");
      const mid = Math.floor(counts.length / 2);
      label(L + mid * bw, H - 6, fmt(edges[mid], 2));
      label(W - 4, H - 6, fmt(edges[edges.length - 1], 2), "end");
    }
    return box;
  }

  function chips(rows, key, label, onFeature) {
    if (!rows || !rows.length) return h("div", { class: "none", text: "none" });
    return h("div", { class: "chips" }, rows.map((r) => h("span", {
      class: "chip", "data-feature": r.feature, title: `${label} ${fmt(r[key])}`,
      onclick: () => onFeature && onFeature(r.feature),
    }, [`#${r.feature}`, h("small", { text: fmt(r[key], 2) })])));
  }

  function logits(lg) {
    if (!lg) return h("div", { class: "none", text: "no logits (the model has no unembedding)" });
    const col = (rows, cls, title) => h("div", {}, [h("div", { class: "muted", text: title }),
      ...rows.map((r) => h("div", { class: `logit ${cls}`, title: fmt(r.value) }, [
        h("span", { text: JSON.stringify(r.token) }), h("span", { text: fmt(r.value, 2) })]))]);
    return h("div", { class: "logits" }, [col(lg.top || [], "pos", "promotes"),
                                          col(lg.bottom || [], "neg", "suppresses")]);
  }

  function section(title, body) {
    return h("section", {}, [h("h3", { text: title }), ...[].concat(body)]);
  }

  function renderFeature(el, f, opts) {
    const onFeature = (opts || {}).onFeature;
    const max = f.max_act || Math.max(0, ...(f.top || []).map((e) => e.max));
    const stat = (name, value) => h("span", { class: "stat" }, [`${name} `, h("b", { text: value })]);
    const head = h("div", { class: "head" }, [
      h("span", { class: "title", text: `Feature ${f.id}` }),
      stat("density", fmt(f.density, 5)), stat("max", fmt(f.max_act)),
      stat("mean when firing", fmt(f.mean_act)), stat("fired", String(f.fired ?? "-")),
    ]);
    const top = (f.top || []).map((e) => context(e, max));
    const intervals = (f.intervals || []).map((iv) => h("div", { class: "interval" }, [
      h("div", { class: "range", text: `${fmt(iv.lo, 2)} to ${fmt(iv.hi, 2)}` }),
      ...(iv.examples || []).map((e) => context(e, max)),
    ]));
    const left = h("div", {}, [
      section("Top activations", top.length ? top : h("div", { class: "none", text: "never fired" })),
      section("Samples by activation interval", intervals.length ? intervals
        : h("div", { class: "none", text: "none" })),
    ]);
    const right = h("div", {}, [
      section("Activation histogram", histogram(f.histogram)),
      section("Logit effects", logits(f.logits)),
      section("Co-firing features", chips(f.cofiring, "score", "score", onFeature)),
      section("Nearest decoder directions", chips(f.neighbours, "cosine", "cosine", onFeature)),
    ]);
    const dash = h("div", { class: "sae-dash", "data-feature": f.id }, [
      head, h("div", { class: "grid" }, [left, right])]);
    el.replaceChildren(dash);
    return dash;
  }

  root.renderFeature = renderFeature;
  root.saescopeDashboard = { renderFeature, context, shade, fmt, shown };
})(typeof window !== "undefined" ? window : this);
