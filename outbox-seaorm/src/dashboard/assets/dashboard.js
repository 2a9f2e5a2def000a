// Live refresh for the pages that ask for it (`<main data-refresh="seconds">`): fetch the same
// page again and swap in its <main>. A file, not an inline script, so the Content-Security-Policy
// can forbid inline scripts. Without JavaScript the pages are the same, only static.
(function () {
  "use strict";
  var main = document.querySelector("main[data-refresh]");
  if (!main || !window.fetch || !window.DOMParser) {
    return;
  }
  var seconds = parseInt(main.getAttribute("data-refresh"), 10) || 5;
  var status = document.getElementById("live-status");
  function say(text) {
    if (status) {
      status.textContent = text;
    }
  }
  function schedule() {
    window.setTimeout(tick, seconds * 1000);
  }
  function tick() {
    // Not while the tab is hidden, nor while someone is typing in a form on the page.
    var active = document.activeElement;
    if (document.hidden || (active && active.form)) {
      schedule();
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser()
          .parseFromString(html, "text/html")
          .querySelector("main[data-refresh]");
        if (fresh) {
          main.innerHTML = fresh.innerHTML;
        }
        say("live, updated " + new Date().toLocaleTimeString());
      })
      .catch(function (e) {
        say("live refresh failed: " + e.message);
      })
      .then(schedule);
  }
  say("live");
  schedule();
})();
