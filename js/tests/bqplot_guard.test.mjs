// Unit tests of the bqplot axis guard (node --test js/tests).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  AXIS_METHODS,
  GUARDED,
  guardAxisPrototype,
  guardAxisViews,
} from "../../jupyter_curvature/static/bqplot_guard.js";

/** A stand-in for bqplot's Axis view: the same method chain, reading this.axis like it does. */
function axisClasses() {
  const calls = [];
  class AxisView {
    redraw_axisline() {
      this.update_scales();
      this.set_tick_values(true);
      this.tickformat_changed();
      this.update_grid_lines(true);
    }
    update_scales() {
      calls.push("update_scales");
      this.axis.scale(this.domain);
    }
    set_tick_values() {
      calls.push("set_tick_values");
      this.axis.tickValues();
    }
    tickformat_changed() {
      calls.push("tickformat_changed");
      this.axis.tickFormat();
    }
    update_grid_lines() {
      calls.push("update_grid_lines");
      this.axis.tickSize();
    }
  }
  class ColorAxisView extends AxisView {
    redraw_axisline() {
      if (this.axis) calls.push("color redraw"); // bqplot's ColorAxis checks already
    }
  }
  return { AxisView, ColorAxisView, calls };
}

function d3Axis(log) {
  const axis = {};
  for (const m of ["scale", "tickValues", "tickFormat", "tickSize"]) axis[m] = (x) => log.push([m, x]);
  return axis;
}

function manager(classes) {
  return {
    loaded: [],
    async loadClass(name, module, version) {
      this.loaded.push([name, module, version]);
      if (!(name in classes)) throw new Error(`no ${name}`);
      return classes[name];
    },
  };
}

test("the race: a listener bound before the guard still skips while the axis is not made", () => {
  const { AxisView, calls } = axisClasses();
  const view = new AxisView();
  const listener = view.redraw_axisline.bind(view); // registered before the guard, as bqplot does
  assert.throws(listener, TypeError); // "Cannot read properties of undefined (reading 'scale')"
  assert.deepEqual(guardAxisPrototype(AxisView.prototype), AXIS_METHODS);
  calls.length = 0;
  assert.doesNotThrow(listener);
  assert.deepEqual(calls, []);
  // once the axis is made everything runs, with the latest domain
  const log = [];
  view.axis = d3Axis(log);
  view.domain = [0, 3];
  listener();
  assert.deepEqual(calls, ["update_scales", "set_tick_values", "tickformat_changed", "update_grid_lines"]);
  assert.deepEqual(log[0], ["scale", [0, 3]]);
});

test("the guard wraps once, and only the methods a prototype defines", () => {
  const { AxisView, ColorAxisView } = axisClasses();
  assert.deepEqual(guardAxisPrototype(ColorAxisView.prototype), ["redraw_axisline"]);
  assert.deepEqual(guardAxisPrototype(AxisView.prototype), AXIS_METHODS);
  const wrapped = AxisView.prototype.update_scales;
  assert.deepEqual(guardAxisPrototype(AxisView.prototype), []);
  assert.equal(AxisView.prototype.update_scales, wrapped);
  assert.deepEqual(AxisView.prototype[GUARDED], AXIS_METHODS);
});

test("guardAxisViews loads the views from the widget manager and guards the defining class", async () => {
  const { AxisView, ColorAxisView, calls } = axisClasses();
  const m = manager({ Axis: AxisView, ColorAxis: ColorAxisView });
  const methods = {};
  const names = await guardAxisViews(m, "bqplot", "^0.6", ["Axis", "ColorAxis"], [], methods);
  assert.deepEqual(names, ["Axis", "ColorAxis"]);
  assert.deepEqual(methods, { Axis: AXIS_METHODS, ColorAxis: ["redraw_axisline"] });
  assert.deepEqual(m.loaded, [["Axis", "bqplot", "^0.6"], ["ColorAxis", "bqplot", "^0.6"]]);
  const view = new ColorAxisView();
  view.update_scales(); // inherited from the guarded Axis prototype: no axis, no call
  assert.deepEqual(calls, []);
  // a second panel on the same page guards nothing twice
  assert.deepEqual(await guardAxisViews(m, "bqplot", "^0.6", ["Axis", "ColorAxis"]), ["Axis", "ColorAxis"]);
  assert.deepEqual(AxisView.prototype[GUARDED], AXIS_METHODS);
});

test("a bqplot without one of the views is no error, and says so", async () => {
  const { AxisView } = axisClasses();
  const problems = [];
  const names = await guardAxisViews(manager({ Axis: AxisView }), "bqplot", "*", ["Axis", "ColorAxis"], problems);
  assert.deepEqual(names, ["Axis"]);
  assert.deepEqual(problems, ["ColorAxis: Error: no ColorAxis"]);
});
