// "updated N s ago" for every live part, and copy buttons. No page reloads, no JSON-to-DOM code.
(function () {
  function tick() {
    // Counted from when this browser received the part, so a clock difference never shows.
    var now = Date.now();
    document.querySelectorAll("[data-updated-at]").forEach(function (el) {
      if (!el.dataset.seenAt) el.dataset.seenAt = String(now);
      var age = Math.max(0, Math.round((now - parseFloat(el.dataset.seenAt)) / 1000));
      el.textContent = "updated " + age + " s ago";
    });
  }
  setInterval(tick, 1000);
  document.addEventListener("htmx:afterSwap", tick);
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var field = document.querySelector(button.dataset.copy);
    if (!field) return;
    field.select();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value);
    } else {
      document.execCommand("copy");
    }
    button.textContent = "Copied";
  });
})();
