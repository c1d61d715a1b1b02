/* Restore and verification pages: when a live region reports its run finished, reload the page so that
 * what depends on the final state (rollback, checklist, evidence) appears. */
(function () {
  "use strict";
  document.addEventListener("drpanel:poll-done", function (event) {
    var region = event.detail;
    if (region && region.hasAttribute && region.hasAttribute("data-reload-when-done")) {
      window.setTimeout(function () { window.location.reload(); }, 300);
    }
  });
})();
