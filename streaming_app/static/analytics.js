// Playback analytics: batches events and sends them to POST /api/analytics/events.
//
// The only identity is a random id made per page view; nothing about the viewer is sent.
// Watch time counts only time spent playing while the page is visible. Figures in heartbeats
// are cumulative for the session, so a lost batch loses only the timeline stretches in it.
// While the page lives, batches go with fetch(keepalive); when it is hidden or closed, with
// navigator.sendBeacon, which the browser delivers after the page is gone.
(function (global) {
  "use strict";

  var FLUSH_MS = 10000;
  var MAX_BATCH = 100;
  var MAX_QUEUE = 1000;
  var MAX_BODY = 60000; // under the 64 KiB keepalive/beacon budget
  var MAX_RANGES = 150;

  function randomId() {
    var bytes = new Uint8Array(16);
    global.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return (b < 16 ? "0" : "") + b.toString(16); }).join("");
  }

  function round(x, digits) {
    var f = Math.pow(10, digits);
    return Math.round(x * f) / f;
  }

  function PlaybackAnalytics(options) {
    this.endpoint = options.endpoint;
    this.videoId = options.videoId;
    this.sessionId = options.sessionId || randomId();
    this.t0 = performance.now();
    this.seq = 0;
    this.queue = [];
    this.inFlight = 0;
    this.watched = 0; // seconds
    this.rebufferMs = 0;
    this.renditionTime = {};
    this.ranges = []; // closed stretches [from, to] since the last report
    this.open = null; // stretch being played now: {from, to}
    this.counting = false;
    this.lastWall = 0;
    this.lastPos = 0;
    this.rendition = null;
    this.reportedWatched = -1;
    this.ended = false;
    this.sentBatches = 0;
    this._abort = new AbortController();
    var self = this;
    this._timer = global.setInterval(function () { self.heartbeat(false); }, FLUSH_MS);
    var opts = { signal: this._abort.signal };
    global.addEventListener("pagehide", function () { self.end("pagehide"); }, opts);
    global.addEventListener("pageshow", function (e) { if (e.persisted) self.ended = false; }, opts);
    global.document.addEventListener("visibilitychange", function () {
      if (global.document.visibilityState === "hidden") self.heartbeat(true, "hidden");
    }, opts);
  }

  var A = PlaybackAnalytics.prototype;

  A.resources = function () {
    return { timer: this._timer !== null, listening: !this._abort.signal.aborted, queued: this.queue.length };
  };

  A.track = function (type, pos, data) {
    if (this.queue.length >= MAX_QUEUE) this.queue.shift(); // a dead endpoint must not eat memory
    var ev = { seq: this.seq++, type: type, t: Math.round(performance.now() - this.t0) };
    if (typeof pos === "number" && isFinite(pos)) ev.pos = round(Math.max(0, pos), 3);
    if (data) {
      var clean = {};
      for (var k in data) if (data[k] !== undefined && data[k] !== null) clean[k] = data[k];
      ev.data = clean;
    }
    this.queue.push(ev);
    if (this.queue.length >= MAX_BATCH) this.flush(false);
    return ev;
  };

  A.setRendition = function (label) { this.rendition = label; };

  A.addRebuffer = function (ms) { this.rebufferMs += ms; };

  // Called by the player whenever its state may have changed; accounts the time since the
  // previous call to watch time, to the rendition on screen and to the played stretch.
  A.sample = function (pos, counting, rendition) {
    var now = performance.now();
    if (this.counting) {
      var dt = Math.max(0, (now - this.lastWall) / 1000);
      this.watched += dt;
      var key = this.rendition || rendition || "unknown";
      this.renditionTime[key] = (this.renditionTime[key] || 0) + dt;
      // continuous if the playhead moved forward about as far as the clock allows
      var moved = pos - this.lastPos;
      if (this.open && moved >= -0.25 && moved <= dt * 4 + 1) {
        this.open.to = Math.max(this.open.to, pos);
      } else {
        this._closeRange();
        if (counting) this.open = { from: pos, to: pos };
      }
    }
    if (counting && !this.open) this.open = { from: pos, to: pos };
    if (!counting) this._closeRange();
    if (rendition) this.rendition = rendition;
    this.counting = counting;
    this.lastWall = now;
    this.lastPos = pos;
  };

  A._closeRange = function () {
    if (this.open && this.open.to > this.open.from) this.ranges.push([round(this.open.from, 2), round(this.open.to, 2)]);
    this.open = null;
  };

  A._progress = function (reason) {
    var ranges = this.ranges;
    if (this.open && this.open.to > this.open.from) {
      ranges = ranges.concat([[round(this.open.from, 2), round(this.open.to, 2)]]);
      this.open = { from: this.open.to, to: this.open.to };
    }
    this.ranges = [];
    var rt = {};
    for (var k in this.renditionTime) rt[k] = round(this.renditionTime[k], 2);
    var data = { watched: round(this.watched, 2), rebuffer_ms: Math.round(this.rebufferMs),
                 rendition_time: rt, ranges: ranges.slice(-MAX_RANGES) };
    if (reason) data.reason = reason;
    return data;
  };

  A.heartbeat = function (useBeacon, reason) {
    if (this.ended) return;
    var changed = Math.abs(this.watched - this.reportedWatched) > 0.01 || this.ranges.length ||
      (this.open && this.open.to > this.open.from);
    if (changed) {
      this.reportedWatched = this.watched;
      this.track("heartbeat", this.lastPos, this._progress(reason));
    }
    this.flush(useBeacon);
  };

  A.end = function (reason) {
    if (this.ended) return;
    this.track("session_end", this.lastPos, this._progress(reason));
    this.reportedWatched = this.watched;
    this.ended = true;
    this.flush(true);
  };

  A._body = function (events) {
    return JSON.stringify({ session_id: this.sessionId, video_id: this.videoId, events: events });
  };

  // Take as many queued events as fit one request.
  A._nextBatch = function () {
    var n = Math.min(this.queue.length, MAX_BATCH);
    while (n > 1 && this._body(this.queue.slice(0, n)).length > MAX_BODY) n = Math.ceil(n / 2);
    return this.queue.splice(0, n);
  };

  A.flush = function (useBeacon) {
    var self = this;
    while (this.queue.length) {
      var batch = this._nextBatch();
      var body = this._body(batch);
      this.sentBatches++;
      if (useBeacon && global.navigator.sendBeacon) {
        // text/plain keeps the beacon a "simple" request every browser will send
        if (global.navigator.sendBeacon(this.endpoint, new Blob([body], { type: "text/plain;charset=UTF-8" }))) continue;
      }
      this.inFlight++;
      fetch(this.endpoint, { method: "POST", body: body, keepalive: true,
                             headers: { "Content-Type": "application/json" } })
        .then(function (r) {
          // 429/5xx: keep the events for the next flush; 4xx: they will never be accepted
          if (r.status === 429 || r.status >= 500) self._requeue(this);
        }.bind(batch))
        .catch(function () { self._requeue(this); }.bind(batch))
        .then(function () { self.inFlight--; });
      if (useBeacon) continue;
      break; // one request at a time while the page lives; the rest go with the next flush
    }
  };

  A._requeue = function (batch) {
    if (this.ended && !this.queue.length) return;
    this.queue = batch.concat(this.queue).slice(-MAX_QUEUE);
  };

  A.destroy = function () {
    if (this._timer !== null) { global.clearInterval(this._timer); this._timer = null; }
    this._abort.abort();
  };

  PlaybackAnalytics.randomId = randomId;
  global.PlaybackAnalytics = PlaybackAnalytics;
})(window);
