// corral console: live regions refreshed when the server says the state
// changed (server-sent events, one stream shared by a browser's tabs),
// followed logs, times in the viewer's zone, and charts drawn with uPlot.
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
        if (next) localTimes(next);
        if (next && next.innerHTML !== region.innerHTML) region.innerHTML = next.innerHTML;
      }
    })
    .catch(() => {});
}

// A browser has six connections to this server (HTTP/1.1), shared by all its
// tabs: ten tabs each holding an event stream and a followed log would take
// them all. So the tabs share one event stream: the tab holding the Web Lock
// "corral-events" opens /events and relays each change on a BroadcastChannel;
// the others listen there, and when the holding tab closes (or is left) its
// lock is freed and a waiting tab takes over. At most LOG_SLOTS tabs stream a
// followed log (one lock each); the others read what is stored so far, again
// every few seconds, with requests that end. Without Web Locks (not a secure
// context) each tab holds its own streams, as before.
//
// Open connections are closed when the page is left, so that pages kept in
// the back/forward cache hold none; they open again if it comes back.
const LOG_SLOTS = 2;
const LOG_POLL_MS = 3000;
let events = null;
let channel = null;
let releaseEvents = null;
let waitingForEvents = null;
let following = null;

// At most one refresh every two seconds, however busy the server is.
let pendingRefresh = null;
let lastRefresh = 0;
function changed() {
  if (pendingRefresh) return;
  const wait = Math.max(250, lastRefresh + 2000 - Date.now());
  pendingRefresh = setTimeout(() => { pendingRefresh = null; lastRefresh = Date.now(); refreshLive(); }, wait);
}

function openEvents(relay) {
  events = new EventSource("/events");
  events.addEventListener("change", () => {
    changed();
    if (relay) relay.postMessage("change");
  });
}

function listen() {
  if (!document.querySelector("[data-live]") || !window.EventSource) return;
  if (!navigator.locks || !window.BroadcastChannel) { openEvents(null); return; }
  channel = new BroadcastChannel("corral-events");
  channel.onmessage = (e) => { if (e.data === "change") changed(); };
  waitingForEvents = new AbortController();
  const relay = channel;
  navigator.locks.request("corral-events", { signal: waitingForEvents.signal }, () => new Promise((release) => {
    releaseEvents = release;
    openEvents(relay);
  })).catch(() => {});
}

function stopListening() {
  if (events) { events.close(); events = null; }
  if (releaseEvents) { releaseEvents(); releaseEvents = null; }
  if (waitingForEvents) { waitingForEvents.abort(); waitingForEvents = null; }
  if (channel) { channel.close(); channel = null; }
}

function showLog(pre, text, replace) {
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  if (replace) pre.textContent = text; else pre.textContent += text;
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

// Streams the log until the run ends (or the page is left).
function streamLog(pre, signal) {
  return fetch(pre.dataset.follow, { credentials: "same-origin", signal }).then((response) => {
    if (!response.ok || !response.body) return;
    pre.textContent = "";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const pump = () => reader.read().then(({ done, value }) => {
      if (done) { pre.dataset.ended = "true"; return; }
      showLog(pre, decoder.decode(value, { stream: true }), false);
      return pump();
    });
    return pump();
  }).catch(() => {});
}

// Reads the log as stored so far; whether the run has ended.
function readLog(pre, signal) {
  return fetch(pre.dataset.follow + "?follow=false", { credentials: "same-origin", signal })
    .then((response) => {
      if (!response.ok) return false;
      const ended = response.headers.get("corral-run-ended") === "true";
      return response.text().then((text) => {
        if (text !== pre.textContent) showLog(pre, text, true);
        if (ended) pre.dataset.ended = "true";
        return ended;
      });
    })
    .catch(() => false);
}

function pause(ms, signal) {
  return new Promise((done) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); done(); }, { once: true });
  });
}

async function followLog() {
  const pre = document.querySelector("pre[data-follow]");
  if (!pre) return;
  following = new AbortController();
  const signal = following.signal;
  if (!navigator.locks) { streamLog(pre, signal); return; }
  while (!signal.aborted) {
    for (let slot = 0; slot < LOG_SLOTS; slot++) {
      let streamed = false;
      await navigator.locks.request("corral-log-" + slot, { ifAvailable: true }, (lock) => {
        if (!lock) return null;
        streamed = true;
        return streamLog(pre, signal);
      }).catch(() => {});
      if (streamed) return;
    }
    if (await readLog(pre, signal)) return;
    await pause(LOG_POLL_MS, signal);
  }
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

// Times come in UTC (`<time datetime>`); shown in the viewer's own zone.
function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const at = new Date(t.getAttribute("datetime"));
    if (isNaN(at)) continue;
    t.title = t.getAttribute("datetime");
    t.textContent = at.toLocaleString(undefined, {
      year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
    });
  }
}

document.addEventListener("DOMContentLoaded", () => { localTimes(document); listen(); followLog(); drawCharts(); });
window.addEventListener("pagehide", () => {
  stopListening();
  if (following) { following.abort(); following = null; }
});
window.addEventListener("pageshow", (e) => {
  if (e.persisted) { listen(); followLog(); }
});
