// Library: keeps the status and progress of videos still processing up to date.
(function () {
  "use strict";
  var list = document.querySelector(".cards");
  if (!list) return;
  var url = list.getAttribute("data-poll-url");
  function busy() { return list.querySelectorAll('.card[data-status="UPLOADED"], .card[data-status="PROCESSING"]').length > 0; }
  function title(s) { return s.charAt(0) + s.slice(1).toLowerCase(); }
  // while a video is published chunk by chunk: how much of each rung can be watched already
  function playable(v) {
    var growing = (v.renditions || []).filter(function (r) { return r.status === "GROWING"; });
    if (!growing.length) return "";
    return " · playable: " + growing.map(function (r) {
      return r.name + " " + Math.floor(r.available_seconds || 0) + " s";
    }).join(", ") + (v.metadata && v.metadata.duration ? " of " + Math.round(v.metadata.duration) + " s" : "");
  }
  function update(videos) {
    var byId = {};
    videos.forEach(function (v) { byId[v.id] = v; });
    Array.prototype.forEach.call(list.querySelectorAll(".card"), function (card) {
      var v = byId[card.getAttribute("data-id")];
      if (!v) return;
      var before = card.getAttribute("data-status");
      card.setAttribute("data-status", v.status);
      var pill = card.querySelector("[data-role=status]");
      pill.textContent = title(v.status);
      pill.className = "status-pill status-" + v.status.toLowerCase();
      var bar = card.querySelector("[data-role=progress]");
      if (bar) {
        bar.value = v.progress;
        card.querySelector("[data-role=progress-text]").textContent =
          Math.round(v.progress) + "%" + (v.stage ? " · " + v.stage.replace(/_/g, " ") : "") + playable(v);
        if (v.status !== "UPLOADED" && v.status !== "PROCESSING") card.querySelector("[data-role=progress-wrap]").remove();
      }
      if (v.poster_url && before !== v.status) {
        var media = card.querySelector(".card-media");
        var ph = media.querySelector(".card-placeholder");
        if (ph) { var img = document.createElement("img"); img.src = v.poster_url; img.alt = ""; ph.replaceWith(img); }
      }
    });
  }
  function poll() {
    if (!busy() || document.visibilityState === "hidden") { setTimeout(poll, 5000); return; }
    fetch(url, { cache: "no-store" }).then(function (r) { return r.json(); })
      .then(function (d) { update(d.videos || []); })
      .catch(function () {})
      .then(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 3000);
})();
