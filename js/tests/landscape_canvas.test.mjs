// Unit tests of the pure functions of the landscape canvas (node --test js/tests).
import assert from "node:assert/strict";
import { test } from "node:test";

import widget, {
  COLORMAPS,
  bilinear,
  clamp,
  colorAt,
  contourLevels,
  dataToGrid,
  formatNumber,
  gridPixels,
  makeTransform,
  marchingSquares,
  niceTicks,
  normalize,
  toFloat64Array,
  valueRange,
} from "../../jupyter_curvature/static/landscape_canvas.js";

const close = (a, b, tol = 1e-12) => assert.ok(Math.abs(a - b) <= tol, `${a} != ${b}`);

test("the module is an anywidget front end (default export with render)", () => {
  assert.equal(typeof widget.render, "function");
});

test("colour maps hit their end anchors and interpolate linearly between anchors", () => {
  for (const [name, anchors] of Object.entries(COLORMAPS)) {
    assert.deepEqual(colorAt(name, 0), anchors[0]);
    assert.deepEqual(colorAt(name, 1), anchors[anchors.length - 1]);
    assert.deepEqual(colorAt(name, -3), anchors[0]); // clamped
    assert.deepEqual(colorAt(name, 7), anchors[anchors.length - 1]);
  }
  // midway between the two anchors of greys: (255 + 0) / 2 rounded
  assert.deepEqual(colorAt("greys", 0.5), [128, 128, 128]);
  // viridis: t exactly at anchor 3 of 10
  assert.deepEqual(colorAt("viridis", 3 / 9), COLORMAPS.viridis[3]);
  assert.equal(colorAt("viridis", NaN), null);
  assert.throws(() => colorAt("jet", 0.5), /unknown colour map/);
});

test("toFloat64Array reads little-endian float64 from DataView, buffers and arrays", () => {
  const values = [1.5, -2, NaN, 1e-300];
  const buf = new ArrayBuffer(32);
  const dv = new DataView(buf);
  values.forEach((v, i) => dv.setFloat64(8 * i, v, true));
  for (const input of [dv, buf, new Uint8Array(buf), new Float64Array(values), values]) {
    const out = toFloat64Array(input);
    assert.equal(out.length, 4);
    assert.equal(out[0], 1.5);
    assert.equal(out[1], -2);
    assert.ok(Number.isNaN(out[2]));
    assert.equal(out[3], 1e-300);
  }
  // a view into the middle of a larger buffer
  const big = new Uint8Array(40);
  new DataView(big.buffer).setFloat64(8, 42, true);
  assert.deepEqual(Array.from(toFloat64Array(new Uint8Array(big.buffer, 8, 8))), [42]);
  assert.equal(toFloat64Array(null).length, 0);
  assert.ok(Number.isNaN(toFloat64Array([null])[0]));
});

test("valueRange skips NaN (and non-positive values on a log scale)", () => {
  assert.deepEqual(valueRange([3, NaN, -1, 2]), [-1, 3]);
  assert.deepEqual(valueRange([3, NaN, -1, 2], true), [2, 3]);
  assert.equal(valueRange([NaN, NaN]), null);
  assert.equal(valueRange([-1, 0], true), null);
});

test("normalize maps the range to [0, 1], linearly or in log10", () => {
  assert.equal(normalize(5, 0, 10), 0.5);
  close(normalize(10, 1, 100, true), 0.5);
  assert.ok(Number.isNaN(normalize(-1, 1, 100, true)));
  assert.ok(Number.isNaN(normalize(NaN, 0, 1)));
  assert.equal(normalize(3, 3, 3), 0.5); // a flat surface sits mid-map
});

test("contour levels lie strictly inside the range, evenly or geometrically spaced", () => {
  assert.deepEqual(contourLevels(0, 10, 4), [2, 4, 6, 8]);
  const log = contourLevels(1, 1000, 2, true);
  close(log[0], 10, 1e-9);
  close(log[1], 100, 1e-9);
  assert.deepEqual(contourLevels(1, 1, 5), []);
  assert.deepEqual(contourLevels(0, 1, 0), []);
  assert.throws(() => contourLevels(0, 1, 3, true), /positive/);
});

test("makeTransform maps data corners to the plot corners (y up) and back", () => {
  const tf = makeTransform({ xRange: [-1, 1], yRange: [-2, 2], width: 200, height: 100, left: 10, top: 5 });
  assert.deepEqual(tf.toPixel(-1, 2), [10, 5]); // top-left
  assert.deepEqual(tf.toPixel(1, -2), [210, 105]); // bottom-right
  assert.deepEqual(tf.toPixel(0, 0), [110, 55]);
  for (const [x, y] of [[0.3, -1.7], [-0.99, 0.01], [1, 2]]) {
    const [px, py] = tf.toPixel(x, y);
    const [x2, y2] = tf.toData(px, py);
    close(x2, x, 1e-12);
    close(y2, y, 1e-12);
  }
  assert.deepEqual(tf.clampData(5, -5), [1, -2]);
});

test("bilinear interpolation is exact on a bilinear function and hits the nodes", () => {
  const nx = 4;
  const ny = 3;
  const f = (x, y) => 2 + 3 * x - y + 0.5 * x * y;
  const z = new Float64Array(nx * ny);
  for (let j = 0; j < ny; j++) for (let i = 0; i < nx; i++) z[j * nx + i] = f(i, j);
  for (const [gx, gy] of [[0, 0], [3, 2], [1.25, 0.5], [2.9, 1.1], [0.5, 2]]) {
    close(bilinear(z, nx, ny, gx, gy), f(gx, gy), 1e-12);
  }
  close(bilinear(z, nx, ny, 10, -4), f(3, 0), 1e-12); // clamped to the grid
  assert.equal(bilinear([7], 1, 1, 0.3, 0.6), 7);
});

test("dataToGrid maps an axis from lo..hi onto grid positions 0..n-1", () => {
  assert.equal(dataToGrid(-1, -1, 1, 21), 0);
  assert.equal(dataToGrid(1, -1, 1, 21), 20);
  assert.equal(dataToGrid(0, -1, 1, 21), 10);
  assert.equal(dataToGrid(0.5, 0, 1, 1), 0);
});

test("marching squares: a plane z = x gives the vertical line x = level", () => {
  const nx = 5;
  const ny = 4;
  const z = new Float64Array(nx * ny);
  for (let j = 0; j < ny; j++) for (let i = 0; i < nx; i++) z[j * nx + i] = i;
  const segs = marchingSquares(z, nx, ny, 2.5);
  assert.equal(segs.length, ny - 1); // one segment per row of cells
  for (const [x0, y0, x1, y1] of segs) {
    close(x0, 2.5);
    close(x1, 2.5);
    assert.equal(Math.abs(y1 - y0), 1);
  }
});

test("marching squares: a cone's level set stays on its circle; NaN cells are skipped", () => {
  const n = 41;
  const z = new Float64Array(n * n);
  const c = 20;
  for (let j = 0; j < n; j++) for (let i = 0; i < n; i++) z[j * n + i] = Math.hypot(i - c, j - c);
  const segs = marchingSquares(z, n, n, 10);
  assert.ok(segs.length > 40);
  for (const [x0, y0, x1, y1] of segs) {
    // linear interpolation of a cone is within a cell's curvature error of the circle
    assert.ok(Math.abs(Math.hypot(x0 - c, y0 - c) - 10) < 0.06);
    assert.ok(Math.abs(Math.hypot(x1 - c, y1 - c) - 10) < 0.06);
  }
  const withNaN = Float64Array.from(z);
  withNaN.fill(NaN, 0, n * n);
  assert.deepEqual(marchingSquares(withNaN, n, n, 10), []);
});

test("marching squares resolves saddles by the cell mean", () => {
  // a = c = 1 above, b = d = 0 below, level 0.4: mean 0.5 above -> corners b, d cut off
  const z = [1, 0, 0, 1]; // row j=0: a=1, b=0; row j=1: d=0, c=1
  const segs = marchingSquares(z, 2, 2, 0.4);
  assert.equal(segs.length, 2);
  const ends = segs.map(([x0, y0, x1, y1]) => [[x0, y0], [x1, y1]]);
  // segment near d=(0,1): from left edge (0, 0.6) to top edge (0.4, 1)
  assert.ok(ends.some(([p, q]) => close2(p, [0, 0.6]) && close2(q, [0.4, 1])));
  // segment near b=(1,0): from bottom edge (0.6, 0) to right edge (1, 0.4)
  assert.ok(ends.some(([p, q]) => close2(p, [0.6, 0]) && close2(q, [1, 0.4])));
});

function close2(p, q) {
  return Math.abs(p[0] - q[0]) < 1e-12 && Math.abs(p[1] - q[1]) < 1e-12;
}

test("niceTicks gives round steps covering the range", () => {
  assert.deepEqual(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(-1, 1, 4), [-1, -0.5, 0, 0.5, 1]);
  assert.deepEqual(niceTicks(3, 3), [3]);
  const t = niceTicks(0.013, 0.0871, 5);
  for (const v of t) assert.ok(v >= 0.013 - 1e-12 && v <= 0.0871 + 1e-12);
  assert.ok(t.length >= 3 && t.length <= 8);
});

test("formatNumber keeps 3 significant digits and uses exponents at the extremes", () => {
  assert.equal(formatNumber(0.123456), "0.123");
  assert.equal(formatNumber(12.345), "12.3");
  assert.equal(formatNumber(0), "0");
  assert.equal(formatNumber(1.5e-5), "1.50e-5");
  assert.equal(formatNumber(123456), "1.23e+5");
  assert.equal(formatNumber(NaN), "NaN");
});

test("gridPixels flips rows (largest y on top) and leaves NaN transparent", () => {
  // 2 x 2 grid: row j = 0 (bottom) is [0, NaN], row j = 1 (top) is [1, 1]
  const px = gridPixels([0, NaN, 1, 1], 2, 2, { cmap: "greys", lo: 0, hi: 1 });
  // top row of the image = j = 1 -> black (t = 1)
  assert.deepEqual(Array.from(px.slice(0, 4)), [0, 0, 0, 255]);
  // bottom-left = j = 0, i = 0 -> white; bottom-right is NaN -> transparent
  assert.deepEqual(Array.from(px.slice(8, 12)), [255, 255, 255, 255]);
  assert.deepEqual(Array.from(px.slice(12, 16)), [0, 0, 0, 0]);
});

test("clamp", () => {
  assert.equal(clamp(5, 0, 1), 1);
  assert.equal(clamp(-5, 0, 1), 0);
  assert.equal(clamp(0.5, 0, 1), 0.5);
});
