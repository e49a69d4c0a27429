// kerbside web console: progressive enhancement only; every page works without it.
//
// - Elements with data-refresh-url replace their content with that URL's HTML every
//   data-refresh-seconds (the live session list). The HTML comes from kerbside and is
//   escaped by its template engine. Paused while the tab is hidden.
// - "Open console" forms say that the download started.
"use strict";

(function () {
  function refresher(el) {
    var url = el.getAttribute("data-refresh-url");
    var seconds = parseInt(el.getAttribute("data-refresh-seconds") || "2", 10);
    var status = document.getElementById(el.getAttribute("data-refresh-status") || "");
    var busy = false;
    function say(text) {
      if (status) { status.textContent = text; }
    }
    function tick() {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (resp) {
          if (resp.redirected || resp.status === 401) {
            // The session ended: the next page load shows the sign-in page.
            window.location.reload();
            return null;
          }
          if (!resp.ok) { throw new Error("HTTP " + resp.status); }
          return resp.text();
        })
        .then(function (html) {
          if (html === null) { return; }
          el.innerHTML = html;
          say("Updated " + new Date().toLocaleTimeString() + "; refreshes by itself.");
        })
        .catch(function (e) {
          say("Could not refresh (" + e.message + "); retrying.");
        })
        .then(function () { busy = false; });
    }
    window.setInterval(tick, Math.max(1, seconds) * 1000);
  }

  function openConsole(form) {
    form.addEventListener("submit", function () {
      var note = form.parentNode.querySelector(".download-note");
      if (!note) {
        note = document.createElement("span");
        note.className = "download-note hint";
        note.setAttribute("role", "status");
        form.parentNode.appendChild(note);
      }
      note.textContent = " Downloading console.vv: open it with remote-viewer.";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-refresh-url]"), refresher);
    Array.prototype.forEach.call(document.querySelectorAll("form.open-console"), openConsole);
  });
})();
