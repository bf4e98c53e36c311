// Loss-landscape canvas for jupyter_curvature (an anywidget ES module, no build step).
//
// Draws a 2D loss surface as a heat map with contour lines and a colour bar, and a
// draggable point. Dragging streams the point's coordinates to the kernel (trait `point`,
// throttled to one message per animation frame); the kernel evaluates the network at
// w0 + x d1 + y d2 and answers with `readout` (and `readout_point`, the point it belongs to).
// While the answer is on its way the canvas shows the bilinear interpolation of the grid,
// marked "≈".
//
// The pure functions below are exported for the unit tests in js/tests (node --test):
// they touch no DOM. No import from a CDN: users and CI may be offline.

/** Colour-map anchors (sRGB 0..255), evenly spaced in [0, 1]. viridis from matplotlib. */
export const COLORMAPS = {
  viridis: [
    [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
  ],
  magma: [
    [0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122],
    [229, 80, 100], [251, 135, 97], [254, 194, 135], [252, 253, 191],
  ],
  greys: [[255, 255, 255], [0, 0, 0]],
};

/** Clamp `v` to [lo, hi]. */
export function clamp(v, lo, hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

/**
 * The colour of t in [0, 1] (clamped; NaN gives null) under the colour map `name`,
 * linearly interpolated between the anchors, as [r, g, b] integers.
 */
export function colorAt(name, t) {
  const anchors = COLORMAPS[name];
  if (!anchors) throw new Error(`unknown colour map ${name}`);
  if (!Number.isFinite(t)) return null;
  const s = clamp(t, 0, 1) * (anchors.length - 1);
  const i = Math.min(Math.floor(s), anchors.length - 2);
  const f = s - i;
  const a = anchors[i];
  const b = anchors[i + 1];
  return [0, 1, 2].map((c) => Math.round(a[c] + f * (b[c] - a[c])));
}

/** A Float64Array from a DataView / ArrayBuffer / typed array / plain array of numbers. */
export function toFloat64Array(data) {
  if (data == null) return new Float64Array(0);
  if (data instanceof Float64Array) return data;
  if (data instanceof DataView) {
    const out = new Float64Array(data.byteLength / 8);
    for (let i = 0; i < out.length; i++) out[i] = data.getFloat64(8 * i, true);
    return out;
  }
  if (data instanceof ArrayBuffer) return toFloat64Array(new DataView(data));
  if (ArrayBuffer.isView(data)) {
    return toFloat64Array(new DataView(data.buffer, data.byteOffset, data.byteLength));
  }
  return Float64Array.from(data, (v) => (v == null ? NaN : Number(v)));
}

/** [min, max] of the finite entries (positive ones only when `log`); null if none. */
export function valueRange(z, log = false) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of z) {
    if (!Number.isFinite(v) || (log && v <= 0)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo === Infinity ? null : [lo, hi];
}

/** Position of v in [lo, hi] as a fraction (log10 scale when `log`); NaN stays NaN. */
export function normalize(v, lo, hi, log = false) {
  if (!Number.isFinite(v) || (log && v <= 0)) return NaN;
  if (log) {
    v = Math.log10(v);
    lo = Math.log10(lo);
    hi = Math.log10(hi);
  }
  return hi > lo ? (v - lo) / (hi - lo) : 0.5;
}

/** `n` contour levels strictly inside (lo, hi): evenly spaced, or geometric when `log`. */
export function contourLevels(lo, hi, n, log = false) {
  if (!(hi > lo) || n < 1) return [];
  if (log && !(lo > 0)) throw new Error("log levels need a positive range");
  const out = [];
  for (let i = 1; i <= n; i++) {
    const f = i / (n + 1);
    out.push(log ? lo * Math.pow(hi / lo, f) : lo + f * (hi - lo));
  }
  return out;
}

/**
 * Maps between data coordinates (x right, y up) and canvas pixels (y down) for a plot area
 * of `width` x `height` pixels whose top-left corner is at (`left`, `top`).
 */
export function makeTransform({ xRange, yRange, width, height, left = 0, top = 0 }) {
  const [x0, x1] = xRange;
  const [y0, y1] = yRange;
  const sx = width / (x1 - x0);
  const sy = height / (y1 - y0);
  return {
    toPixel: (x, y) => [left + (x - x0) * sx, top + (y1 - y) * sy],
    toData: (px, py) => [x0 + (px - left) / sx, y1 - (py - top) / sy],
    clampData: (x, y) => [clamp(x, Math.min(x0, x1), Math.max(x0, x1)),
      clamp(y, Math.min(y0, y1), Math.max(y0, y1))],
  };
}

/**
 * Grid value at fractional grid position (gx along x, gy along y), bilinearly
 * interpolated; `z` is row-major with `ny` rows of `nx` values (z[iy * nx + ix]).
 */
export function bilinear(z, nx, ny, gx, gy) {
  gx = clamp(gx, 0, nx - 1);
  gy = clamp(gy, 0, ny - 1);
  const ix = Math.min(Math.floor(gx), Math.max(nx - 2, 0));
  const iy = Math.min(Math.floor(gy), Math.max(ny - 2, 0));
  const fx = nx > 1 ? gx - ix : 0;
  const fy = ny > 1 ? gy - iy : 0;
  const at = (i, j) => z[Math.min(j, ny - 1) * nx + Math.min(i, nx - 1)];
  return (
    (1 - fx) * (1 - fy) * at(ix, iy) + fx * (1 - fy) * at(ix + 1, iy) +
    (1 - fx) * fy * at(ix, iy + 1) + fx * fy * at(ix + 1, iy + 1)
  );
}

/** Fractional grid position of data coordinate v on an axis from lo to hi with n points. */
export function dataToGrid(v, lo, hi, n) {
  return n > 1 ? ((v - lo) / (hi - lo)) * (n - 1) : 0;
}

/**
 * Contour segments of level `level` by marching squares. Returns [[gx0, gy0, gx1, gy1], ...]
 * in fractional grid positions. Cells with a NaN corner are skipped. Saddles are resolved by
 * the cell's mean.
 */
export function marchingSquares(z, nx, ny, level) {
  const segs = [];
  const lerp = (a, b) => (level - a) / (b - a);
  for (let j = 0; j + 1 < ny; j++) {
    for (let i = 0; i + 1 < nx; i++) {
      const a = z[j * nx + i]; // (i, j)
      const b = z[j * nx + i + 1]; // (i+1, j)
      const c = z[(j + 1) * nx + i + 1]; // (i+1, j+1)
      const d = z[(j + 1) * nx + i]; // (i, j+1)
      if (![a, b, c, d].every(Number.isFinite)) continue;
      const code = (a > level ? 1 : 0) | (b > level ? 2 : 0) | (c > level ? 4 : 0) | (d > level ? 8 : 0);
      if (code === 0 || code === 15) continue;
      // crossing points on the four edges
      const bottom = () => [i + lerp(a, b), j];
      const right = () => [i + 1, j + lerp(b, c)];
      const top = () => [i + lerp(d, c), j + 1];
      const left = () => [i, j + lerp(a, d)];
      const pairs = {
        1: [[left, bottom]], 2: [[bottom, right]], 3: [[left, right]], 4: [[right, top]],
        6: [[bottom, top]], 7: [[left, top]], 8: [[left, top]], 9: [[bottom, top]],
        11: [[right, top]], 12: [[left, right]], 13: [[bottom, right]], 14: [[left, bottom]],
      };
      let list = pairs[code];
      if (code === 5 || code === 10) {
        const centreAbove = (a + b + c + d) / 4 > level;
        // code 5: a and c above; code 10: b and d above
        list = (code === 5) === centreAbove
          ? [[left, top], [bottom, right]]
          : [[left, bottom], [right, top]];
      }
      for (const [p, q] of list) {
        const [x0, y0] = p();
        const [x1, y1] = q();
        segs.push([x0, y0, x1, y1]);
      }
    }
  }
  return segs;
}

/** Round-number ticks covering [lo, hi], about `count` of them. */
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return Number.isFinite(lo) ? [lo] : [];
  const raw = (hi - lo) / Math.max(count, 1);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : Number(v.toPrecision(12)));
  }
  return out;
}

/** A short label for a number (3 significant digits, exponent form when tiny or huge). */
export function formatNumber(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(2);
  return String(Number(v.toPrecision(3)));
}

/** RGBA pixels (nx x ny, row 0 at the top = largest y) of the grid under a colour map. */
export function gridPixels(z, nx, ny, { cmap = "viridis", lo, hi, log = false }) {
  const px = new Uint8ClampedArray(nx * ny * 4);
  for (let j = 0; j < ny; j++) {
    const row = ny - 1 - j; // y grows upwards
    for (let i = 0; i < nx; i++) {
      const rgb = colorAt(cmap, normalize(z[j * nx + i], lo, hi, log));
      const k = 4 * (row * nx + i);
      if (rgb === null) {
        px.set([0, 0, 0, 0], k); // not computed yet: transparent
      } else {
        px.set([rgb[0], rgb[1], rgb[2], 255], k);
      }
    }
  }
  return px;
}

// ------------------------------------------------------------------------------------
// DOM (kept thin; exercised in the browser tests)

const PAD = { left: 52, right: 78, top: 26, bottom: 40 };

function readState(model) {
  const nx = model.get("nx");
  const ny = model.get("ny");
  const z = toFloat64Array(model.get("z"));
  return {
    nx, ny, z: z.length === nx * ny ? z : new Float64Array(nx * ny).fill(NaN),
    xRange: model.get("x_range"), yRange: model.get("y_range"),
    point: model.get("point"), log: model.get("log_scale"), cmap: model.get("colormap"),
    levels: model.get("levels"), xlabel: model.get("xlabel"), ylabel: model.get("ylabel"),
    title: model.get("title"), readout: model.get("readout"),
    readoutPoint: model.get("readout_point"), width: model.get("width"),
    height: model.get("height"), status: model.get("status"),
  };
}

function draw(ctx, s) {
  const W = s.width;
  const H = s.height;
  ctx.clearRect(0, 0, W, H);
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const tf = makeTransform({ xRange: s.xRange, yRange: s.yRange, width: plotW, height: plotH,
    left: PAD.left, top: PAD.top });
  const range = valueRange(s.z, s.log);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#222";
  ctx.strokeStyle = "#222";
  if (range) {
    const [lo, hi] = range;
    // heat map: one pixel per grid point, scaled up (cells centred on the grid points)
    const off = document.createElement("canvas");
    off.width = s.nx;
    off.height = s.ny;
    off.getContext("2d").putImageData(
      new ImageData(gridPixels(s.z, s.nx, s.ny, { cmap: s.cmap, lo, hi, log: s.log }), s.nx, s.ny), 0, 0);
    ctx.imageSmoothingEnabled = false;
    const cw = s.nx > 1 ? plotW / (s.nx - 1) : plotW;
    const ch = s.ny > 1 ? plotH / (s.ny - 1) : plotH;
    ctx.save();
    ctx.beginPath();
    ctx.rect(PAD.left, PAD.top, plotW, plotH);
    ctx.clip();
    ctx.drawImage(off, PAD.left - cw / 2, PAD.top - ch / 2, plotW + cw, plotH + ch);
    // contours
    ctx.strokeStyle = "rgba(255,255,255,0.75)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (const level of contourLevels(lo, hi, s.levels, s.log)) {
      for (const [gx0, gy0, gx1, gy1] of marchingSquares(s.z, s.nx, s.ny, level)) {
        const x0 = s.xRange[0] + (gx0 / (s.nx - 1)) * (s.xRange[1] - s.xRange[0]);
        const y0 = s.yRange[0] + (gy0 / (s.ny - 1)) * (s.yRange[1] - s.yRange[0]);
        const x1 = s.xRange[0] + (gx1 / (s.nx - 1)) * (s.xRange[1] - s.xRange[0]);
        const y1 = s.yRange[0] + (gy1 / (s.ny - 1)) * (s.yRange[1] - s.yRange[0]);
        const [p0, q0] = tf.toPixel(x0, y0);
        const [p1, q1] = tf.toPixel(x1, y1);
        ctx.moveTo(p0, q0);
        ctx.lineTo(p1, q1);
      }
    }
    ctx.stroke();
    ctx.restore();
    // colour bar
    const bx = W - PAD.right + 14;
    const bw = 12;
    for (let py = 0; py < plotH; py++) {
      const f = 1 - py / Math.max(plotH - 1, 1);
      const v = s.log ? lo * Math.pow(hi / lo, f) : lo + f * (hi - lo);
      const rgb = colorAt(s.cmap, normalize(v, lo, hi, s.log));
      ctx.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      ctx.fillRect(bx, PAD.top + py, bw, 1);
    }
    ctx.fillStyle = "#222";
    ctx.strokeStyle = "#222";
    ctx.strokeRect(bx, PAD.top, bw, plotH);
    const ticks = s.log
      ? contourLevels(lo, hi, 3, true).concat([lo, hi])
      : niceTicks(lo, hi, 5).filter((v) => v >= lo && v <= hi);
    for (const v of ticks) {
      const py = PAD.top + (1 - normalize(v, lo, hi, s.log)) * plotH;
      ctx.fillText(formatNumber(v), bx + bw + 3, py + 4);
    }
  }
  // axes
  ctx.strokeStyle = "#222";
  ctx.strokeRect(PAD.left, PAD.top, plotW, plotH);
  ctx.textAlign = "center";
  for (const v of niceTicks(s.xRange[0], s.xRange[1], 5)) {
    const [px] = tf.toPixel(v, s.yRange[0]);
    ctx.fillText(formatNumber(v), px, PAD.top + plotH + 14);
  }
  ctx.fillText(s.xlabel, PAD.left + plotW / 2, H - 6);
  ctx.fillText(s.title, PAD.left + plotW / 2, 16);
  ctx.textAlign = "right";
  for (const v of niceTicks(s.yRange[0], s.yRange[1], 5)) {
    const [, py] = tf.toPixel(s.xRange[0], v);
    ctx.fillText(formatNumber(v), PAD.left - 4, py + 4);
  }
  ctx.save();
  ctx.translate(12, PAD.top + plotH / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center";
  ctx.fillText(s.ylabel, 0, 0);
  ctx.restore();
  // the point
  const [x, y] = s.point;
  const [px, py] = tf.toPixel(x, y);
  ctx.beginPath();
  ctx.arc(px, py, 6, 0, 2 * Math.PI);
  ctx.fillStyle = "#e4572e";
  ctx.fill();
  ctx.lineWidth = 2;
  ctx.strokeStyle = "white";
  ctx.stroke();
  return tf;
}

function readoutText(s) {
  const [x, y] = s.point;
  const rp = s.readoutPoint;
  const fresh = rp && rp.length === 2 && rp[0] === x && rp[1] === y;
  if (fresh && s.readout) return s.readout;
  // the kernel has not answered for this point yet: show the grid's interpolation
  const gx = dataToGrid(x, s.xRange[0], s.xRange[1], s.nx);
  const gy = dataToGrid(y, s.yRange[0], s.yRange[1], s.ny);
  const approx = bilinear(s.z, s.nx, s.ny, gx, gy);
  return Number.isFinite(approx) ? `≈ ${formatNumber(approx)} (grid)` : "…";
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "jc-landscape-canvas";
  const canvas = document.createElement("canvas");
  const info = document.createElement("div");
  info.className = "jc-landscape-readout";
  root.append(canvas, info);
  el.appendChild(root);
  const ctx = canvas.getContext("2d");
  let tf = null;
  let dragging = false;
  let pending = null;
  let frame = 0;

  const redraw = () => {
    const s = readState(model);
    const dpr = globalThis.devicePixelRatio || 1;
    canvas.width = s.width * dpr;
    canvas.height = s.height * dpr;
    canvas.style.width = `${s.width}px`;
    canvas.style.height = `${s.height}px`;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    tf = draw(ctx, s);
    const [x, y] = s.point;
    info.textContent = `(${formatNumber(x)}, ${formatNumber(y)})  ${readoutText(s)}` +
      (s.status ? `  · ${s.status}` : "");
  };

  const send = () => {
    frame = 0;
    if (pending === null) return;
    model.set("point", pending);
    model.save_changes();
    pending = null;
  };

  const moveTo = (event) => {
    if (!tf) return;
    const rect = canvas.getBoundingClientRect();
    const [x, y] = tf.clampData(...tf.toData(event.clientX - rect.left, event.clientY - rect.top));
    pending = [x, y];
    // throttle: at most one message per animation frame
    if (!frame) frame = requestAnimationFrame(send);
  };

  const down = (event) => {
    dragging = true;
    canvas.setPointerCapture(event.pointerId);
    moveTo(event);
  };
  const move = (event) => dragging && moveTo(event);
  const up = (event) => {
    if (!dragging) return;
    dragging = false;
    canvas.releasePointerCapture(event.pointerId);
    moveTo(event);
  };
  canvas.addEventListener("pointerdown", down);
  canvas.addEventListener("pointermove", move);
  canvas.addEventListener("pointerup", up);

  const names = ["z", "nx", "ny", "x_range", "y_range", "point", "log_scale", "colormap",
    "levels", "xlabel", "ylabel", "title", "readout", "readout_point", "width", "height",
    "status"];
  for (const name of names) model.on(`change:${name}`, redraw);
  redraw();
  return () => {
    for (const name of names) model.off(`change:${name}`, redraw);
    if (frame) cancelAnimationFrame(frame);
    canvas.removeEventListener("pointerdown", down);
    canvas.removeEventListener("pointermove", move);
    canvas.removeEventListener("pointerup", up);
  };
}

export default { render };
