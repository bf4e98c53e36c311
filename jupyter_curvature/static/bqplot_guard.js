// A guard for a race in bqplot's axis view (bqplot 0.13 front end), installed once per page.
//
// bqplot's Axis view listens to its scale's "domain_changed" (in set_scale_promise) before it
// has made its d3 axis (create_axis, a few promise ticks later). A data update that changes
// the domain inside that window, as a live panel's pushes do while its figures render,
// reaches redraw_axisline with `this.axis` undefined: "TypeError: Cannot read properties of
// undefined (reading 'scale')", which ipywidgets catches and logs as "Error setting state".
// Backbone then drops the rest of the update, so marks keep stale data until the next push.
//
// The listener holds the function redraw_axisline had when it was registered, so wrapping
// redraw_axisline alone misses views made before the guard. The methods it calls are looked
// up on each call, so those are wrapped too: while the axis is not made, each does nothing.
// Nothing is lost: render makes the axis and then runs the same methods with the latest
// domain. (ColorAxis's own redraw_axisline already checks `this.axis`.)

export const GUARDED = Symbol.for("jupyter_curvature.bqplot_axis_guard");
/** The Axis view's methods that read `this.axis` unconditionally, in redraw_axisline's order. */
export const AXIS_METHODS = [
  "redraw_axisline",
  "update_scales",
  "set_tick_values",
  "tickformat_changed",
  "update_grid_lines",
];

const own = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);

/** Wrap the methods of AXIS_METHODS that `proto` defines, once; returns those wrapped now. */
export function guardAxisPrototype(proto) {
  if (own(proto, GUARDED)) return [];
  const wrapped = [];
  for (const name of AXIS_METHODS) {
    if (!own(proto, name) || typeof proto[name] !== "function") continue;
    const original = proto[name];
    proto[name] = function guardedAxisMethod(...args) {
      if (this.axis === undefined) return undefined; // not made yet: render redraws it
      return original.apply(this, args);
    };
    wrapped.push(name);
  }
  Object.defineProperty(proto, GUARDED, { value: wrapped });
  return wrapped;
}

/** The prototype in `cls`'s chain that defines redraw_axisline (a subclass may inherit it). */
function definingPrototype(cls) {
  for (let p = cls.prototype; p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
    if (own(p, "redraw_axisline")) return p;
  }
  return null;
}

/** Guard the view classes `names` of `module` that `manager` can load; returns those guarded.
 * `methods[name]` receives the methods guarded on the class that defines them. */
export async function guardAxisViews(manager, module, version, names, problems = [], methods = {}) {
  const guarded = [];
  for (const name of names) {
    let cls;
    try {
      cls = await manager.loadClass(name, module, version);
    } catch (err) {
      problems.push(`${name}: ${err}`); // this bqplot has no such view: nothing to guard
      continue;
    }
    const proto = typeof cls === "function" ? definingPrototype(cls) : null;
    if (proto === null) {
      problems.push(`${name}: no redraw_axisline to guard`);
      continue;
    }
    guardAxisPrototype(proto);
    methods[name] = proto[GUARDED];
    guarded.push(name);
  }
  return guarded;
}

export default {
  async render({ model, el }) {
    el.style.display = "none";
    const problems = [];
    const methods = {};
    const names = await guardAxisViews(
      model.widget_manager,
      model.get("bqplot_module"),
      model.get("bqplot_version"),
      model.get("view_names"),
      problems,
      methods,
    );
    // for the browser tests: which views and methods are guarded on this page, and why not
    document.body.dataset.jcBqplotAxisGuard = names.join(",");
    document.body.dataset.jcBqplotAxisGuardMethods = JSON.stringify(methods);
    if (problems.length) console.warn(`jupyter_curvature: bqplot axis guard: ${problems.join("; ")}`);
  },
};
