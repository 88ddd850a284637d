// Watch page: plays the master playlist with hls.js once a rendition is published.
(function () {
  "use strict";
  const root = document.getElementById("player");
  const video = document.getElementById("video");
  const state = document.getElementById("state");
  const masterUrl = root.dataset.masterUrl;
  const statusUrl = root.dataset.statusUrl;
  let hls = null;

  function start() {
    if (window.Hls && Hls.isSupported()) {
      hls = new Hls();
      hls.loadSource(masterUrl);
      hls.attachMedia(video);
      hls.on(Hls.Events.MANIFEST_PARSED, function (_e, data) {
        state.textContent = data.levels.length + " renditions";
      });
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = masterUrl;
    } else {
      state.textContent = "This browser cannot play HLS.";
    }
  }

  function poll() {
    fetch(statusUrl).then(function (r) { return r.json(); }).then(function (v) {
      const ready = v.renditions && v.renditions.some(function (r) { return r.status === "READY"; });
      if (ready) { start(); return; }
      if (v.status === "FAILED") { state.textContent = "Processing failed: " + (v.error || "unknown error"); return; }
      state.textContent = v.status + " " + Math.round(v.progress) + "%";
      setTimeout(poll, 2000);
    }).catch(function () { setTimeout(poll, 4000); });
  }
  poll();
})();
