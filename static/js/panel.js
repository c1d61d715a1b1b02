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

  // What someone typed or chose in the forms of a polling area, keyed by the form's action and the field's name
  // (and a radio's value): the area's next fragment gets it back, so a refresh never wipes a note, an evidence
  // link or a skip reason left half-written. An open <details> holding a form stays open. A field the server
  // filled back in after refusing its form (data-kept) counts as typed.
  function fieldKey(input) {
    var form = input.form;
    var key = (form ? form.getAttribute("action") : "") + " " + input.name;
    return input.type === "radio" ? key + " " + input.value : key;
  }

  function typed(el) {
    var kept = [];
    el.querySelectorAll("input, textarea, select").forEach(function (input) {
      if (!input.name || input.type === "hidden" || input.type === "submit") { return; }
      if (input.type === "checkbox" || input.type === "radio") {
        if (input.checked !== input.defaultChecked) { kept.push({ key: fieldKey(input), checked: input.checked }); }
      } else if (input.tagName === "SELECT") {
        var changed = Array.prototype.some.call(input.options, function (o) { return o.selected !== o.defaultSelected; });
        if (changed) { kept.push({ key: fieldKey(input), value: input.value }); }
      } else if (input.value !== input.defaultValue || (input.value && input.hasAttribute("data-kept"))) {
        kept.push({ key: fieldKey(input), value: input.value });
      }
    });
    var open = [];
    el.querySelectorAll("details[open] form").forEach(function (form) { open.push(form.getAttribute("action")); });
    return { fields: kept, open: open };
  }

  function giveBack(el, kept) {
    var byKey = {};
    el.querySelectorAll("input, textarea, select").forEach(function (input) {
      if (input.name) { byKey[fieldKey(input)] = input; }
    });
    kept.fields.forEach(function (field) {
      var input = byKey[field.key];
      if (!input) { return; }
      if ("checked" in field) { input.checked = field.checked; } else { input.value = field.value; }
      var details = input.closest("details");
      if (details) { details.open = true; }
    });
    el.querySelectorAll("details form").forEach(function (form) {
      if (kept.open.indexOf(form.getAttribute("action")) !== -1) { form.closest("details").open = true; }
    });
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
          var kept = typed(el);
          el.innerHTML = html;
          giveBack(el, kept);
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
