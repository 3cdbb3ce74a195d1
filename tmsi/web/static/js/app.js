// tmsi pages: small progressive enhancements. Served as a static file (the CSP allows no inline script).
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // Confirm destructive actions, and never submit a form twice (the server refuses repeats as well).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var button = event.submitter;
    var question = button && button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); return; }
    if (form.method.toLowerCase() !== "post") { return; }
    if (form.dataset.submitted === "1") { event.preventDefault(); return; }
    form.dataset.submitted = "1";
    window.setTimeout(function () {
      form.querySelectorAll("button[type=submit], button:not([type])").forEach(function (b) { b.disabled = true; });
    }, 0);
  });

  // Queue: select all rows.
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input.row-select").forEach(function (box) { box.checked = all.checked; });
    });
  }

  // Case page: live progress of verifications (poll the JSON endpoint; offer the fresh page once a run has finished).
  // A run counts when it was running at render time, or is newer than any run the page shows; after
  // "verify now" (?watch=1) the page keeps polling for up to a minute until the new run appears.
  var table = document.querySelector("[data-progress-url]");
  if (table) {
    var url = table.getAttribute("data-progress-url");
    var sawRunning = table.getAttribute("data-running") === "1";
    var watching = table.getAttribute("data-watch") === "1";
    var lastRun = parseInt(table.getAttribute("data-last-run") || "0", 10);
    var started = Date.now();
    var poll = function () {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) { return; }
          var newRun = false;
          data.runs.forEach(function (run) {
            if (run.id > lastRun) { newRun = true; }
            var bar = document.querySelector('progress.run-progress[data-target-id="' + run.target_id + '"]');
            var text = document.querySelector('span.run-text[data-target-id="' + run.target_id + '"]');
            if (bar) { bar.max = Math.max(run.total, 1); bar.value = run.done; }
            if (text) { text.textContent = run.done + "/" + run.total + " " + run.status + (run.status === "done" ? " (" + run.result + ")" : ""); }
          });
          if (data.running) { sawRunning = true; window.setTimeout(poll, 1000); }
          else if (sawRunning || newRun) {
            // Never reload by itself (the analyst may be typing): offer the fresh page instead.
            var done = document.getElementById("verify-done");
            if (done) { done.hidden = false; }
          }
          else if (watching && Date.now() - started < 60000) { window.setTimeout(poll, 1000); }
        })
        .catch(function () { window.setTimeout(poll, 5000); });
    };
    poll();
  }

  // Template editor: live preview on a real case, rendered by the server's sandbox.
  var editor = document.getElementById("template-form");
  if (editor) {
    var timer = null;
    var refresh = function () {
      var body = JSON.stringify({
        subject: document.getElementById("tpl-subject").value,
        body: document.getElementById("tpl-body").value,
        case: document.getElementById("preview-case").value
      });
      fetch(editor.getAttribute("data-preview-url"), {
        method: "POST", credentials: "same-origin", body: body,
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() }
      }).then(function (r) { return r.json(); }).then(function (data) {
        var err = document.getElementById("preview-error");
        err.hidden = !!data.ok;
        err.textContent = data.ok ? "" : data.error;
        document.getElementById("preview-subject").textContent = data.ok ? data.subject : "";
        document.getElementById("preview-body").textContent = data.ok ? data.body : "";
      });
    };
    ["tpl-subject", "tpl-body", "preview-case"].forEach(function (id) {
      document.getElementById(id).addEventListener("input", function () {
        window.clearTimeout(timer); timer = window.setTimeout(refresh, 300);
      });
    });
  }
})();
