// Watch page: one player with analytics for the video in the page's config.
(function () {
  "use strict";
  function start() {
    var root = document.getElementById("player");
    var config = JSON.parse(document.getElementById("player-config").textContent);
    // a page embedding the player may set window.vodflowPlayerOptions (hlsConfig,
    // networkRetryDelays) before this script runs
    var extra = window.vodflowPlayerOptions || {};
    for (var k in extra) config[k] = extra[k];
    if (window.PlaybackAnalytics && config.analyticsUrl) {
      config.analytics = new PlaybackAnalytics({ endpoint: config.analyticsUrl, videoId: config.videoId });
      config.analytics.track("session_start", 0, { duration: config.video.metadata.duration || undefined });
    }
    // exposed for the browser console and for tests
    window.vodflowPlayer = new VodPlayer(root, config);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
