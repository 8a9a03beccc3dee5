// qrfarm console: live progress by server-sent events, and selection helpers.
// Plain JavaScript, no libraries: nothing is fetched from elsewhere.
"use strict";

function text(el, value) { if (el) { el.textContent = value; } }

function showProgress(job) {
  document.querySelectorAll('[data-job="' + job.id + '"]').forEach(function (row) {
    var state = row.querySelector("[data-field=state]");
    if (state) { text(state, job.state); state.className = "state state-" + job.state; }
    text(row.querySelector("[data-field=recorded]"), String(job.recorded));
    if (job.expected !== null && job.expected !== undefined) {
      text(row.querySelector("[data-field=expected]"), String(job.expected));
    }
    var p = job.progress || {};
    var done = (p.completed || 0) + (p.failed || 0) + (p.warning || 0);
    var ended = ["completed", "partial", "failed", "cancelled"].indexOf(job.state) >= 0;
    var bar = row.querySelector("progress");
    if (bar) {
      if (ended) { bar.max = 1; bar.value = 1; }
      else if (p.remaining !== null && p.remaining !== undefined) {
        bar.max = Math.max(done + p.remaining, 1); bar.value = done;
      }
      bar.setAttribute("aria-valuetext", job.state + ", " + done + " done");
    }
    // While it runs: the PACS's own count from its pending responses; once
    // ended, what was recorded is the truth and the recorded column says it.
    text(row.querySelector("[data-field=done]"), ended ? "" :
         done + (p.remaining !== null && p.remaining !== undefined ? " of " + (done + p.remaining) : ""));
  });
}

function follow() {
  var ids = Array.prototype.map.call(document.querySelectorAll("[data-live]"),
                                     function (el) { return el.getAttribute("data-job"); });
  if (!ids.length || !window.EventSource) { return; }
  var url = "/console/jobs/events?" + ids.map(function (id) { return "id=" + encodeURIComponent(id); }).join("&");
  var source = new EventSource(url);
  source.addEventListener("job", function (event) { showProgress(JSON.parse(event.data)); });
  source.addEventListener("end", function () {
    source.close();
    var status = document.getElementById("live-status");
    text(status, "All jobs shown have ended.");
    // A job's own page: load it once more for its final attempts and responses.
    if (document.querySelector("[data-reload-on-end]")) { window.location.reload(); }
  });
}

function selection() {
  var all = document.getElementById("select-all");
  if (!all) { return; }
  all.addEventListener("change", function () {
    document.querySelectorAll("input[name=job_id]").forEach(function (box) { box.checked = all.checked; });
  });
}

function confirmations() {
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
}

document.addEventListener("DOMContentLoaded", function () { follow(); selection(); confirmations(); });
