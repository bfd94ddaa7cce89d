// Shared by the seed demos' pages: the app's nav bar when nav.js is there, a dark-to-bright colour
// scale (viridis, dark = 0), SVG and fetch helpers.
"use strict";
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

function seedColor(t) {
  // t in [0, 1] (clamped); 0 is black so that an inactive cell reads as "off"
  if (!(t > 0)) return "rgb(0,0,0)";
  t = Math.min(1, t);
  const x = t * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const c = VIRIDIS[i].map((v, k) => Math.round(v + f * (VIRIDIS[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function seedSvg(tag, attrs, parent) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

async function seedFetch(url) {
  const r = await fetch(url);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && body.detail) || `${url}: HTTP ${r.status}`);
  return body;
}

function seedFmt(x, digits) {
  return Number(x).toFixed(digits);
}

// The app's nav bar (nav.js, when served with it); the demos need no run, so a failure there
// (no runs) leaves the page working. saescope.ready: the runs (null when unknown).
if (window.saescope && typeof window.saescope.setup === "function") {
  window.saescope.ready = window.saescope.setup().catch(() => null);
}
