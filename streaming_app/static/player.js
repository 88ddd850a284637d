// vodflow player: hls.js under our own controls.
//
// `new VodPlayer(root, config)` takes over the markup of templates/watch.html; `destroy()`
// removes every listener, timer and the hls.js instance it created. Playback analytics are
// reported through an optional PlaybackAnalytics (analytics.js).
(function (global) {
  "use strict";

  var SPEEDS = [0.5, 0.75, 1, 1.25, 1.5, 2];
  var SEEK_STEP = 5;
  var VOLUME_STEP = 0.1;
  var STORE_VOLUME = "vodflow.volume";
  var STORE_MUTED = "vodflow.muted";
  var STORE_CAPTIONS = "vodflow.captions"; // "off", or "language|name" of the chosen track
  var STORE_AUDIO_ONLY = "vodflow.audioOnly"; // "1": play the audio rendition alone
  var STORE_AUDIO_TRACK = "vodflow.audioTrack"; // "language|label" of the chosen audio language
  var AUDIO_ONLY = "audio"; // the quality menu's value for it, and its name in the analytics
  var MEDIA_RECOVERY_INTERVAL_MS = 5000; // hls.js docs: do not call recoverMediaError more often
  var NETWORK_RETRY_DELAYS_MS = [2000, 5000, 10000];
  var POLL_MS = 2000;
  var POLL_PLAYING_MS = 5000;
  var MAX_NONFATAL_ERROR_REPORTS = 20;
  // While a video is published chunk by chunk, Auto plays only renditions published at least
  // this far past the playhead (two segments and a status poll): the others lag behind the
  // lowest one, which the fast lane encodes ahead of them.
  var PUBLISHED_AHEAD_S = 17;

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function formatTime(s) {
    if (!isFinite(s) || s < 0) s = 0;
    s = Math.floor(s);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? h + ":" + pad(m) + ":" + pad(sec) : m + ":" + pad(sec);
  }

  function spokenTime(s) {
    if (!isFinite(s) || s < 0) s = 0;
    s = Math.floor(s);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    var parts = [];
    if (h) parts.push(h + (h === 1 ? " hour" : " hours"));
    if (m) parts.push(m + (m === 1 ? " minute" : " minutes"));
    parts.push(sec + (sec === 1 ? " second" : " seconds"));
    return parts.join(" ");
  }

  function formatBitrate(bps) {
    if (!bps) return "";
    return bps >= 1e6 ? (bps / 1e6).toFixed(1) + " Mb/s" : Math.round(bps / 1e3) + " kb/s";
  }

  // Rungs are named by the short side of the picture ("720p" for 1280x720 and 720x1280).
  // A rendition this browser can decode. hls.js leaves the others out of its levels the same way
  // (MediaSource.isTypeSupported on the variant's CODECS): an HEVC rung, for a browser without
  // HEVC, is neither offered nor counted, and never fetched.
  function decodable(r) {
    var video = (r.codecs || "").split(",")[0];
    var MS = global.MediaSource || global.ManagedMediaSource;
    if (!video || !MS || !MS.isTypeSupported) return true;
    return MS.isTypeSupported('video/mp4; codecs="' + video + '"');
  }

  function rungLabel(width, height) {
    if (!width || !height) return "";
    return Math.min(width, height) + "p";
  }

  function parseTimestamp(text) {
    var parts = text.trim().split(":");
    var s = 0;
    for (var i = 0; i < parts.length; i++) s = s * 60 + parseFloat(parts[i]);
    return s;
  }

  // WebVTT thumbnail index: cues whose text is "sheet.jpg#xywh=x,y,w,h".
  function parseThumbnailVtt(text, baseUrl) {
    var cues = [];
    var blocks = text.replace(/\r/g, "").split(/\n\n+/);
    for (var i = 0; i < blocks.length; i++) {
      var lines = blocks[i].split("\n");
      for (var j = 0; j < lines.length - 1; j++) {
        var m = /^\s*([\d:.]+)\s+-->\s+([\d:.]+)/.exec(lines[j]);
        if (!m) continue;
        var ref = lines[j + 1].trim();
        var hash = ref.indexOf("#xywh=");
        var url = new URL(hash >= 0 ? ref.slice(0, hash) : ref, baseUrl).href;
        var xywh = hash >= 0 ? ref.slice(hash + 6).split(",").map(Number) : null;
        cues.push({ start: parseTimestamp(m[1]), end: parseTimestamp(m[2]), url: url,
                    x: xywh ? xywh[0] : 0, y: xywh ? xywh[1] : 0,
                    w: xywh ? xywh[2] : 160, h: xywh ? xywh[3] : 90 });
        break;
      }
    }
    return cues;
  }

  // WebVTT chapters track: cues whose text is the chapter title (entities decoded, plain text).
  function parseChaptersVtt(text) {
    var out = [];
    var blocks = text.replace(/\r/g, "").split(/\n\n+/);
    for (var i = 0; i < blocks.length; i++) {
      var lines = blocks[i].split("\n");
      for (var j = 0; j < lines.length; j++) {
        var m = /^\s*([\d:.]+)\s+-->\s+([\d:.]+)/.exec(lines[j]);
        if (!m) continue;
        // plain text, shown with textContent: tags dropped, WebVTT's escapes decoded
        var title = lines.slice(j + 1).join(" ").replace(/<[^>]*>/g, "")
          .replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&nbsp;/g, "\u00a0").replace(/&amp;/g, "&");
        out.push({ start: parseTimestamp(m[1]), end: parseTimestamp(m[2]), title: title });
        break;
      }
    }
    return out;
  }

  function storageGet(key) {
    try { return global.localStorage.getItem(key); } catch (e) { return null; }
  }

  function storageSet(key, value) {
    try { global.localStorage.setItem(key, value); } catch (e) { /* private mode: not remembered */ }
  }

  // "fr" -> "French" in the viewer's own language, where the browser knows it
  function languageName(tag) {
    try {
      var names = new Intl.DisplayNames([global.navigator.language || "en"], { type: "language" });
      return names.of(tag) || tag;
    } catch (e) { return tag; }
  }

  function VodPlayer(root, config) {
    this.root = root;
    this.config = config || {};
    this.video = root.querySelector("video");
    this.els = {};
    var roles = root.querySelectorAll("[data-role]");
    for (var i = 0; i < roles.length; i++) this.els[roles[i].getAttribute("data-role")] = roles[i];
    // the chapter list sits beside the player, under the title
    var outside = ["chapters", "chapter-list"];
    for (var o = 0; o < outside.length; o++) {
      if (!this.els[outside[o]]) this.els[outside[o]] = global.document.querySelector("[data-role=" + outside[o] + "]");
    }
    this._abort = new AbortController();
    this._timers = new Map(); // id -> "timeout" | "interval"
    this.hls = null;
    this.levels = [];
    this.manualLevel = -1; // -1: Auto
    this.playingLevel = -1;
    this.cues = [];
    this.destroyed = false;
    this.started = false; // a frame has been shown while playing
    this.autoMuted = false; // muted by us to get autoplay; not the viewer's choice
    this.stalledAt = 0;
    this.lastMediaRecovery = 0;
    this.networkRetry = 0;
    this.nonFatalReported = 0;
    this.loadStartedAt = null; // performance.now() when playback was asked for
    this.startupBase = 0;
    this.startupMs = null;
    this.dragging = false;
    this.readyCount = 0;
    this.availableSeconds = null; // seconds published so far while the video encodes
    this.status = null;
    this.analytics = this.config.analytics || null;
    this.chapters = [];
    this.captionTrack = -1; // hls.js subtitle track shown, -1: off
    this.audio = null; // the API's audio rendition, when the video has one
    this.audioTracks = []; // the API's audio renditions (one per language), the default first
    this.audioTrack = 0; // the one chosen, an index into audioTracks
    this.audioOnly = false; // playing the audio rendition's own playlist: no video is fetched
    this.wantAudioOnly = storageGet(STORE_AUDIO_ONLY) === "1"; // the viewer's saved choice
    this._switchAt = null; // while a source is swapped: the time playback resumes at
    this.videoInfo = this.config.video || {};
    this._bindUi();
    this._restorePreferences();
    this._buildSpeedMenu();
    this._applyStatus(this.config.video || {}, true);
  }

  var P = VodPlayer.prototype;

  // ---- resources that destroy() must release -------------------------------------------
  P._on = function (target, type, fn, opts) {
    var o = { signal: this._abort.signal };
    if (opts) for (var k in opts) o[k] = opts[k];
    target.addEventListener(type, fn.bind(this), o);
  };

  P._timeout = function (fn, ms) {
    var self = this;
    var id = global.setTimeout(function () { self._timers.delete(id); fn.call(self); }, ms);
    this._timers.set(id, "timeout");
    return id;
  };

  P._clear = function (id) {
    if (id == null) return;
    if (this._timers.get(id) === "interval") global.clearInterval(id); else global.clearTimeout(id);
    this._timers.delete(id);
  };

  // What is still held, for tests and for leak hunting.
  P.resources = function () {
    return { timers: this._timers.size, hls: !!this.hls, listening: !this._abort.signal.aborted,
             analytics: this.analytics ? this.analytics.resources() : null };
  };

  P.destroy = function () {
    if (this.destroyed) return;
    this.destroyed = true;
    if (this.analytics) { this._sample(); this.analytics.end("destroy"); this.analytics.destroy(); }
    this._abort.abort();
    this._timers.forEach(function (kind, id) {
      if (kind === "interval") global.clearInterval(id); else global.clearTimeout(id);
    });
    this._timers.clear();
    this._destroyHls();
    this.video.removeAttribute("src");
    this.video.load();
    if (global.document.fullscreenElement === this.root && global.document.exitFullscreen) {
      global.document.exitFullscreen().catch(function () {});
    }
    this.root.setAttribute("data-state", "destroyed");
    this.cues = [];
  };

  P._destroyHls = function () {
    if (this.hls) {
      this.hls.destroy(); // also removes every hls.on() handler and detaches the media
      this.hls = null;
    }
  };

  // ---- processing state ------------------------------------------------------------------
  // playable: finished (READY) or published chunk by chunk while the rest encodes (GROWING)
  P._readyRenditions = function (v) {
    return (v.renditions || []).filter(function (r) {
      return (r.status === "READY" || r.status === "GROWING") && decodable(r);
    }).length;
  };

  // How far a viewer can play while the video is still being published: as far as the furthest
  // video rendition and the audio both go; null once every rendition is finished.
  P._availableSeconds = function (v) {
    var playable = function (r) { return r.status === "READY" || r.status === "GROWING"; };
    var reach = function (r) { return r.status === "READY" ? Infinity : (r.available_seconds || 0); };
    var rends = (v.renditions || []).filter(playable);
    var growing = rends.concat(v.audio && playable(v.audio) ? [v.audio] : []).filter(function (r) {
      return r.status === "GROWING";
    });
    if (!growing.length) return null;
    var video = rends.length ? Math.max.apply(null, rends.map(reach)) : 0;
    var audio = v.audio && playable(v.audio) ? reach(v.audio) : Infinity;
    var seconds = Math.min(video, audio);
    if (isFinite(seconds)) return seconds;
    // a rendition and the audio are finished (the fast lane's) while others still grow: the whole
    var meta = (v.metadata || (this.config.video && this.config.video.metadata) || {});
    return meta.duration || v.duration || 0;
  };

  // Auto quality while the video grows: the renditions that reach far enough past the playhead
  // (a rendition Auto switched to would otherwise stall at its published edge). A viewer's own
  // choice is left alone; once every rendition is finished there is no cap.
  P._capToPublished = function () {
    if (!this.hls || this.audioOnly || !this.levels.length) return;
    var cap = -1;
    if (this.availableSeconds !== null && this.videoInfo) {
      var byName = {};
      (this.videoInfo.renditions || []).forEach(function (r) { byName[r.name] = r; });
      var whole = this._duration();
      var need = this.video.currentTime + PUBLISHED_AHEAD_S;
      if (isFinite(whole) && whole > 0) need = Math.min(need, whole - 0.5);
      cap = 0;
      for (var i = 0; i < this.levels.length; i++) {
        var r = byName[this.levels[i].name];
        if (r && (r.status === "READY" || (r.available_seconds || 0) >= need)) cap = i;
      }
    }
    if (this.hls.autoLevelCapping !== cap) this.hls.autoLevelCapping = cap;
  };

  // The seek bar's scale: the whole video, also while only its start is published
  P._duration = function () {
    var d = this.video.duration;
    var whole = this.availableSeconds !== null && this.config.video && this.config.video.metadata
      ? this.config.video.metadata.duration : null;
    if (whole && (!isFinite(d) || whole > d)) return whole;
    return d;
  };

  P._applyStatus = function (v, initial) {
    this.status = v.status;
    this.videoInfo = v;
    var hadAudio = this._audioUrl();
    this.audio = v.audio || null;
    this._setAudioTracks(v.audio_tracks || (v.audio ? [v.audio] : []));
    var ready = this._readyRenditions(v);
    this.availableSeconds = this._availableSeconds(v);
    this._renderAvailable();
    var pill = global.document.querySelector("[data-role=status-pill]");
    if (pill && v.status) {
      pill.textContent = v.status.charAt(0) + v.status.slice(1).toLowerCase();
      pill.className = "status-pill status-" + v.status.toLowerCase();
    }
    if (v.thumbnails_url && !this.cues.length) this._loadThumbnails(v.thumbnails_url);
    if (v.chapters_url && v.chapters_url !== this._chaptersUrl) this._loadChapters(v.chapters_url);
    if (v.poster_url && !this.video.getAttribute("poster")) {
      this.video.setAttribute("poster", v.poster_url);
      this._renderAudioOnly();
    }
    if (v.status === "FAILED" && !ready) {
      this._hide("processing");
      this._showError("This video could not be processed: " + (v.error || "unknown error") + ".", false);
      return;
    }
    if (v.status === "DELETED") {
      this._hide("processing");
      this._showError("This video was deleted.", false);
      return;
    }
    if (ready && !this.hls && !this._nativeSource) {
      this._hide("processing");
      this.readyCount = ready;
      this.load(initial);
    } else if (ready > this.readyCount && this.readyCount > 0 && this.hls && this.audioOnly) {
      // no video is loaded: list the new qualities, the master is read when one is chosen
      this.readyCount = ready;
      this.levels = this._levelsFromApi();
      this._buildQualityMenu(this.levels);
    } else if (ready > this.readyCount && this.readyCount > 0 && this.hls) {
      // more qualities were published while we play: take them without losing the place
      this.readyCount = ready;
      this._reloadSource();
    } else if (this.hls && hadAudio !== this._audioUrl()) {
      this._buildQualityMenu(this.levels); // the audio rendition came (or went)
    }
    this._capToPublished();
    if (!ready) {
      this.root.setAttribute("data-state", "processing");
      this._show("processing");
      var pct = Math.max(0, Math.min(100, Math.round(v.progress || 0)));
      var stage = v.stage ? " (" + v.stage.replace(/_/g, " ") + ")" : "";
      var what = v.status === "UPLOADED" ? "Waiting to be processed" : "Processing";
      this.els["processing-text"].textContent = what + stage + ": " + pct + "%";
      this.els["processing-bar"].value = pct;
    }
    if (v.status === "UPLOADED" || v.status === "PROCESSING") {
      this._pollId = this._timeout(this._poll, ready ? POLL_PLAYING_MS : POLL_MS);
    }
  };

  P._poll = function () {
    if (this.destroyed || !this.config.statusUrl) return;
    var self = this;
    fetch(this.config.statusUrl, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) {
        if (r.status === 404 || r.status === 410) return { status: "DELETED" };
        if (!r.ok) throw new Error("status " + r.status);
        return r.json();
      })
      .then(function (v) { if (!self.destroyed) self._applyStatus(v, false); })
      .catch(function () { if (!self.destroyed) self._pollId = self._timeout(self._poll, POLL_MS * 2); });
  };

  // ---- loading ----------------------------------------------------------------------------
  P.load = function (atPageOpen) {
    this.loadStartedAt = performance.now();
    // a video that was playable when the page opened is measured from the page opening
    this.startupBase = atPageOpen ? 0 : this.loadStartedAt;
    this.root.setAttribute("data-state", "loading");
    this._show("spinner");
    if (global.Hls && global.Hls.isSupported()) {
      if (this.wantAudioOnly && this._audioUrl()) {
        // the viewer chose audio only last time: the master (and so the video) is not loaded
        this.audioOnly = true;
        this.levels = this._levelsFromApi();
        this._buildQualityMenu(this.levels);
        this._renderAudioOnly();
      }
      // a growing (EVENT) playlist is live to hls.js, which would start at its end: start at 0
      this._createHls(this.availableSeconds !== null ? 0 : -1);
    } else if (this.video.canPlayType("application/vnd.apple.mpegurl")) {
      // no MSE (older iOS): the platform's own HLS, quality chosen by the browser
      this._nativeSource = true;
      this.video.src = this.config.masterUrl;
      this._buildQualityMenu([]);
      this._buildAudioMenu();
    } else {
      this._showError("This browser cannot play HLS video. Try a current Chrome, Firefox, Edge or Safari.", false);
      return;
    }
    this._autoplay();
  };

  P._hlsConfig = function (startPosition) {
    function policy(ttfb, total, errRetries) {
      return { default: {
        maxTimeToFirstByteMs: ttfb, maxLoadTimeMs: total,
        timeoutRetry: { maxNumRetry: 2, retryDelayMs: 0, maxRetryDelayMs: 0 },
        errorRetry: { maxNumRetry: errRetries, retryDelayMs: 1000, maxRetryDelayMs: 8000, backoff: "exponential" },
      } };
    }
    var base = {
      startPosition: startPosition,
      // a manual choice stays until the viewer picks Auto, even across load errors
      preserveManualLevelOnError: true,
      capLevelToPlayerSize: false,
      maxBufferLength: 30,
      backBufferLength: 60,
      manifestLoadPolicy: policy(10000, 20000, 4),
      playlistLoadPolicy: policy(10000, 20000, 4),
      fragLoadPolicy: policy(10000, 120000, 6),
    };
    var extra = this.config.hlsConfig || {}; // an embedding page may tune hls.js
    for (var k in extra) base[k] = extra[k];
    return base;
  };

  P._createHls = function (startPosition) {
    var Hls = global.Hls;
    var hls = new Hls(this._hlsConfig(startPosition));
    this.hls = hls;
    var self = this;
    hls.on(Hls.Events.MANIFEST_PARSED, function (_e, data) { self._onManifest(data.levels); });
    hls.on(Hls.Events.LEVEL_SWITCHED, function (_e, data) { self._onLevelSwitched(data.level); });
    hls.on(Hls.Events.FRAG_BUFFERED, function () { self.networkRetry = 0; self._renderBuffered(); });
    hls.on(Hls.Events.ERROR, function (_e, data) { self._onHlsError(data); });
    // captions are drawn by the player (text only), not by the browser: hls.js keeps the chosen
    // track "hidden", which still loads its cues and fires cuechange
    hls.subtitleDisplay = false;
    hls.on(Hls.Events.SUBTITLE_TRACKS_UPDATED, function (_e, data) { self._onSubtitleTracks(data.subtitleTracks); });
    // hls.js picks a track of its own as it attaches (DEFAULT/AUTOSELECT); the viewer's choice wins
    hls.on(Hls.Events.SUBTITLE_TRACK_SWITCH, function (_e, data) {
      if (self.captionTracks && data.id !== self.captionTrack) hls.subtitleTrack = self.captionTrack;
    });
    // hls.js starts with the group's DEFAULT audio; the viewer's language wins
    hls.on(Hls.Events.AUDIO_TRACKS_UPDATED, function () { self._applyAudioTrack(); });
    hls.loadSource(this._sourceUrl());
    hls.attachMedia(this.video);
    // A swap resumes at `startPosition`. Set on the element now (its new source has no metadata
    // yet, so this is HTML's default playback start position), play() cannot begin at 0 in the
    // moment before hls.js seeks there, which a busy machine showed.
    if (startPosition > 0) this.video.currentTime = startPosition;
  };

  // What hls.js plays: the master (every video rendition and the audio group), or in audio-only
  // mode the audio rendition's own media playlist. hls.js has no switch to stop loading video
  // from a stream that has it, and it drops audio-only variants from a master with video; an
  // audio media playlist on its own plays through MSE with an audio SourceBuffer alone.
  P._sourceUrl = function () {
    return this.audioOnly ? this._audioUrl() : this.config.masterUrl;
  };

  // The chosen audio rendition's playlist while it can be played (READY, or GROWING with the video)
  P._audioUrl = function () {
    var a = this.audioTracks[this.audioTrack] || this.audio;
    return a && (a.status === "READY" || a.status === "GROWING") && a.playlist ? a.playlist : null;
  };

  // The video renditions as the API lists them, in hls.js's order (lowest first): the quality
  // menu while the master is not loaded. A choice among them is matched by name once it is.
  P._levelsFromApi = function () {
    var rends = (this.videoInfo.renditions || []).filter(function (r) {
      return (r.status === "READY" || r.status === "GROWING") && r.width && r.height && decodable(r);
    });
    rends.sort(function (a, b) { return (a.height - b.height) || ((a.bandwidth || 0) - (b.bandwidth || 0)); });
    return rends.map(function (r, i) {
      return { index: i, name: r.name, width: r.width, height: r.height,
               bitrate: r.average_bandwidth || r.bandwidth, label: rungLabel(r.width, r.height) || r.name };
    });
  };

  P._reloadSource = function () {
    if (!this.hls) return;
    var at = this.video.currentTime, wasPlaying = !this.video.paused, manual = this.manualLevel;
    this._reloading = wasPlaying; // the pause this causes is ours, not a stall to report
    this._destroyHls();
    this._createHls(at);
    this._pendingManual = this._levelKey(manual);
    if (wasPlaying) this._autoplay();
  };

  // A level survives a reload by its name (indexes move when renditions are added)
  P._levelKey = function (index) {
    var l = index >= 0 ? this.levels[index] : null;
    return l ? l.name || l.label : null;
  };

  // Switch between the full stream and its audio alone, at the same place and in the same
  // play/pause state. `level`: the video quality to come back to (-1: Auto).
  P._setAudioOnly = function (on, level) {
    if (!this.hls || on === this.audioOnly || (on && !this._audioUrl())) return;
    var v = this.video;
    var at = v.currentTime, wasPlaying = !v.paused && !v.ended;
    var pending = on ? null : this._levelKey(level);
    this.audioOnly = on;
    this.manualLevel = -1;
    this.playingLevel = -1;
    this._switchAt = at; // the reload's own seek and pause are not the viewer's
    this._reloading = wasPlaying;
    if (on) {
      // captions come with the master's SUBTITLES group, which the audio playlist has not
      this.captionTracks = [];
      this._setCaptionTrack(-1);
      this._buildCaptionsMenu();
    }
    this._destroyHls();
    this._createHls(at);
    this._pendingManual = pending;
    this._renderAudioOnly();
    if (on) this.levels = this.levels.length ? this.levels : this._levelsFromApi();
    this._buildQualityMenu(this.levels);
    if (wasPlaying) this._autoplay();
  };

  // Audio only: the poster (or a plain panel) over the picture, never a frozen frame
  P._renderAudioOnly = function () {
    var box = this.els["audio-poster"], img = this.els["audio-poster-image"];
    this.root.classList.toggle("audio-only", this.audioOnly);
    if (!box) return;
    box.hidden = !this.audioOnly;
    var poster = this.video.getAttribute("poster");
    if (this.audioOnly && poster && img.getAttribute("src") !== poster) img.src = poster;
    img.hidden = !poster;
  };

  P._autoplay = function () {
    var self = this;
    var p = this.video.play();
    if (!p || !p.catch) return;
    p.catch(function (err) {
      if (self.destroyed || !err || err.name !== "NotAllowedError") return;
      // The browser refuses sound without a gesture: start muted (the viewer's saved choice
      // is left alone) and offer to unmute; failing that, wait for a click.
      self.autoMuted = !self.video.muted;
      self.video.muted = true;
      var again = self.video.play();
      if (again && again.then) {
        again.then(function () { if (self.autoMuted) self._show("unmute"); })
          .catch(function () {
            self.video.muted = self.autoMuted ? false : self.video.muted;
            self.autoMuted = false;
            self._autoplayRefused();
          });
      }
    });
  };

  P._autoplayRefused = function () {
    this.autoplayRefused = true;
    this._hide("spinner");
    this._show("bigplay");
    this.root.setAttribute("data-state", "paused");
  };

  // ---- hls.js events ----------------------------------------------------------------------
  P._onManifest = function (levels) {
    if (this.audioOnly) return; // the audio playlist's one level is not a quality to offer
    this.levels = levels.map(function (l, i) {
      return { index: i, name: l.name, width: l.width, height: l.height, bitrate: l.averageBitrate || l.bitrate,
               label: rungLabel(l.width, l.height) || Math.round((l.bitrate || 0) / 1000) + " kb/s" };
    });
    if (this._pendingManual != null) {
      // after a reload, keep the viewer's manual choice when that rendition still exists
      var prev = this._pendingManual;
      this._pendingManual = null;
      for (var i = 0; i < this.levels.length; i++) {
        if ((this.levels[i].name || this.levels[i].label) === prev) {
          this.manualLevel = i;
          this.hls.currentLevel = i;
          break;
        }
      }
    }
    this._buildQualityMenu(this.levels);
    this._capToPublished();
  };

  P._onLevelSwitched = function (level) {
    if (this.audioOnly) return;
    this.playingLevel = level;
    this._renderQuality();
  };

  // A rendition switch is when the picture on screen changes size: that is what the viewer
  // sees (hls.js's LEVEL_SWITCHED can come a little before or after it).
  P._onResize = function () {
    this._renderQuality();
    if (this.audioOnly) return;
    this._showRendition(this.video.videoHeight ? rungLabel(this.video.videoWidth, this.video.videoHeight) : "");
  };

  // What the viewer gets changed: a picture of another size, or audio alone ("audio", counted
  // once it plays). Reported to the analytics as a rendition switch.
  P._showRendition = function (label) {
    if (!label || label === this.shownLabel) return;
    var prev = this.shownLabel;
    this.shownLabel = label;
    if (!this.analytics) return;
    this._sample(prev || label);
    var level = null, audio = label === AUDIO_ONLY;
    for (var i = 0; i < this.levels.length && !audio; i++) if (this.levels[i].label === label) level = this.levels[i];
    if (audio && this.audio) level = { bitrate: this.audio.average_bandwidth || this.audio.bandwidth || undefined };
    this.analytics.track("rendition_switch", this.video.currentTime, {
      from: prev || undefined,
      to: label,
      bitrate: level ? level.bitrate : undefined,
      mode: audio || this.manualLevel >= 0 ? "manual" : "auto",
      bandwidth_estimate: this.hls && isFinite(this.hls.bandwidthEstimate) ? Math.round(this.hls.bandwidthEstimate) : undefined,
      initial: !prev,
    });
    this.analytics.setRendition(label);
  };

  // Stalls and gap jumps are counted as rebuffering, not as errors.
  var ROUTINE_DETAILS = /^(bufferStalledError|bufferNudgeOnStall|bufferSeekOverHole|bufferFullError)$/;

  P._reportError = function (kind, details, fatal, action) {
    if (!this.analytics) return;
    if (!fatal && ROUTINE_DETAILS.test(details || "")) return;
    if (!fatal && this.nonFatalReported >= MAX_NONFATAL_ERROR_REPORTS) return;
    if (!fatal) this.nonFatalReported++;
    this.analytics.track("error", this.video.currentTime, {
      kind: String(kind || "unknown").slice(0, 64), details: String(details || "unknown").slice(0, 64),
      fatal: !!fatal, action: action,
    });
  };

  // Error handling as the hls.js API guide describes: non-fatal errors are hls.js's own
  // business; a fatal media error gets recoverMediaError(), at most once per 5 s; a fatal
  // network error means hls.js has used up its load-policy retries, so we wait and restart
  // loading a few times with growing pauses before telling the viewer.
  P._onHlsError = function (data) {
    var Hls = global.Hls;
    if (!data.fatal) {
      this._reportError(data.type, data.details, false, "none");
      return;
    }
    if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
      var now = Date.now();
      if (now - this.lastMediaRecovery > MEDIA_RECOVERY_INTERVAL_MS) {
        this.lastMediaRecovery = now;
        this._reportError(data.type, data.details, true, "recover");
        this.hls.recoverMediaError();
      } else {
        this._reportError(data.type, data.details, true, "shown");
        this._fail("The video could not be decoded (" + data.details + ").");
      }
      return;
    }
    if (data.type === Hls.ErrorTypes.NETWORK_ERROR) {
      var delays = this.config.networkRetryDelays || NETWORK_RETRY_DELAYS_MS;
      if (this.networkRetry < delays.length) {
        var delay = delays[this.networkRetry++];
        var manifest = /^manifest/i.test(data.details || "");
        this._reportError(data.type, data.details, true, manifest ? "reload" : "retry");
        this._flash("Connection problem, retrying…");
        this._show("spinner");
        this._clear(this._retryId);
        this._retryId = this._timeout(function () {
          if (!this.hls) return;
          if (manifest) this.hls.loadSource(this._sourceUrl());
          else this.hls.startLoad(this.video.currentTime);
        }, delay);
      } else {
        this._reportError(data.type, data.details, true, "shown");
        this._fail("The video cannot be loaded: the connection to the server failed. Check your network and try again.");
      }
      return;
    }
    this._reportError(data.type, data.details, true, "shown");
    this._fail("Playback failed (" + data.details + ").");
  };

  P._onVideoError = function () {
    var err = this.video.error;
    if (!err || this.destroyed) return;
    if (this.hls && err.code === err.MEDIA_ERR_DECODE) {
      var now = Date.now();
      if (now - this.lastMediaRecovery > MEDIA_RECOVERY_INTERVAL_MS) {
        this.lastMediaRecovery = now;
        this._reportError("media", "decode", true, "recover");
        this.hls.recoverMediaError();
        return;
      }
    }
    if (this.hls) return; // hls.js reports its own errors through _onHlsError
    this._reportError("media", "code " + err.code, true, "shown");
    this._fail("The video cannot be played here (media error " + err.code + ").");
  };

  P._fail = function (message) {
    this._destroyHls();
    this._showError(message, true);
  };

  P.retry = function () {
    this._hide("error");
    // a start that failed is measured again from the viewer's retry
    if (!this.started) this.startupBase = performance.now();
    this.networkRetry = 0;
    this.lastMediaRecovery = 0;
    var at = this.video.currentTime || 0;
    this._destroyHls();
    if (this._nativeSource) { this.video.load(); this._autoplay(); return; }
    this._createHls(at > 0 ? at : -1);
    this._autoplay();
  };

  // ---- UI -----------------------------------------------------------------------------------
  P._show = function (role) { if (this.els[role]) this.els[role].hidden = false; };
  P._hide = function (role) { if (this.els[role]) this.els[role].hidden = true; };

  P._showError = function (message, canRetry) {
    this.root.setAttribute("data-state", "error");
    this._hide("spinner");
    this._hide("bigplay");
    this.els["error-text"].textContent = message;
    this.els.retry.hidden = !canRetry;
    this._show("error");
  };

  P._flash = function (text) {
    var el = this.els.flash;
    el.textContent = text;
    el.classList.add("visible");
    this._clear(this._flashId);
    this._flashId = this._timeout(function () { el.classList.remove("visible"); }, 1200);
  };

  P._bindUi = function () {
    var v = this.video, d = global.document, els = this.els;
    this._on(els.play, "click", this.togglePlay);
    this._on(els.bigplay, "click", function () { this.play(); });
    this._on(els.unmute, "click", function () { this.autoMuted = false; this.setMuted(false); });
    this._on(els.mute, "click", function () { this.setMuted(!v.muted); });
    this._on(els.volume, "input", function () { this.setVolume(parseFloat(els.volume.value)); });
    this._on(els.fullscreen, "click", this.toggleFullscreen);
    this._on(els.retry, "click", this.retry);
    this._on(v, "click", this.togglePlay);
    this._on(v, "dblclick", this.toggleFullscreen);

    this._on(v, "play", this._onPlay);
    this._on(v, "pause", this._onPause);
    this._on(v, "playing", this._onPlaying);
    this._on(v, "waiting", this._onWaiting);
    this._on(v, "seeking", this._onSeeking);
    this._on(v, "seeked", this._onSeeked);
    this._on(v, "timeupdate", this._onTimeUpdate);
    this._on(v, "progress", this._renderBuffered);
    this._on(v, "durationchange", this._renderTime);
    this._on(v, "durationchange", this._renderAvailable);
    this._on(v, "loadedmetadata", this._renderTime);
    this._on(v, "volumechange", this._onVolumeChange);
    this._on(v, "ratechange", this._renderSpeed);
    this._on(v, "ended", this._onEnded);
    this._on(v, "error", this._onVideoError);
    this._on(v, "resize", this._onResize);

    this._bindSeekBar();
    this._bindMenu(els["speed-button"], els["speed-menu"], this._chooseSpeed);
    this._bindMenu(els["quality-button"], els["quality-menu"], this._chooseQuality);
    this._bindMenu(els["cc-button"], els["cc-menu"], this._chooseCaptions);
    if (els["audio-button"]) this._bindMenu(els["audio-button"], els["audio-menu"], this._chooseAudio);
    this._on(v.textTracks, "addtrack", function (e) {
      this._on(e.track, "cuechange", this._renderCaptions);
    });
    this._on(v.textTracks, "change", this._renderCaptions);
    if (els["chapter-list"]) {
      this._on(els["chapter-list"], "click", function (e) {
        var b = e.target.closest("button[data-start]");
        if (b) { this.seek(parseFloat(b.getAttribute("data-start"))); this.play(); }
      });
    }
    this._on(v, "durationchange", this._renderChapterMarks);
    this._on(d, "keydown", this._onKeyDown);
    this._on(d, "fullscreenchange", this._renderFullscreen);
    this._on(d, "visibilitychange", function () { this._sample(); });
    // Controls fade while playing and come back on pointer movement or keyboard focus.
    this._on(this.root, "pointermove", this._wake);
    this._on(this.root, "focusin", this._wake);
    this._renderFullscreen();
  };

  P._wake = function () {
    this.root.classList.add("awake");
    this._clear(this._idleId);
    this._idleId = this._timeout(function () {
      if (!this.video.paused && !this.root.querySelector(".player-menu:not([hidden])")) this.root.classList.remove("awake");
    }, 2500);
  };

  P._restorePreferences = function () {
    var vol = parseFloat(storageGet(STORE_VOLUME));
    if (isFinite(vol) && vol >= 0 && vol <= 1) this.video.volume = vol;
    this.video.muted = storageGet(STORE_MUTED) === "1";
    this._onVolumeChange();
  };

  // ---- playback controls -------------------------------------------------------------------
  P.play = function () {
    this._hide("bigplay");
    if (this.autoplayRefused) {
      // startup is measured from the viewer's click when the browser refused to autoplay
      this.autoplayRefused = false;
      this.startupBase = performance.now();
      this.startupAfterClick = true;
    }
    var p = this.video.play();
    if (p && p.catch) p.catch(function () {});
  };

  P.pause = function () { this.video.pause(); };

  P.togglePlay = function () {
    if (this.video.paused || this.video.ended) this.play(); else this.pause();
  };

  P.seek = function (t) {
    var d = this._duration();
    if (!isFinite(d)) return;
    t = Math.max(0, Math.min(d - 0.05, t));
    // past what is published: wait at its edge (playback goes on from there as it grows)
    if (this.availableSeconds !== null) t = Math.max(0, Math.min(t, this.availableSeconds - 1));
    this.video.currentTime = t;
    this._renderTime(t);
  };

  P.setVolume = function (vol) {
    vol = Math.max(0, Math.min(1, Math.round(vol * 100) / 100));
    this.video.volume = vol;
    if (vol > 0 && this.video.muted) this.video.muted = false;
    this._savePreferences();
  };

  P.setMuted = function (muted) {
    this.video.muted = muted;
    if (!muted && this.video.volume === 0) this.video.volume = 0.5;
    this._savePreferences();
  };

  // The viewer's own change is stored at once: `volumechange` fires a task later, and a
  // viewer who unmutes and then reloads or leaves straight away must find it remembered.
  P._savePreferences = function () {
    if (!this.video.muted) this.autoMuted = false;
    if (this.autoMuted) return;
    storageSet(STORE_VOLUME, String(this.video.volume));
    storageSet(STORE_MUTED, this.video.muted ? "1" : "0");
  };

  P.toggleFullscreen = function () {
    var d = global.document;
    if (d.fullscreenElement) { d.exitFullscreen().catch(function () {}); return; }
    if (this.root.requestFullscreen) this.root.requestFullscreen().catch(function () {});
    else if (this.video.webkitEnterFullscreen) this.video.webkitEnterFullscreen();
  };

  P._onKeyDown = function (e) {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || this.destroyed) return;
    var t = e.target;
    var tag = t && t.tagName ? t.tagName.toLowerCase() : "";
    if (tag === "textarea" || tag === "select" || (t && t.isContentEditable)) return;
    if (tag === "input" && t !== this.els.volume) return;
    if (t && t.getAttribute && t.getAttribute("role") && /^menuitem/.test(t.getAttribute("role"))) return;
    var onButton = tag === "button" || tag === "summary" || tag === "a";
    var key = e.key;
    var handled = true;
    switch (key) {
      case " ": case "Spacebar":
        if (onButton) return; // the focused button's own action
        this.togglePlay(); break;
      case "k": case "K": this.togglePlay(); break;
      case "ArrowLeft": if (t === this.els.volume) return; this.seek(this.video.currentTime - SEEK_STEP); this._flash("−5 s"); break;
      case "ArrowRight": if (t === this.els.volume) return; this.seek(this.video.currentTime + SEEK_STEP); this._flash("+5 s"); break;
      case "ArrowUp": this.setVolume((this.video.muted ? 0 : this.video.volume) + VOLUME_STEP); this._flash("Volume " + Math.round(this.video.volume * 100) + "%"); break;
      case "ArrowDown": this.setVolume(this.video.volume - VOLUME_STEP); this._flash(this.video.volume ? "Volume " + Math.round(this.video.volume * 100) + "%" : "Muted"); break;
      case "f": case "F": this.toggleFullscreen(); break;
      case "m": case "M": this.setMuted(!this.video.muted); this._flash(this.video.muted ? "Muted" : "Sound on"); break;
      default: handled = false;
    }
    if (handled) { e.preventDefault(); this._wake(); }
  };

  // ---- seek bar -----------------------------------------------------------------------------
  P._timeAt = function (clientX) {
    var rect = this.els.seek.getBoundingClientRect();
    var frac = Math.max(0, Math.min(1, (clientX - rect.left) / Math.max(1, rect.width)));
    return { frac: frac, time: frac * (this._duration() || 0), rect: rect };
  };

  P._bindSeekBar = function () {
    var bar = this.els.seek;
    this._on(bar, "pointerdown", function (e) {
      if (e.button !== 0 || !isFinite(this._duration())) return;
      this.dragging = true;
      bar.setPointerCapture(e.pointerId);
      var at = this._timeAt(e.clientX);
      this._renderPlayed(at.frac);
      this._showPreview(at);
      e.preventDefault();
    });
    this._on(bar, "pointermove", function (e) {
      if (!isFinite(this._duration())) return;
      var at = this._timeAt(e.clientX);
      this._showPreview(at);
      if (this.dragging) this._renderPlayed(at.frac);
    });
    this._on(bar, "pointerup", function (e) {
      if (!this.dragging) return;
      this.dragging = false;
      this.seek(this._timeAt(e.clientX).time);
      if (e.pointerType !== "mouse") this._hidePreview();
    });
    this._on(bar, "pointercancel", function () { this.dragging = false; this._hidePreview(); });
    this._on(bar, "pointerleave", function () { if (!this.dragging) this._hidePreview(); });
    this._on(bar, "keydown", function (e) {
      var d = this._duration();
      if (!isFinite(d)) return;
      var t = null;
      if (e.key === "Home") t = 0;
      else if (e.key === "End") t = d;
      else if (e.key === "PageUp") t = this.video.currentTime + d / 10;
      else if (e.key === "PageDown") t = this.video.currentTime - d / 10;
      if (t !== null) { this.seek(t); e.preventDefault(); }
    });
  };

  P._loadThumbnails = function (url) {
    if (this._thumbsLoading) return;
    this._thumbsLoading = true;
    var self = this;
    fetch(url).then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (text) {
        if (self.destroyed) return;
        self.cues = parseThumbnailVtt(text, new URL(url, global.location.href).href);
        // warm the first sheet so the first hover shows a picture at once
        if (self.cues.length) { var img = new Image(); img.src = self.cues[0].url; }
      })
      .catch(function () { self._thumbsLoading = false; });
  };

  P._cueAt = function (t) {
    var cues = this.cues, lo = 0, hi = cues.length - 1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      if (t < cues[mid].start) hi = mid - 1;
      else if (t >= cues[mid].end) lo = mid + 1;
      else return cues[mid];
    }
    return cues.length ? cues[Math.max(0, Math.min(cues.length - 1, lo))] : null;
  };

  P._showPreview = function (at) {
    var prev = this.els.preview, img = this.els["preview-image"];
    var cue = this.cues.length ? this._cueAt(at.time) : null;
    if (cue) {
      img.style.width = cue.w + "px";
      img.style.height = cue.h + "px";
      img.style.backgroundImage = "url(\"" + cue.url + "\")";
      img.style.backgroundPosition = (-cue.x) + "px " + (-cue.y) + "px";
      img.hidden = false;
    } else {
      img.hidden = true;
    }
    this.els["preview-time"].textContent = formatTime(at.time);
    var chapter = this._chapterAt(at.time), label = this.els["preview-chapter"];
    if (label) { label.textContent = chapter ? chapter.title : ""; label.hidden = !chapter; }
    prev.hidden = false;
    var half = (cue ? cue.w : 60) / 2;
    var x = Math.max(half, Math.min(at.rect.width - half, at.frac * at.rect.width));
    prev.style.left = x + "px";
    this.els.hoverbar.style.width = (at.frac * 100) + "%";
  };

  P._hidePreview = function () {
    this.els.preview.hidden = true;
    this.els.hoverbar.style.width = "0";
  };

  // ---- audio languages -----------------------------------------------------------------------
  // The menu lists the API's audio renditions (in audio-only mode hls.js plays one media
  // playlist and knows of no other). hls.js's tracks (the master's EXT-X-MEDIA lines) are
  // matched to them by playlist URL. The choice is remembered as "language|role|label": the
  // next video picks the same label, else the same language in the same role (a viewer who
  // chose plain French never lands on a French commentary), else its default.
  function audioKey(t) { return (t.language || "") + "|" + (t.role || "main") + "|" + (t.label || t.name); }

  P._setAudioTracks = function (tracks) {
    var playable = tracks.filter(function (t) { return t.status === "READY" || t.status === "GROWING"; });
    if (playable.map(audioKey).join("\n") === this.audioTracks.map(audioKey).join("\n")) return;
    this.audioTracks = playable;
    var saved = (storageGet(STORE_AUDIO_TRACK) || "").split("|"), choice = 0;
    if (saved.length >= 3) {
      var lang = saved[0], role = saved[1], label = saved.slice(2).join("|"), alike = -1, exact = -1;
      playable.forEach(function (t, i) {
        if ((t.language || "") !== lang || (t.role || "main") !== role) return;
        if (alike < 0) alike = i;
        if (exact < 0 && (t.label || t.name) === label) exact = i;
      });
      choice = exact >= 0 ? exact : (alike >= 0 ? alike : 0);
    }
    this.audioTrack = choice;
    this._buildAudioMenu();
    this._applyAudioTrack();
  };

  // The label, with a bare language tag ("fr", "en (commentary)") named in the viewer's language
  P._trackName = function (t) {
    var label = t.label || t.name || "", lang = t.language;
    if (lang && lang !== "und") {
      if (label === lang) return languageName(lang);
      if (label.indexOf(lang + " (") === 0) return languageName(lang) + label.slice(lang.length);
    }
    return label;
  };

  // Tell hls.js which of the master's audio tracks to play (not in audio-only mode: there the
  // chosen rendition's playlist is the source itself)
  P._applyAudioTrack = function () {
    var hls = this.hls, t = this.audioTracks[this.audioTrack];
    if (!hls || this.audioOnly || !t || !hls.audioTracks || !hls.audioTracks.length) return;
    var tail = "/" + t.name + "/index.m3u8", match = -1;
    hls.audioTracks.forEach(function (h, i) {
      var url = (h.url || "").split("?")[0];
      if (match < 0 && url.slice(-tail.length) === tail) match = i;
    });
    if (match >= 0 && hls.audioTrack !== match) hls.audioTrack = match;
  };

  P._buildAudioMenu = function () {
    var menu = this.els["audio-menu"], btn = this.els["audio-button"];
    if (!menu || !btn) return;
    // the platform's own HLS (no MSE) chooses its audio by itself: nothing to offer
    var tracks = this._nativeSource ? [] : this.audioTracks;
    menu.textContent = "";
    for (var i = 0; i < tracks.length; i++) {
      var t = tracks[i];
      menu.appendChild(this._menuItem(i, this._trackName(t), t.language !== "und" ? t.language : null, i === this.audioTrack));
    }
    // one language has nothing to choose from
    this.els["audio-wrap"].hidden = tracks.length < 2;
    btn.disabled = tracks.length < 2;
    var on = tracks[this.audioTrack];
    btn.setAttribute("aria-label", "Audio: " + (on ? this._trackName(on) : "default"));
  };

  P._chooseAudio = function (value) {
    var index = parseInt(value, 10), t = this.audioTracks[index];
    if (!t || index === this.audioTrack || this._nativeSource) return;
    storageSet(STORE_AUDIO_TRACK, audioKey(t));
    this.audioTrack = index;
    this._buildAudioMenu();
    if (this.audioOnly) this._reloadSource(); // the source is that rendition's own playlist
    else this._applyAudioTrack();
  };

  // ---- captions ------------------------------------------------------------------------------
  P._onSubtitleTracks = function (tracks) {
    this.captionTracks = (tracks || []).map(function (t, i) {
      return { index: i, name: t.name || t.lang || "Track " + (i + 1), lang: t.lang || "" };
    });
    var saved = storageGet(STORE_CAPTIONS), choice = -1;
    if (saved && saved !== "off") {
      var lang = saved.split("|")[0], name = saved.slice(lang.length + 1);
      var same = this.captionTracks.filter(function (t) { return t.lang === lang; });
      var exact = same.filter(function (t) { return t.name === name; })[0];
      if (exact || same[0]) choice = (exact || same[0]).index;
    }
    // without a saved choice captions stay off: the viewer turns them on
    this._setCaptionTrack(choice);
    this._buildCaptionsMenu();
  };

  P._setCaptionTrack = function (index) {
    this.captionTrack = index;
    if (this.hls) this.hls.subtitleTrack = index;
    this._renderCaptions();
  };

  P._buildCaptionsMenu = function () {
    var menu = this.els["cc-menu"], tracks = this.captionTracks || [];
    menu.textContent = "";
    menu.appendChild(this._menuItem(-1, "Off", null, this.captionTrack < 0));
    for (var i = 0; i < tracks.length; i++) {
      menu.appendChild(this._menuItem(tracks[i].index, tracks[i].name, tracks[i].lang, this.captionTrack === tracks[i].index));
    }
    var btn = this.els["cc-button"];
    btn.disabled = tracks.length === 0;
    var on = this.captionTrack >= 0 ? tracks[this.captionTrack] : null;
    btn.classList.toggle("on", !!on);
    btn.setAttribute("aria-label", "Subtitles: " + (on ? on.name : "off"));
  };

  P._chooseCaptions = function (value) {
    var index = parseInt(value, 10);
    if (isNaN(index)) return;
    var t = index >= 0 && this.captionTracks ? this.captionTracks[index] : null;
    storageSet(STORE_CAPTIONS, t ? t.lang + "|" + t.name : "off");
    this._setCaptionTrack(t ? index : -1);
    this._buildCaptionsMenu();
  };

  // The active cues of the chosen track, as plain text: getCueAsHTML() parses the cue into a
  // fragment that is never inserted; only its textContent reaches the page.
  P._renderCaptions = function () {
    var el = this.els.captions;
    if (!el) return;
    var text = [];
    if (this.captionTrack >= 0) {
      var tracks = this.video.textTracks;
      for (var i = 0; i < tracks.length; i++) {
        var t = tracks[i];
        if (t.mode !== "hidden" || (t.kind !== "subtitles" && t.kind !== "captions") || !t.activeCues) continue;
        for (var j = 0; j < t.activeCues.length; j++) {
          var cue = t.activeCues[j];
          text.push(cue.getCueAsHTML ? cue.getCueAsHTML().textContent : String(cue.text || "").replace(/<[^>]*>/g, ""));
        }
      }
    }
    el.textContent = text.join("\n");
    el.hidden = text.length === 0;
  };

  // ---- chapters --------------------------------------------------------------------------------
  P._loadChapters = function (url) {
    this._chaptersUrl = url;
    var self = this;
    fetch(url).then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (text) {
        if (self.destroyed) return;
        self.chapters = parseChaptersVtt(text);
        self._renderChapters();
      })
      .catch(function () { self._chaptersUrl = null; });
  };

  P._chapterAt = function (t) {
    for (var i = this.chapters.length - 1; i >= 0; i--) if (t >= this.chapters[i].start) return this.chapters[i];
    return null;
  };

  P._renderChapters = function () {
    var list = this.els["chapter-list"], wrap = this.els.chapters;
    if (!list) return;
    list.textContent = "";
    for (var i = 0; i < this.chapters.length; i++) {
      var c = this.chapters[i];
      var li = global.document.createElement("li");
      var b = global.document.createElement("button");
      b.type = "button";
      b.setAttribute("data-start", String(c.start));
      b.textContent = formatTime(c.start) + " " + c.title;
      li.appendChild(b);
      list.appendChild(li);
    }
    wrap.hidden = this.chapters.length === 0;
    this._renderChapterMarks();
  };

  P._renderChapterMarks = function () {
    var marks = this.els["chapter-marks"], d = this.video.duration;
    if (!marks) return;
    marks.textContent = "";
    if (!isFinite(d) || !d) return;
    for (var i = 0; i < this.chapters.length; i++) {
      if (this.chapters[i].start <= 0) continue;
      var m = global.document.createElement("span");
      m.className = "player-chapter-mark";
      m.style.left = (this.chapters[i].start / d * 100) + "%";
      marks.appendChild(m);
    }
  };

  // ---- menus (speed, quality) -------------------------------------------------------------
  P._bindMenu = function (button, menu, choose) {
    var self = this;
    function items() { return Array.prototype.slice.call(menu.querySelectorAll("[role^=menuitem]")); }
    function open() {
      self._closeMenus(menu);
      menu.hidden = false;
      button.setAttribute("aria-expanded", "true");
      var all = items();
      var checked = all.filter(function (i) { return i.getAttribute("aria-checked") === "true"; })[0] || all[0];
      if (checked) checked.focus();
    }
    function close(focusButton) {
      if (menu.hidden) return;
      menu.hidden = true;
      button.setAttribute("aria-expanded", "false");
      if (focusButton) button.focus();
    }
    menu._close = close;
    this._on(button, "click", function () { if (menu.hidden) open(); else close(false); });
    this._on(button, "keydown", function (e) {
      if (e.key === "ArrowDown" || e.key === "ArrowUp") { e.preventDefault(); e.stopPropagation(); open(); }
    });
    this._on(menu, "click", function (e) {
      var item = e.target.closest("[role^=menuitem]");
      if (!item) return;
      choose.call(self, item.getAttribute("data-value"));
      close(true);
    });
    this._on(menu, "keydown", function (e) {
      var all = items(), i = all.indexOf(global.document.activeElement);
      var k = e.key;
      if (k === "ArrowDown") all[(i + 1) % all.length].focus();
      else if (k === "ArrowUp") all[(i - 1 + all.length) % all.length].focus();
      else if (k === "Home") all[0].focus();
      else if (k === "End") all[all.length - 1].focus();
      else if (k === "Escape") close(true);
      else if (k === "Tab") { close(false); return; }
      else if (k === "Enter" || k === " ") {
        if (i >= 0) { choose.call(self, all[i].getAttribute("data-value")); close(true); }
      } else return;
      e.preventDefault();
      e.stopPropagation();
    });
    this._on(global.document, "pointerdown", function (e) {
      if (!menu.hidden && !menu.contains(e.target) && !button.contains(e.target)) close(false);
    });
  };

  P._closeMenus = function (except) {
    var menus = this.root.querySelectorAll(".player-menu");
    for (var i = 0; i < menus.length; i++) if (menus[i] !== except && menus[i]._close) menus[i]._close(false);
  };

  P._menuItem = function (value, text, detail, checked) {
    var li = global.document.createElement("li");
    li.setAttribute("role", "menuitemradio");
    li.setAttribute("tabindex", "-1");
    li.setAttribute("data-value", String(value));
    li.setAttribute("aria-checked", checked ? "true" : "false");
    var label = global.document.createElement("span");
    label.className = "player-menu-label";
    label.textContent = text;
    li.appendChild(label);
    if (detail) {
      var small = global.document.createElement("span");
      small.className = "player-menu-detail";
      small.textContent = detail;
      li.appendChild(small);
    }
    return li;
  };

  P._buildSpeedMenu = function () {
    var menu = this.els["speed-menu"];
    menu.textContent = "";
    for (var i = 0; i < SPEEDS.length; i++) {
      var s = SPEEDS[i];
      menu.appendChild(this._menuItem(s, s === 1 ? "Normal" : s + "×", null, this.video.playbackRate === s));
    }
    this._renderSpeed();
  };

  P._chooseSpeed = function (value) {
    var s = parseFloat(value);
    if (SPEEDS.indexOf(s) >= 0) this.video.playbackRate = s;
  };

  P._renderSpeed = function () {
    var rate = this.video.playbackRate;
    var items = this.els["speed-menu"].children;
    for (var i = 0; i < items.length; i++) {
      items[i].setAttribute("aria-checked", parseFloat(items[i].getAttribute("data-value")) === rate ? "true" : "false");
    }
    this.els["speed-button"].textContent = rate + "×";
    this.els["speed-button"].setAttribute("aria-label", "Playback speed: " + (rate === 1 ? "normal" : rate + " times"));
  };

  P._buildQualityMenu = function (levels) {
    var menu = this.els["quality-menu"];
    menu.textContent = "";
    var sorted = levels.slice().sort(function (a, b) { return (b.height - a.height) || (b.bitrate - a.bitrate); });
    menu.appendChild(this._menuItem(-1, "Auto", null, this.manualLevel < 0));
    for (var i = 0; i < sorted.length; i++) {
      var l = sorted[i];
      menu.appendChild(this._menuItem(l.index, l.label, formatBitrate(l.bitrate), this.manualLevel === l.index));
    }
    // the audio rendition alone, for a video that has one (not with the platform's own HLS)
    var audio = !this._nativeSource && this._audioUrl();
    if (audio) {
      menu.appendChild(this._menuItem(AUDIO_ONLY, "Audio only",
        formatBitrate(this.audio.average_bandwidth || this.audio.bandwidth), this.audioOnly));
    }
    // the platform's own HLS (no MSE) chooses the quality itself
    this.els["quality-button"].disabled = !!this._nativeSource || (levels.length === 0 && !audio);
    this._renderQuality();
  };

  P._chooseQuality = function (value) {
    if (!this.hls) return;
    if (value === AUDIO_ONLY) {
      this.wantAudioOnly = true;
      storageSet(STORE_AUDIO_ONLY, "1");
      this._setAudioOnly(true);
      return;
    }
    var level = parseInt(value, 10);
    if (isNaN(level)) return;
    this.wantAudioOnly = false;
    storageSet(STORE_AUDIO_ONLY, "0");
    if (this.audioOnly) { this._setAudioOnly(false, level); return; } // the master again, at this level
    this.manualLevel = level;
    if (level < 0) {
      // Auto: keep what plays now, drop what is buffered beyond it, let the ABR choose again
      this.hls.nextLevel = -1;
    } else {
      this.hls.currentLevel = level; // now: flush and load this rendition at the playhead
    }
    this._renderQuality();
  };

  // The rendition on screen: the picture's own size once a frame is shown (hls.js reports the
  // level switch a moment before or after the first frame of the new level appears).
  P._currentLabel = function () {
    if (this.video.videoHeight) return rungLabel(this.video.videoWidth, this.video.videoHeight);
    var l = this.levels[this.playingLevel];
    return l ? l.label : "";
  };

  P._renderQuality = function () {
    var playing = this.audioOnly ? "" : this._currentLabel();
    var text, spoken;
    if (this.audioOnly) {
      text = "Audio only";
      spoken = "Quality: audio only";
    } else if (this.manualLevel >= 0 && this.levels[this.manualLevel]) {
      text = this.levels[this.manualLevel].label;
      spoken = "Quality: " + text;
    } else {
      text = playing ? "Auto (" + playing + ")" : "Auto";
      spoken = "Quality: automatic" + (playing ? ", playing " + playing : "");
    }
    var btn = this.els["quality-button"];
    btn.textContent = text;
    btn.setAttribute("aria-label", spoken);
    var items = this.els["quality-menu"].children;
    var chosen = this.audioOnly ? AUDIO_ONLY : String(this.manualLevel >= 0 ? this.manualLevel : -1);
    for (var i = 0; i < items.length; i++) {
      var v = parseInt(items[i].getAttribute("data-value"), 10);
      items[i].setAttribute("aria-checked", items[i].getAttribute("data-value") === chosen ? "true" : "false");
      if (v === -1) items[i].querySelector(".player-menu-label").textContent = playing ? "Auto (" + playing + ")" : "Auto";
    }
  };

  // ---- rendering state ------------------------------------------------------------------------
  P._renderPlayed = function (frac) {
    this.els.played.style.width = (frac * 100) + "%";
    this.els.handle.style.left = (frac * 100) + "%";
  };

  P._renderTime = function (forced) {
    var v = this.video;
    var d = isFinite(this._duration()) ? this._duration() : 0;
    // while the source is swapped, the element briefly reads 0: show where playback resumes
    var t = typeof forced === "number" ? forced : this._switchAt != null ? this._switchAt : v.currentTime;
    if (!this.dragging) this._renderPlayed(d ? t / d : 0);
    this.els.current.textContent = formatTime(t);
    this.els.duration.textContent = formatTime(d);
    var seek = this.els.seek;
    seek.setAttribute("aria-valuemax", String(Math.floor(d)));
    seek.setAttribute("aria-valuenow", String(Math.floor(t)));
    seek.setAttribute("aria-valuetext", spokenTime(t) + " of " + spokenTime(d));
  };

  P._renderAvailable = function () {
    var el = this.els.available;
    if (!el) return;
    var d = this._duration();
    if (this.availableSeconds === null || !isFinite(d) || !d) { el.hidden = true; return; }
    el.hidden = false;
    el.style.width = (Math.min(1, this.availableSeconds / d) * 100) + "%";
  };

  P._renderBuffered = function () {
    var v = this.video, d = this._duration();
    if (!isFinite(d) || !d) return;
    var b = v.buffered, end = 0, start = 0;
    // the buffered range around the playhead is what matters to the viewer
    for (var i = 0; i < b.length; i++) {
      if (b.start(i) <= v.currentTime + 0.5 && b.end(i) >= v.currentTime) { start = b.start(i); end = b.end(i); break; }
    }
    this.els.buffered.style.left = (start / d * 100) + "%";
    this.els.buffered.style.width = (Math.max(0, end - start) / d * 100) + "%";
  };

  P._renderFullscreen = function () {
    var fs = global.document.fullscreenElement === this.root;
    this.root.classList.toggle("fullscreen", fs);
    this.els.fullscreen.setAttribute("aria-label", fs ? "Exit full screen (f)" : "Full screen (f)");
    this.els.fullscreen.title = fs ? "Exit full screen (f)" : "Full screen (f)";
  };

  P._onVolumeChange = function () {
    var v = this.video;
    var muted = v.muted || v.volume === 0;
    this.els.volume.value = String(v.muted ? 0 : v.volume);
    this.els.volume.setAttribute("aria-valuetext", muted ? "muted" : Math.round(v.volume * 100) + "%");
    this.els.mute.setAttribute("aria-label", muted ? "Unmute (m)" : "Mute (m)");
    this.els.mute.title = muted ? "Unmute (m)" : "Mute (m)";
    this.root.classList.toggle("muted", muted);
    if (!this.autoMuted) this._savePreferences(); // also changes made outside our controls
    if (!v.muted) { this.autoMuted = false; this._hide("unmute"); }
  };

  P._setPlayingUi = function (playing) {
    this.root.classList.toggle("playing", playing);
    this.els.play.setAttribute("aria-label", playing ? "Pause (k)" : "Play (k)");
    this.els.play.title = playing ? "Pause (k)" : "Play (k)";
  };

  // ---- media events -----------------------------------------------------------------------
  P._onPlay = function () {
    this._setPlayingUi(true);
    this._hide("bigplay");
    // the restart after a reload of ours (more qualities, audio only) is not the viewer's play
    if (this.analytics && this.started && !this._reloading) this.analytics.track("play", this.video.currentTime);
    this._sample();
  };

  P._onPause = function () {
    this._setPlayingUi(false);
    this.root.classList.add("awake");
    if (this.analytics && this.started && !this.video.ended && !this._reloading) this.analytics.track("pause", this.video.currentTime);
    this._sample();
  };

  P._onPlaying = function () {
    this._hide("spinner");
    this.root.setAttribute("data-state", "playing");
    this._reloading = false;
    this._switchAt = null;
    this._endStall();
    if (this.audioOnly) this._showRendition(AUDIO_ONLY);
    if (!this.started) this._firstFrame();
    this._sample();
  };

  P._firstFrame = function () {
    this.started = true;
    var self = this;
    var done = false;
    function record(at) {
      if (done || self.destroyed) return;
      done = true;
      self.startupMs = Math.max(0, at - self.startupBase);
      self.root.setAttribute("data-startup-ms", String(Math.round(self.startupMs)));
      if (self.analytics) {
        self.analytics.track("first_frame", self.video.currentTime, {
          startup_ms: Math.round(self.startupMs), autoplay: !self.startupAfterClick,
          rendition: (self.audioOnly ? AUDIO_ONLY : self._currentLabel()) || undefined,
        });
        self.analytics.track("play", self.video.currentTime);
      }
    }
    if (this.video.requestVideoFrameCallback && !this.audioOnly) {
      // the moment the first frame is handed to the compositor, not merely "playing"
      this.video.requestVideoFrameCallback(function (now, meta) { record(meta && meta.expectedDisplayTime || now); });
      this._timeout(function () { record(performance.now()); }, 1000);
    } else {
      record(performance.now());
    }
  };

  P._onWaiting = function () {
    this._show("spinner");
    if (this.started && !this.video.seeking && !this.stalledAt && !this._reloading) {
      this.stalledAt = performance.now();
      if (this.analytics) this.analytics.track("rebuffer_start", this.video.currentTime);
      this._sample();
    }
  };

  P._endStall = function () {
    if (!this.stalledAt) return;
    var ms = performance.now() - this.stalledAt;
    this.stalledAt = 0;
    if (this.analytics) {
      this.analytics.addRebuffer(ms);
      this.analytics.track("rebuffer_end", this.video.currentTime, { duration_ms: Math.round(ms) });
    }
  };

  P._onSeeking = function () {
    this._show("spinner");
    this._endStall(); // a stall the viewer cut short by seeking ends here
    if (this._switchAt != null) return; // hls.js putting a new source at the old place
    if (this.analytics && this.started) {
      var from = this._lastPosition || 0;
      this.analytics.track("seek", this.video.currentTime, { from: Math.round(from * 1000) / 1000,
                                                             to: Math.round(this.video.currentTime * 1000) / 1000 });
    }
    this._sample();
  };

  P._onSeeked = function () {
    if (!this.video.paused) { /* "playing" hides the spinner once frames flow */ } else this._hide("spinner");
    this._switchAt = null;
    this._lastPosition = this.video.currentTime;
    this._renderTime();
    this._renderBuffered();
    this._sample();
  };

  P._onTimeUpdate = function () {
    if (this._switchAt != null) return; // the element reads 0 until the new source is in place
    if (!this.video.seeking) this._lastPosition = this.video.currentTime;
    if (this.stalledAt && !this.video.paused && this.video.readyState >= 3) this._endStall();
    if (this.availableSeconds !== null) this._capToPublished();
    this._renderTime();
    this._renderBuffered();
    this._sample();
  };

  P._onEnded = function () {
    this._setPlayingUi(false);
    if (this.analytics) { this._sample(); this.analytics.track("ended", this.video.currentTime); this.analytics.flush(false); }
  };

  // Tell the analytics whether this moment counts as watching: playing, visible, not stalled.
  P._sample = function (label) {
    if (!this.analytics) return;
    var v = this.video;
    var counting = this.started && !v.paused && !v.ended && !v.seeking && !this.stalledAt &&
      global.document.visibilityState === "visible";
    this.analytics.sample(v.currentTime, counting, label || this.shownLabel || null);
  };

  VodPlayer.formatTime = formatTime;
  VodPlayer.rungLabel = rungLabel;
  VodPlayer.parseThumbnailVtt = parseThumbnailVtt;
  VodPlayer.parseChaptersVtt = parseChaptersVtt;
  global.VodPlayer = VodPlayer;
})(window);
