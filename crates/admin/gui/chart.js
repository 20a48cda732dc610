// A sparkline: the last N values as an SVG polyline, redrawn in place.

const NS = "http://www.w3.org/2000/svg";

export function sparkline(label, width = 220, height = 44) {
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const line = document.createElementNS(NS, "polyline");
  svg.append(line);
  const values = [];
  svg.push = (v, keep = 60) => {
    values.push(Number.isFinite(v) ? v : 0);
    while (values.length > keep) values.shift();
    const max = Math.max(1, ...values);
    const step = width / Math.max(1, keep - 1);
    const offset = (keep - values.length) * step;
    line.setAttribute("points", values.map((x, i) =>
      `${(offset + i * step).toFixed(1)},${(height - 2 - (x / max) * (height - 4)).toFixed(1)}`).join(" "));
  };
  return svg;
}
