"""The self-contained HTML page of ``python -m visualize.explore``: its data (images and features embedded as base64)
and its template (plain CSS and JavaScript, no external file, no network).

The page's script decodes each image's fp16 patch features, and on each pointing computes the cosine similarity of
the patch under the pointer with every patch of every image, draws it as a heatmap, and marks each image's best match
(green when mutual: that patch's own best match back in the pointed image is the pointed patch). Its state is
``window.exploreState = {ready, selected: {image, row, col}, best: [{image, row, col, score, mutual}], view,
threshold}``, and ``selectPatch(image, row, col)`` points at a patch from code (tests drive the page with both).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from typing import Any

import numpy as np
from PIL import Image

DATA_ID = "explore-data"


def encode_features(features: np.ndarray) -> str:
    """``(h, w, d)`` features -> base64 of their unit-length rows as little-endian fp16, row-major ``(h*w, d)``.

    Rows are scaled to unit length first: cosine similarity ignores the scale, and fp16 then neither overflows nor
    loses precision on large activations."""
    rows = features.reshape(-1, features.shape[-1]).astype(np.float64)
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return base64.b64encode(rows.astype("<f2").tobytes()).decode("ascii")


def decode_features(text: str, rows: int, cols: int) -> np.ndarray:
    """``encode_features``'s text -> ``(rows, cols, d)`` float32, the numbers the page's script reads."""
    values = np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)
    return values.reshape(rows, cols, -1)


def image_data_url(pixels: np.ndarray, fmt: str) -> str:
    """``(H, W, 3)`` uint8 -> a ``data:`` URL (``fmt``: "JPEG" for photographs, "PNG" for exact maps)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def render_page(data: dict[str, Any]) -> str:
    """The page for ``data`` (``backbone``, ``random_weights``, ``block``, ``patch``, ``dims``, ``summary``, and
    ``images``: a list of ``{name, rows, cols, width, height, photo, pca, features}``)."""
    # "<" escaped inside the JSON, so that no text in it (a file name) can close the script element
    payload = json.dumps(data, allow_nan=False).replace("<", "\\u003c")
    warning = (
        '<p class="warn">RANDOM WEIGHTS: no weights were found and the backbone is randomly initialised. '
        "These features are meaningless (a pipeline check only).</p>"
        if data["random_weights"]
        else ""
    )
    return (
        TEMPLATE.replace("__TITLE__", html.escape(f"{data['backbone']}, block {data['block']}"))
        .replace("__SUMMARY__", html.escape(data["summary"]))
        .replace("__WARNING__", warning)
        .replace("__DATA__", payload)
        .replace("__SCRIPT__", SCRIPT)
    )


def read_page_data(page: str) -> dict[str, Any]:
    """The data embedded in a page written by ``render_page``."""
    found = re.search(f'<script type="application/json" id="{DATA_ID}">(.*?)</script>', page, re.DOTALL)
    if found is None:
        raise ValueError("not a visualize.explore page: its data element is missing")
    return json.loads(found.group(1))


TEMPLATE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Patch features: __TITLE__</title>
<style>
body {{ font-family: sans-serif; margin: 12px; background: #f4f4f4; }}
.warn {{ background: #c00; color: #fff; font-weight: bold; font-size: 1.4em; padding: 8px; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }}
figure {{ margin: 0; }}
.view {{ position: relative; display: inline-block; line-height: 0; cursor: crosshair; }}
.view img.photo {{ display: block; max-width: 90vw; height: auto; }}
.view canvas, .view img.pca {{ position: absolute; left: 0; top: 0; width: 100%; height: 100%;
  image-rendering: pixelated; pointer-events: none; }}
.mark {{ position: absolute; box-sizing: border-box; border: 3px solid; pointer-events: none; display: none; }}
.mark.selected {{ border-color: #fff; outline: 1px solid #000; }}
.mark.best {{ border-color: #f80; }}
.mark.best.mutual {{ border-color: #0d0; }}
figcaption {{ font-size: 13px; line-height: 1.5; }}
</style>
</head>
<body>
<h2>Patch features: __TITLE__</h2>
__WARNING__
<p>__SUMMARY__</p>
<p>
<label><input type="checkbox" id="pca"> PCA maps</label>
&nbsp; <label>background threshold <input type="range" id="threshold" min="-1" max="1" step="0.01" value="0">
<span id="threshold-value">0.00</span></label>
&nbsp; Point at a patch (click to freeze or release). White: the patch; green: a mutual best match; orange: a best
match that is not mutual. Patches less similar than the threshold are left uncoloured.
</p>
<div class="grid" id="grid"></div>
<script type="application/json" id="{DATA_ID}">__DATA__</script>
<script>__SCRIPT__</script>
</body>
</html>
"""

SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("explore-data").textContent);
const DIMS = DATA.dims;
window.exploreState = {ready: false, selected: null, best: [], view: "similarity", threshold: 0};
let frozen = false;

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * Math.pow(2, -24);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * Math.pow(2, exponent - 15);
}

function decodeFeatures(text, count) {
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer), out = new Float64Array(count * DIMS);
  for (let i = 0; i < count; i++) {
    let norm = 0;
    for (let k = 0; k < DIMS; k++) {
      const v = halfToFloat(view.getUint16(2 * (i * DIMS + k), true));
      out[i * DIMS + k] = v;
      norm += v * v;
    }
    norm = Math.sqrt(norm) || 1;
    for (let k = 0; k < DIMS; k++) out[i * DIMS + k] /= norm;
  }
  return out;
}

function similarities(vector, image) {
  const count = image.rows * image.cols, out = new Float64Array(count);
  for (let q = 0; q < count; q++) {
    let dot = 0;
    for (let k = 0; k < DIMS; k++) dot += vector[k] * image.features[q * DIMS + k];
    out[q] = dot;
  }
  return out;
}

function argmax(values) {
  let best = 0;
  for (let q = 1; q < values.length; q++) if (values[q] > values[best]) best = q;
  return best;
}

function patchVector(image, index) {
  return image.features.subarray(index * DIMS, (index + 1) * DIMS);
}

function placeMark(mark, image, row, col) {
  mark.style.left = (100 * col / image.cols) + "%";
  mark.style.top = (100 * row / image.rows) + "%";
  mark.style.width = (100 / image.cols) + "%";
  mark.style.height = (100 / image.rows) + "%";
  mark.style.display = "block";
}

function heatColour(x) {
  const clamp = (v) => Math.max(0, Math.min(1, v));
  return [255 * clamp(3 * x), 255 * clamp(3 * x - 1), 255 * clamp(3 * x - 2)];
}

function draw() {
  const state = window.exploreState, threshold = state.threshold, pca = state.view === "pca";
  IMAGES.forEach((image, j) => {
    image.pcaImage.style.display = pca ? "block" : "none";
    image.canvas.style.display = pca || !image.sims ? "none" : "block";
    if (image.sims) {
      const context = image.canvas.getContext("2d");
      const pixels = context.createImageData(image.cols, image.rows);
      for (let q = 0; q < image.sims.length; q++) {
        const s = image.sims[q];
        if (s < threshold) continue;
        const [r, g, b] = heatColour((s - threshold) / Math.max(1 - threshold, 1e-6));
        pixels.data.set([r, g, b, 170], 4 * q);
      }
      context.putImageData(pixels, 0, 0);
    }
    const best = state.best[j], selected = state.selected;
    const itself = best && selected && selected.image === j && selected.row === best.row && selected.col === best.col;
    if (itself) image.bestMark.style.display = "none";
    if (best && !itself) placeMark(image.bestMark, image, best.row, best.col);
    if (best) {
      image.bestMark.classList.toggle("mutual", best.mutual);
      image.caption.textContent = image.name + " (" + image.cols + "x" + image.rows + " patches): best match row " +
        best.row + ", col " + best.col + ", similarity " + best.score.toFixed(3) +
        (best.mutual ? ", mutual" : ", not mutual");
    }
    if (state.selected && state.selected.image === j) {
      placeMark(image.selectedMark, image, state.selected.row, state.selected.col);
    } else {
      image.selectedMark.style.display = "none";
    }
  });
}

function selectPatch(image, row, col) {
  const source = IMAGES[image], index = row * source.cols + col, vector = patchVector(source, index);
  const best = IMAGES.map((target, j) => {
    target.sims = similarities(vector, target);
    const q = argmax(target.sims);
    const back = argmax(similarities(patchVector(target, q), source));
    return {image: j, row: Math.floor(q / target.cols), col: q % target.cols, score: target.sims[q],
            mutual: back === index};
  });
  window.exploreState.selected = {image: image, row: row, col: col};
  window.exploreState.best = best;
  draw();
  return window.exploreState;
}

function patchAt(event, image) {
  const box = image.view.getBoundingClientRect();
  const col = Math.floor((event.clientX - box.left) / box.width * image.cols);
  const row = Math.floor((event.clientY - box.top) / box.height * image.rows);
  return [Math.max(0, Math.min(image.rows - 1, row)), Math.max(0, Math.min(image.cols - 1, col))];
}

function element(tag, className, parent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  parent.appendChild(node);
  return node;
}

const IMAGES = DATA.images.map((item, j) => {
  const figure = element("figure", "", document.getElementById("grid"));
  const view = element("div", "view", figure);
  const photo = element("img", "photo", view);
  photo.src = item.photo;
  photo.width = item.width;
  photo.height = item.height;
  photo.alt = item.name;
  const pcaImage = element("img", "pca", view);
  pcaImage.src = item.pca;
  const canvas = element("canvas", "", view);
  canvas.width = item.cols;
  canvas.height = item.rows;
  const image = {name: item.name, rows: item.rows, cols: item.cols, view: view, canvas: canvas, pcaImage: pcaImage,
    features: decodeFeatures(item.features, item.rows * item.cols), sims: null,
    bestMark: element("div", "mark best", view), selectedMark: element("div", "mark selected", view),
    caption: element("figcaption", "", figure)};
  image.caption.textContent = item.name + " (" + item.cols + "x" + item.rows + " patches)";
  let last = "";
  view.addEventListener("mousemove", (event) => {
    const [row, col] = patchAt(event, image);
    if (frozen || last === row + "," + col) return;
    last = row + "," + col;
    selectPatch(j, row, col);
  });
  view.addEventListener("click", (event) => {
    const [row, col] = patchAt(event, image);
    selectPatch(j, row, col);
    frozen = !frozen;
  });
  return image;
});

document.getElementById("pca").addEventListener("change", (event) => {
  window.exploreState.view = event.target.checked ? "pca" : "similarity";
  draw();
});
document.getElementById("threshold").addEventListener("input", (event) => {
  window.exploreState.threshold = parseFloat(event.target.value);
  document.getElementById("threshold-value").textContent = window.exploreState.threshold.toFixed(2);
  draw();
});
selectPatch(0, Math.floor(IMAGES[0].rows / 2), Math.floor(IMAGES[0].cols / 2));
window.exploreState.ready = true;
"""
