// Draws the KPI dashboard charts from the JSON the page embeds; Chart.js is served from this project's static files.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("dashboard-data").textContent);
  const common = { responsive: true, maintainAspectRatio: false, animation: false, plugins: { legend: { display: true } } };
  const asNumbers = (values) => values.map((value) => (value === null ? null : Number(value)));
  function draw(id, type, labels, datasets, options) {
    new Chart(document.getElementById(id), { type: type, data: { labels: labels, datasets: datasets }, options: Object.assign({}, common, options || {}) });
  }
  draw("chart-spend", "bar", data.days, [{ label: "USD", data: asNumbers(data.spend), backgroundColor: "#417690" }]);
  draw("chart-requests", "line", data.days, [{ label: "requests", data: data.requests, borderColor: "#79aec8", fill: false }]);
  draw("chart-rates", "line", data.days, [
    { label: "cache hit %", data: data.cache_hit_rate, borderColor: "#2e8540" },
    { label: "error %", data: data.error_rate, borderColor: "#ba2121" },
    { label: "routed to large %", data: data.routed_to_large, borderColor: "#e0a100" },
  ]);
  draw("chart-latency", "line", data.days, [{ label: "p95 ms", data: data.p95_latency_ms, borderColor: "#6f42c1" }]);
  draw("chart-models", "doughnut", Object.keys(data.spend_by_model), [
    { data: asNumbers(Object.values(data.spend_by_model)), backgroundColor: ["#417690", "#79aec8", "#e0a100", "#2e8540", "#ba2121", "#6f42c1"] },
  ]);
  draw("chart-savings", "bar", Object.keys(data.savings), [{ label: "USD saved", data: asNumbers(Object.values(data.savings)), backgroundColor: "#2e8540" }]);
})();
