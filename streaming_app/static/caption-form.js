// Watch page, owner view: add a caption (POST /api/videos/{id}/captions with the admin token).
// The answer's message and the server's refusals are shown as text, never as markup.
(function () {
  "use strict";
  var TOKEN_KEY = "vodflow.adminToken";
  function start() {
    var form = document.getElementById("caption-form");
    if (!form) return;
    var out = form.querySelector(".caption-form-result");
    try { form.elements.token.value = sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { /* no storage */ }
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var body = new FormData(form);
      var token = body.get("token");
      body.delete("token");
      if (!form.elements["default"].checked) body.delete("default");
      try { sessionStorage.setItem(TOKEN_KEY, token || ""); } catch (err) { /* no storage */ }
      out.textContent = "Sending…";
      fetch(form.getAttribute("data-endpoint"), {
        method: "POST", body: body, headers: token ? { Authorization: "Bearer " + token } : {},
      }).then(function (r) {
        return r.json().catch(function () { return { message: "HTTP " + r.status }; }).then(function (j) {
          out.textContent = r.ok ? "Caption added: " + (j.message || "") + ". It is offered in the CC menu after a reload."
                                 : "Refused (" + r.status + "): " + (j.message || "");
        });
      }).catch(function () { out.textContent = "The server could not be reached."; });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
