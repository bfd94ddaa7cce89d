"""The offline export: one self-contained HTML file showing chosen features' dashboards. It
inlines the web app's own dashboard renderer (static/dashboard.js, `renderFeature`) and its
styles, and the features' JSON as the app's /api/features/{id} serves it, with a list to
switch among them. Nothing is fetched: the page's Content-Security-Policy forbids every
network load, so it opens from a file, with no server and no network."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saescope.analysis import FeatureIndex, check_features
from saescope.atomic import atomic_write_bytes
from saescope.errors import FormatError
from saescope.runs import Run

STATIC = Path(__file__).resolve().parent / "static"
SCRIPTS = ("dashboard.js",)
"""The app's scripts the export inlines, in order (the dashboard renderer)."""
STYLES = ("dashboard.css",)
"""The app's style sheets the export inlines."""
POLICY = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
"""No request of any kind leaves the page: scripts and styles inline, images as data URIs."""

PAGE_CSS = """
body { margin: 0; font-family: system-ui, sans-serif; display: flex; min-height: 100vh; }
#export-list { width: 13rem; flex: none; border-right: 1px solid #ddd; padding: .75rem;
  overflow-y: auto; max-height: 100vh; box-sizing: border-box; position: sticky; top: 0; }
#export-list h1 { font-size: 1rem; margin: 0 0 .25rem; }
#export-list p { font-size: .8rem; color: #555; margin: 0 0 .75rem; overflow-wrap: anywhere; }
#export-list button { display: block; width: 100%; text-align: left; margin: 0 0 .25rem;
  padding: .35rem .5rem; border: 1px solid #ccc; border-radius: 4px; background: #fff;
  cursor: pointer; font: inherit; font-size: .9rem; }
#export-list button[aria-current="true"] { background: #1f6feb; color: #fff;
  border-color: #1f6feb; }
#export-main { flex: 1; padding: 1rem; min-width: 0; }
#export-note { color: #9a6700; min-height: 1.2em; margin: 0 0 .5rem; }
"""

PAGE_JS = """
(function () {
  var data = JSON.parse(document.getElementById("export-data").textContent);
  var byId = {};
  data.features.forEach(function (f) { byId[String(f.id)] = f; });
  var main = document.getElementById("export-dashboard");
  var note = document.getElementById("export-note");
  function show(id) {
    var f = byId[String(id)];
    if (!f) {
      note.textContent = "feature " + id + " is not in this export (exported: " +
        Object.keys(byId).join(", ") + ")";
      return;
    }
    note.textContent = "";
    main.textContent = "";
    renderFeature(main, f, { onFeature: show });
    document.querySelectorAll("#export-list button").forEach(function (b) {
      b.setAttribute("aria-current", b.dataset.feature === String(id) ? "true" : "false");
    });
    if (location.hash !== "#feature-" + id) history.replaceState(null, "", "#feature-" + id);
  }
  document.querySelectorAll("#export-list button").forEach(function (b) {
    b.addEventListener("click", function () { show(b.dataset.feature); });
  });
  var first = location.hash.replace("#feature-", "");
  show(byId[first] ? first : data.features[0].id);
})();
"""


def _asset(name: str) -> str:
    path = STATIC / name
    if not path.is_file():
        raise FormatError(f"{path} is missing: the saescope install is incomplete; reinstall it")
    return path.read_text(encoding="utf-8")


def _script_text(text: str) -> str:
    """Text safe inside a <script> element: no `</script` can end it early."""
    return text.replace("</", "<\\/")


def _json_text(obj: Any) -> str:
    """JSON safe inside a <script type="application/json"> element."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _label(feature: dict[str, Any]) -> str:
    return f"#{feature['id']} · density {feature['density']:.2e}"


def render_html(features: Sequence[dict[str, Any]], title: str, about: str = "") -> str:
    """The page for these features (dicts as /api/features/{id} returns them)."""
    if not features:
        raise FormatError("no features to export; choose at least one")
    buttons = "\n".join(
        f'<button type="button" data-feature="{int(f["id"])}">{html.escape(_label(f))}</button>'
        for f in features
    )
    css = "\n".join(_asset(s) for s in STYLES) + PAGE_CSS
    js = "\n;\n".join(_asset(s) for s in SCRIPTS)
    payload = {"title": title, "about": about, "features": list(features)}
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_script_text(css)}</style>
</head>
<body>
<nav id="export-list" aria-label="features">
<h1>{html.escape(title)}</h1>
<p>{html.escape(about)}</p>
{buttons}
</nav>
<main id="export-main">
<p id="export-note" role="status"></p>
<div id="export-dashboard"></div>
</main>
<script type="application/json" id="export-data">{_json_text(payload)}</script>
<script>{_script_text(js)}</script>
<script>{PAGE_JS}</script>
</body>
</html>
"""


def feature_payloads(
    index: FeatureIndex, features: Sequence[int], run: str
) -> list[dict[str, Any]]:
    """The chosen features' JSON as GET /api/features/{id} serves it: the index's feature
    plus "run" and "sae" (ids checked against the index)."""
    info = index.info
    ids = check_features(features, int(info["d_sae"]))
    return [{**index.feature(i), "run": run, "sae": info.get("sae")} for i in ids]


def export_html(
    index: FeatureIndex,
    features: Sequence[int],
    out: str | Path,
    run: str = "run",
    title: str | None = None,
) -> Path:
    """Write one self-contained HTML file with the chosen features' dashboards to `out`
    (atomically); `run` names the run as the app would. Returns the file's path."""
    info = index.info
    title = title or f"saescope features: {run}"
    about = (
        ", ".join(str(x) for x in (info.get("model"), info.get("hook"), info.get("sae")) if x)
        + f" · d_sae {info['d_sae']:,} · {int(info.get('tokens') or 0):,} tokens indexed"
    )
    page = render_html(feature_payloads(index, features, run), title, about)
    out = Path(out)
    atomic_write_bytes(out, page.encode("utf-8"))
    return out


def export_run(run: Run, features: Sequence[int], out: str | Path, sae: str | None = None) -> Path:
    """`export_html` for one SAE of a run (its only one, or `sae`), named as the app names it
    (the run folder's name)."""
    name, _ = run.sae(sae)
    index = FeatureIndex.open(run.path, sae=name if len(run.saes) > 1 else None)
    try:
        return export_html(index, features, out, run=run.path.name)
    finally:
        index.close()
