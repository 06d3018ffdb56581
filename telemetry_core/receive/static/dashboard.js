/* telemetry-core dashboard: reads /status and shows the whole node (docs/metrics.md, "The dashboard"). */
(function () {
  "use strict";
  var REFRESH_S = 2, LOCAL_POINTS = 450;
  var local = [];  // what this page saw, when the node has no history (telemetry serve without run)

  function $(selector) { return document.querySelector(selector); }
  function number(value) { return Number(value || 0).toLocaleString("en-US"); }
  function bytes(value) {
    if (value === null || value === undefined) return "unknown";
    var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (value >= 1000 && i < units.length - 1) { value /= 1000; i += 1; }
    return value.toFixed(i ? 1 : 0) + " " + units[i];
  }
  function seconds(value) {
    if (value < 120) return value.toFixed(1) + " s";
    if (value < 7200) return (value / 60).toFixed(1) + " min";
    return (value / 3600).toFixed(1) + " h";
  }
  function ms(value) { return value === undefined ? "–" : (value * 1000).toFixed(3) + " ms"; }
  function cell(row, text, numeric) {
    var td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    row.appendChild(td);
    return td;
  }
  function fill(tbody, rows) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    rows.forEach(function (values) {
      var tr = document.createElement("tr");
      values.cells.forEach(function (value, i) { cell(tr, value, i > 0 && values.numeric !== false); });
      if (values.className) tr.className = values.className;
      if (values.key) tr.dataset.key = values.key;
      tbody.appendChild(tr);
    });
  }
  function sumValues(object) {
    return Object.keys(object || {}).reduce(function (total, key) { return total + (object[key] || 0); }, 0);
  }

  function history(status) {
    var server = status.history || [];
    var point = {t: status.now, totals: status.totals, rejected: (status.node.edge || {}).rejected || {}};
    if (server.length >= 2) return server.concat([point]);
    local.push(point);
    if (local.length > LOCAL_POINTS) local.shift();
    return local;
  }

  function rates(points, pick) {
    var labels = [], values = [];
    for (var i = 1; i < points.length; i += 1) {
      var dt = points[i].t - points[i - 1].t;
      if (dt <= 0) continue;
      var when = new Date(points[i].t * 1000);
      labels.push(when.toTimeString().slice(0, 8));
      values.push(Math.max(0, (pick(points[i]) - pick(points[i - 1])) / dt));
    }
    return {labels: labels, values: values};
  }

  function drawThroughput(points) {
    var series = [
      ["accepted", "accepted / s", "#2a9d8f", function (p) { return p.totals.accepted; }],
      ["rejected", "rejected / s", "#e76f51", function (p) { return p.totals.rejected; }],
      ["processed", "processed records / s", "#3b73b9", function (p) { return p.totals.processed; }],
      ["published", "published files / s", "#8e6cc1", function (p) { return p.totals.published; }]
    ];
    series.forEach(function (s) {
      var r = rates(points, s[3]);
      TelemetryCharts.bars($("#chart-" + s[0]), r.labels, r.values, {title: s[1], color: s[2], unit: "/s"});
    });
    var span = points.length > 1 ? points[points.length - 1].t - points[0].t : 0;
    $("#window").textContent = "(per second, last " + seconds(span) + ")";
    var first = points[0] || {rejected: {}}, last = points[points.length - 1] || {rejected: {}};
    var reasons = Object.keys(last.rejected || {}).sort();
    fill($("#rejected-reasons tbody"), reasons.map(function (reason) {
      var delta = (last.rejected[reason] || 0) - ((first.rejected || {})[reason] || 0);
      return {key: reason, cells: [reason, number(last.rejected[reason]), span > 0 ? (delta / span).toFixed(2) : "–"]};
    }));
  }

  function hookRows(status) {
    var rows = [];
    Object.keys(status.processes).sort().forEach(function (name) {
      var hooks = (status.processes[name].stats || {}).hooks || {};
      Object.keys(hooks).sort().forEach(function (hook) {
        var stats = hooks[hook], latency = stats.latency || {};
        rows.push({key: hook + "@" + name, className: stats.errors ? "errors" : "",
                   cells: [hook, name, number(stats.calls), number(stats.errors), ms(latency.median),
                           ms(latency["99percentile"])]});
      });
    });
    rows.forEach(function (row) { row.numeric = true; });
    return rows;
  }

  function processRows(status) {
    var restarts = ((status.processes.run || {}).stats || {}).services || {};
    var rows = Object.keys(status.processes).sort().map(function (name) {
      var p = status.processes[name];
      var age = p.part_of ? "counted in " + p.part_of : seconds(p.age_s);
      return {key: name, cells: [name, String(p.pid), age, number(p.restarts)]};
    });
    Object.keys(restarts).sort().forEach(function (service) {
      rows.push({key: "service:" + service, cells: ["service " + service, "", "", number(restarts[service].restarts)]});
    });
    var supervisor = (status.supervisor || {}).edge_supervisor;
    if (supervisor) rows.push({key: "edge workers", cells: ["edge workers (supervisor)", "", "", number(supervisor.restarts)]});
    return rows;
  }

  function render(status) {
    $("#node-id").textContent = status.node_id;
    var up = status.now - status.started_at;
    $("#summary").textContent = "up " + seconds(up) + " · " + Object.keys(status.processes).length +
      " processes · answered by " + status.answered_by + " · " + new Date(status.now * 1000).toLocaleTimeString();
    Object.keys(status.totals).forEach(function (name) {
      var node = document.querySelector('[data-total="' + name + '"]');
      if (node) node.textContent = number(status.totals[name]);
    });
    $("#backlog-files").textContent = number(status.spool_backlog.files);
    $("#backlog-age").textContent = seconds(status.spool_backlog.oldest_age_s);
    $("#disk-free").textContent = bytes(status.disk.free_bytes) + " of " + bytes(status.disk.total_bytes);
    var invalid = (status.node.processor || {}).invalid || {};
    fill($("#quarantine tbody"), Object.keys(invalid).sort().map(function (category) {
      return {key: category, cells: [category, number(invalid[category])]};
    }).concat([{key: "total", cells: ["total", number(sumValues(invalid))]}]));
    fill($("#processes tbody"), processRows(status));
    fill($("#hooks tbody"), hookRows(status));
    drawThroughput(history(status));
    document.body.dataset.updated = String(status.now);
  }

  function refresh() {
    fetch("/status", {credentials: "same-origin", cache: "no-store"}).then(function (response) {
      if (response.status === 401) { location.reload(); throw new Error("the admin token is needed"); }
      if (!response.ok) throw new Error("/status answered " + response.status);
      return response.json();
    }).then(function (status) {
      $("#error").hidden = true;
      render(status);
    }).catch(function (error) {
      $("#error").hidden = false;
      $("#error").textContent = "Cannot read /status: " + error.message;
    }).finally(function () { setTimeout(refresh, REFRESH_S * 1000); });
  }

  $("#refresh").textContent = String(REFRESH_S);
  refresh();
})();
