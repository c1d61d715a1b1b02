/* DR Panel's small script: confirmations for destructive forms and areas that poll, announced when they change.
 * No inline handlers (CSP forbids them); behaviour hangs on data- attributes. */
(function () {
  "use strict";

  // <form data-confirm="Really?"> asks before submitting.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  }, true);

  // <form data-type-to-confirm="name"> enables its submit button only when the input
  // named "confirm" holds exactly that text.
  function wireTypeToConfirm(root) {
    root.querySelectorAll("form[data-type-to-confirm]").forEach(function (form) {
      var expected = form.getAttribute("data-type-to-confirm");
      var input = form.querySelector("input[name=confirm]");
      var button = form.querySelector("button[type=submit]");
      if (!input || !button) { return; }
      var sync = function () { button.disabled = input.value !== expected; };
      input.addEventListener("input", sync);
      sync();
    });
  }

  // A polling area is not itself a live region: a screen reader would read it out at every refresh.
  // Its fragment names its state in data-announce; one polite live region beside the area says that
  // text when, and only when, it differs from the last one (the state changed, not the percentage).
  function announcer(el) {
    var region = document.createElement("p");
    region.className = "sr-only";
    region.setAttribute("role", "status");
    region.setAttribute("aria-live", "polite");
    region.setAttribute("aria-atomic", "true");
    region.setAttribute("data-testid", "poll-announcer");
    el.insertAdjacentElement("afterend", region);
    var last = announcement(el);
    return function () {
      var now = announcement(el);
      if (now && now !== last) {
        region.textContent = now;
        last = now;
      }
    };
  }

  function announcement(el) {
    var named = el.querySelector("[data-announce]");
    return named ? named.getAttribute("data-announce") : "";
  }

  // <div data-poll="/url" data-poll-interval="2000"> is replaced by the fragment the URL
  // returns, until the fragment carries data-poll-done.
  function poll(el) {
    var url = el.getAttribute("data-poll");
    var interval = parseInt(el.getAttribute("data-poll-interval") || "2000", 10);
    var announce = announcer(el);
    var timer = window.setInterval(function () {
      // Someone typing in a form of the region (a note, an evidence link) keeps what they typed.
      var active = document.activeElement;
      if (active && el.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) { return; }
      fetch(url, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.text();
        })
        .then(function (html) {
          el.innerHTML = html;
          el.removeAttribute("data-poll-error");
          wireTypeToConfirm(el);
          announce();
          if (el.querySelector("[data-poll-done]")) {
            window.clearInterval(timer);
            document.dispatchEvent(new CustomEvent("drpanel:poll-done", { detail: el }));
          }
        })
        .catch(function (error) { el.setAttribute("data-poll-error", String(error)); });
    }, interval);
  }

  // <span data-clock-since="ISO" [data-clock-until="ISO"]> shows the time elapsed (H:MM:SS), ticking until stopped.
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function tickClocks() {
    document.querySelectorAll("[data-clock-since]").forEach(function (el) {
      var since = Date.parse(el.getAttribute("data-clock-since"));
      var until = el.hasAttribute("data-clock-until") ? Date.parse(el.getAttribute("data-clock-until")) : Date.now();
      if (isNaN(since) || isNaN(until)) { return; }
      var s = Math.max(0, Math.floor((until - since) / 1000));
      el.textContent = Math.floor(s / 3600) + ":" + pad(Math.floor(s / 60) % 60) + ":" + pad(s % 60);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    tickClocks();
    window.setInterval(tickClocks, 1000);
    wireTypeToConfirm(document);
    document.querySelectorAll("[data-poll]").forEach(poll);
  });
})();
