// corral console: live regions refreshed when the server says the state
// changed (server-sent events), followed logs, and charts drawn with uPlot.
"use strict";

function refreshLive() {
  const regions = document.querySelectorAll("[data-live]");
  if (regions.length === 0) return;
  fetch(location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
    .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
    .then((text) => {
      const fresh = new DOMParser().parseFromString(text, "text/html");
      for (const region of regions) {
        const next = fresh.getElementById(region.id);
        if (next && next.innerHTML !== region.innerHTML) region.innerHTML = next.innerHTML;
      }
    })
    .catch(() => {});
}

// Open connections (the event stream, a followed log) are closed when the page
// is left, so that pages kept in the back/forward cache hold none of the
// browser's few connections to this server; they open again if it comes back.
let events = null;
let following = null;

function listen() {
  if (!document.querySelector("[data-live]") || !window.EventSource) return;
  // At most one refresh every two seconds, however busy the server is.
  events = new EventSource("/events");
  let pending = null;
  let last = 0;
  events.addEventListener("change", () => {
    if (pending) return;
    const wait = Math.max(250, last + 2000 - Date.now());
    pending = setTimeout(() => { pending = null; last = Date.now(); refreshLive(); }, wait);
  });
}

function followLog() {
  const pre = document.querySelector("pre[data-follow]");
  if (!pre) return;
  following = new AbortController();
  fetch(pre.dataset.follow, { credentials: "same-origin", signal: following.signal }).then((response) => {
    if (!response.ok || !response.body) return;
    pre.textContent = "";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const pump = () => reader.read().then(({ done, value }) => {
      if (done) { pre.dataset.ended = "true"; return; }
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent += decoder.decode(value, { stream: true });
      if (atEnd) pre.scrollTop = pre.scrollHeight;
      return pump();
    });
    return pump();
  }).catch(() => {});
}

function drawCharts() {
  if (!window.uPlot) return;
  for (const script of document.querySelectorAll("script[data-chart]")) {
    const target = document.getElementById(script.dataset.chart);
    const data = JSON.parse(script.textContent);
    if (!target || !data.series || data.series.length === 0) continue;
    const palette = ["#2f6fb3", "#b86e00", "#1d6b34", "#8e44ad", "#b3261e", "#117a8b"];
    const width = () => Math.max(200, Math.floor(target.getBoundingClientRect().width));
    const opts = {
      width: width(),
      height: 220,
      series: [{}].concat(data.series.map((s, i) => ({ label: s.label, stroke: palette[i % palette.length], width: 1.5 }))),
      // The time axis spans the range asked for, however few the samples.
      scales: data.from && data.to ? { x: { time: true, range: [data.from, data.to] } } : {},
      axes: [{ stroke: "#8a94a0" }, { stroke: "#8a94a0", label: data.unit || "" }],
    };
    const chart = new uPlot(opts, [data.x].concat(data.series.map((s) => s.y)), target);
    new ResizeObserver(() => chart.setSize({ width: width(), height: 220 })).observe(target);
  }
}

document.addEventListener("DOMContentLoaded", () => { listen(); followLog(); drawCharts(); });
window.addEventListener("pagehide", () => {
  if (events) { events.close(); events = null; }
  if (following) { following.abort(); following = null; }
});
window.addEventListener("pageshow", (e) => {
  if (e.persisted) { listen(); followLog(); }
});
