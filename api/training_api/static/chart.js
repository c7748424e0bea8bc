// Line charts as inline SVG, built with DOM calls: one polyline and one circle per point
// for each series, on axes that span every planned epoch (so the curve grows into them).

import { svg } from "./dom.js";

const WIDTH = 480;
const HEIGHT = 240;
const PAD = { left: 48, right: 12, top: 28, bottom: 34 };

function ticks(low, high, count) {
  if (high <= low) return [low];
  const raw = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) || raw;
  const values = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) {
    values.push(Number(v.toPrecision(12)));
  }
  return values;
}

// series: [{ name, key, points: [{ x, y }] }]; y: { min, max, format } (min/max optional).
export function lineChart({ label, series, xMax, y }) {
  const values = series.flatMap((s) => s.points.map((p) => p.y)).filter((v) => typeof v === "number");
  const low = y.min ?? Math.min(0, ...values);
  let high = y.max ?? (values.length ? Math.max(...values) * 1.05 : low + 1);
  if (!(high > low)) high = low + 1;
  const lastX = Math.max(1, xMax || 1, ...series.flatMap((s) => s.points.map((p) => p.x)));
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const sx = (x) => PAD.left + (lastX === 1 ? plotW / 2 : ((x - 1) / (lastX - 1)) * plotW);
  const sy = (v) => PAD.top + plotH - ((v - low) / (high - low)) * plotH;

  const root = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label, class: "line-chart",
  });
  const grid = svg("g", { class: "grid" });
  for (const v of ticks(low, high, 4)) {
    grid.append(
      svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: sy(v), y2: sy(v) }),
      svg("text", { x: PAD.left - 6, y: sy(v) + 4, class: "y-tick", text: y.format(v) }),
    );
  }
  const xTicks = lastX <= 10 ? ticks(1, lastX, lastX - 1) : [1, ...ticks(1, lastX, 8).filter((x) => x > 1)];
  for (const x of xTicks.filter((x) => Number.isInteger(x))) {
    grid.append(svg("text", { x: sx(x), y: HEIGHT - PAD.bottom + 16, class: "x-tick", text: x }));
  }
  grid.append(svg("text", { x: PAD.left + plotW / 2, y: HEIGHT - 4, class: "x-label", text: "epoch" }));
  root.append(grid);

  const legend = svg("g", { class: "legend" });
  series.forEach((s, index) => {
    const group = svg("g", { class: `series series-${s.key}`, "data-series": s.key });
    const points = s.points.filter((p) => typeof p.y === "number");
    if (points.length > 1) {
      group.append(svg("polyline", {
        points: points.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" "),
      }));
    }
    for (const p of points) {
      group.append(svg("circle", {
        class: "point", "data-series": s.key, "data-epoch": p.x, cx: sx(p.x), cy: sy(p.y), r: 3,
      }, svg("title", { text: `${s.name}, epoch ${p.x}: ${y.format(p.y)}` })));
    }
    root.append(group);
    const lx = PAD.left + index * 110;
    legend.append(
      svg("rect", { x: lx, y: 6, width: 10, height: 10, class: `swatch series-${s.key}` }),
      svg("text", { x: lx + 14, y: 15, text: s.name }),
    );
  });
  root.append(legend);
  if (!values.length) {
    root.append(svg("text", {
      x: PAD.left + plotW / 2, y: PAD.top + plotH / 2, class: "empty", text: "no epoch finished yet",
    }));
  }
  return root;
}
