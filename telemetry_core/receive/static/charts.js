/* telemetry-core: tiny SVG bar charts, no dependencies (the dashboard and `telemetry report`). */
(function (global) {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function short(value) {
    if (value >= 1e9) return (value / 1e9).toFixed(1) + "G";
    if (value >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (value >= 1e4) return (value / 1e3).toFixed(0) + "k";
    if (value >= 100 || value === Math.round(value)) return String(Math.round(value));
    return value.toFixed(value >= 10 ? 1 : 2);
  }

  /* Draw bars of `values` (labels under them, thinned to fit) into `container`, replacing what was there.
     options: title, width, height, color, unit (appended to the tooltip), maxBar (widest slot, px). */
  function bars(container, labels, values, options) {
    options = options || {};
    var width = options.width || 480, height = options.height || 160;
    var left = 44, bottom = 34, top = options.title ? 22 : 8, right = 8;
    var plotW = width - left - right, plotH = height - top - bottom;
    var max = Math.max.apply(null, values.concat([0])) || 1;
    var svg = el("svg", {viewBox: "0 0 " + width + " " + height, width: "100%", role: "img",
                         class: "chart", "aria-label": options.title || "chart"});
    if (options.title) svg.appendChild(el("text", {x: left, y: 15, class: "chart-title"}, options.title));
    [0, 0.5, 1].forEach(function (f) {
      var y = top + plotH - f * plotH;
      svg.appendChild(el("line", {x1: left, x2: left + plotW, y1: y, y2: y, class: "chart-grid"}));
      svg.appendChild(el("text", {x: left - 4, y: y + 4, "text-anchor": "end", class: "chart-axis"}, short(max * f)));
    });
    var n = values.length || 1, slot = Math.min(plotW / n, options.maxBar || Infinity), gap = Math.min(2, slot * 0.2);
    var every = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(plotW / 56))));
    values.forEach(function (value, i) {
      var h = Math.max(0, value / max * plotH), x = left + i * slot + gap / 2;
      var bar = el("rect", {x: x, y: top + plotH - h, width: Math.max(0.5, slot - gap), height: h,
                            fill: options.color || "#3b73b9", class: "chart-bar"});
      bar.appendChild(el("title", {}, labels[i] + ": " + value + (options.unit ? " " + options.unit : "")));
      svg.appendChild(bar);
      if (i % every === 0) {
        svg.appendChild(el("text", {x: x + (slot - gap) / 2, y: height - bottom + 14, "text-anchor": "middle",
                                    class: "chart-axis"}, String(labels[i])));
      }
    });
    while (container.firstChild) container.removeChild(container.firstChild);
    container.appendChild(svg);
    return svg;
  }

  global.TelemetryCharts = {bars: bars, short: short};
})(window);
