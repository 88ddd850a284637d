// Upload page: drag and drop of several files, each sent with tus-js-client (resumable),
// with progress, speed, time left, pause/resume, automatic retry after network errors,
// resume after a reload (tus-js-client remembers upload URLs in localStorage, keyed by the
// file's name, type, size and date), then a link to the watch page with processing progress.
(function () {
  "use strict";

  const drop = document.getElementById("drop");
  const input = document.getElementById("file-input");
  const list = document.getElementById("uploads");
  const rowTemplate = document.getElementById("upload-row");
  const unfinished = document.getElementById("unfinished");
  const unfinishedList = document.getElementById("unfinished-list");

  const endpoint = new URL(drop.dataset.endpoint, window.location.href).href;
  const maxBytes = Number(drop.dataset.maxBytes);
  const chunkSize = Number(drop.dataset.chunkSize) || Infinity;
  const extensions = (drop.dataset.extensions || "").split(",").filter(Boolean);
  // after a network error: retry at once, then back off up to a minute, for ~10 minutes
  const retryDelays = [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000];
  const active = new Set();

  if (!window.tus || !tus.isSupported) {
    drop.querySelector(".drop-title").textContent = "This browser cannot upload resumably; use a current browser.";
    return;
  }

  // ------------------------------------------------------------ formatting

  function bytes(n) {
    if (!isFinite(n)) return "—";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
  }

  function duration(s) {
    if (!isFinite(s) || s < 0) return "";
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function serverMessage(err) {
    const res = err && err.originalResponse;
    if (res) {
      try {
        const body = JSON.parse(res.getBody() || "{}");
        if (body.message) return body.message;
      } catch (_e) { /* not JSON */ }
      if (res.getStatus()) return "the server answered " + res.getStatus();
    }
    return err && err.message ? err.message.split("\n")[0] : "unknown error";
  }

  // ------------------------------------------------------------ one file

  function UploadRow(file) {
    this.file = file;
    this.el = rowTemplate.content.firstElementChild.cloneNode(true);
    this.el.querySelector(".name").textContent = file.name;
    this.el.querySelector(".size").textContent = bytes(file.size);
    this.bar = this.el.querySelector("progress");
    this.stateEl = this.el.querySelector(".state");
    this.speedEl = this.el.querySelector(".speed");
    this.etaEl = this.el.querySelector(".eta");
    this.pauseBtn = this.el.querySelector(".pause");
    this.cancelBtn = this.el.querySelector(".cancel");
    this.samples = [];
    this.upload = null;
    list.prepend(this.el);
    this.pauseBtn.addEventListener("click", this.togglePause.bind(this));
    this.cancelBtn.addEventListener("click", this.cancel.bind(this));
  }

  UploadRow.prototype.setState = function (state, text) {
    this.el.dataset.state = state;
    this.stateEl.textContent = text;
    const running = state === "uploading" || state === "retrying" || state === "starting";
    this.pauseBtn.hidden = !(running || state === "paused");
    this.pauseBtn.textContent = state === "paused" ? "Resume" : "Pause";
    this.cancelBtn.hidden = !(running || state === "paused");
    if (running) active.add(this); else active.delete(this);
  };

  UploadRow.prototype.refuse = function (message) {
    this.setState("refused", message);
    this.bar.hidden = true;
  };

  UploadRow.prototype.precheck = function () {
    const name = this.file.name.toLowerCase();
    const dot = name.lastIndexOf(".");
    const ext = dot >= 0 ? name.slice(dot) : "";
    if (ext && extensions.length && extensions.indexOf(ext) < 0) {
      return "'" + ext + "' files are not supported; upload a video such as " + extensions.slice(0, 8).join(", ");
    }
    if (this.file.type && !/^video\/|^application\/(octet-stream|mp4|x-matroska|mxf|ogg)/.test(this.file.type)) {
      return "this is " + this.file.type + ", not a video";
    }
    if (this.file.size === 0) return "the file is empty";
    if (maxBytes && this.file.size > maxBytes) {
      return "the file is " + bytes(this.file.size) + ", over this server's limit of " + bytes(maxBytes);
    }
    return null;
  };

  UploadRow.prototype.start = function () {
    const problem = this.precheck();
    if (problem) { this.refuse(problem); return; }
    const self = this;
    this.setState("starting", "Starting…");
    this.upload = new tus.Upload(this.file, {
      endpoint: endpoint,
      chunkSize: chunkSize,
      retryDelays: retryDelays,
      removeFingerprintOnSuccess: true,
      metadata: { filename: this.file.name, filetype: this.file.type || "application/octet-stream" },
      onProgress: function (sent, total) { self.progress(sent, total); },
      onShouldRetry: function (err, attempt, options) {
        const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
        // 4xx means the server refused this upload for a reason a retry cannot change,
        // except a lost race (409) or a busy lock (423)
        if (status >= 400 && status < 500 && status !== 409 && status !== 423) return false;
        self.setState("retrying", navigator.onLine === false
          ? "Offline — will continue when the network is back"
          : "Connection problem — retrying (attempt " + (attempt + 1) + ")…");
        return true;
      },
      onError: function (err) { self.failed(err); },
      onSuccess: function () { self.finished(); },
      onUploadUrlAvailable: function () { showUnfinished(); },
    });
    this.upload.findPreviousUploads().then(function (previous) {
      return self.pickPrevious(previous);
    }).then(function (resumable) {
      if (resumable === false) return;
      if (resumable) {
        self.upload.resumeFromPreviousUpload(resumable);
        self.setState("uploading", "Resuming where it stopped…");
      } else {
        self.setState("uploading", "Uploading…");
      }
      self.upload.start();
    });
  };

  // The newest earlier upload of this very file that the server still has; false if the
  // server refused this file before (uploading it again would only be refused again).
  UploadRow.prototype.pickPrevious = function (previous) {
    const self = this;
    previous.sort(function (a, b) { return a.creationTime < b.creationTime ? 1 : -1; });
    const first = previous[0];
    if (!first || !first.uploadUrl) return Promise.resolve(null);
    return fetch(first.uploadUrl, { cache: "no-store" }).then(function (r) {
      if (!r.ok) return null;
      return r.json().then(function (info) {
        if (info.status === "FAILED") {
          tus.defaultOptions.urlStorage.removeUpload(first.urlStorageKey);
          self.refuse("Refused earlier: " + (info.error || "not a valid video") + " (choose another file)");
          return false;
        }
        return info.status === "ACTIVE" || info.status === "COMPLETE" ? first : null;
      });
    }).catch(function () { return first; });
  };

  UploadRow.prototype.progress = function (sent, total) {
    const now = performance.now();
    this.samples.push([now, sent]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
    const pct = total ? (sent / total) * 100 : 0;
    this.bar.value = pct;
    if (this.el.dataset.state !== "uploading") this.setState("uploading", "Uploading…");
    this.stateEl.textContent = "Uploading… " + pct.toFixed(pct < 10 ? 1 : 0) + "% of " + bytes(total);
    const first = this.samples[0];
    const dt = (now - first[0]) / 1000;
    if (dt > 0.3) {
      const speed = (sent - first[1]) / dt;
      this.speedEl.textContent = bytes(speed) + "/s";
      this.etaEl.textContent = speed > 0 ? duration((total - sent) / speed) + " left" : "";
    }
  };

  UploadRow.prototype.togglePause = function () {
    if (!this.upload) return;
    if (this.el.dataset.state === "paused") {
      this.samples = [];
      this.setState("uploading", "Resuming…");
      this.upload.start();
    } else {
      this.upload.abort();
      this.setState("paused", "Paused at " + Math.round(this.bar.value) + "%");
      this.speedEl.textContent = "";
      this.etaEl.textContent = "";
    }
  };

  UploadRow.prototype.cancel = function () {
    if (!this.upload) return;
    this.upload.abort(true);  // terminates the upload on the server and forgets it here
    this.setState("cancelled", "Cancelled");
    this.bar.hidden = true;
  };

  UploadRow.prototype.failed = function (err) {
    if (navigator.onLine === false) {
      // retries ran out while offline: continue as soon as the network is back
      const self = this;
      this.setState("retrying", "Offline — will continue when the network is back");
      window.addEventListener("online", function () { self.upload.start(); }, { once: true });
      return;
    }
    this.refuse("Upload failed: " + serverMessage(err));
  };

  UploadRow.prototype.finished = function () {
    const self = this;
    this.bar.value = 100;
    this.speedEl.textContent = "";
    this.etaEl.textContent = "";
    this.setState("done", "Uploaded");
    showUnfinished();
    fetch(this.upload.url, { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (info) {
      if (!info.video) { self.stateEl.textContent = "Uploaded; waiting for the server to register it…"; return; }
      const link = self.el.querySelector(".watch");
      link.href = info.video.watch_url;
      link.textContent = "Watch " + self.file.name;
      self.el.querySelector(".result").hidden = false;
      self.el.dataset.videoId = info.video.id;
      self.sendCaption(new URL(info.video.status_url, window.location.href).pathname.replace(/\/$/, "") + "/captions");
      self.followProcessing(info.video.status_url);
    }).catch(function () {
      self.stateEl.textContent = "Uploaded; the video link will appear in the library.";
    });
  };

  UploadRow.prototype.followProcessing = function (statusUrl) {
    const self = this;
    const out = this.el.querySelector(".processing");
    function poll() {
      fetch(statusUrl, { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (v) {
        if (v.status === "READY") { out.textContent = "ready to play"; return; }
        if (v.status === "PARTIAL") { out.textContent = "playable (some qualities failed)"; return; }
        if (v.status === "FAILED") { out.textContent = "processing failed: " + (v.error || "unknown error"); return; }
        out.textContent = v.status === "PROCESSING"
          ? "processing " + Math.round(v.progress) + "%" + (v.stage ? " (" + v.stage + ")" : "")
          : "queued for processing";
        setTimeout(poll, 2000);
      }).catch(function () { setTimeout(poll, 5000); });
    }
    poll();
  };

  // ------------------------------------------------------------ page

  // ------------------------------------------------------------ an attached caption

  // The caption chosen when the upload started, kept with its row and sent after it finishes.
  function pendingCaption() {
    const box = document.getElementById("attach-caption");
    if (!box) return null;
    const file = box.querySelector("input[name=caption]").files[0];
    if (!file) return null;
    return { file: file, language: box.querySelector("input[name=language]").value.trim(),
             label: box.querySelector("input[name=label]").value.trim(),
             token: box.querySelector("input[name=token]").value };
  }

  UploadRow.prototype.sendCaption = function (captionsUrl) {
    const c = this.caption, out = this.el.querySelector(".caption-result");
    if (!c) return;
    const body = new FormData();
    body.append("file", c.file, c.file.name);
    body.append("language", c.language);
    if (c.label) body.append("label", c.label);
    out.textContent = "Sending the caption…";
    fetch(captionsUrl, { method: "POST", body: body, headers: c.token ? { Authorization: "Bearer " + c.token } : {} })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (j) {
          // the server's words, shown as text
          out.textContent = r.ok ? "Caption added: " + (j.message || "") : "Caption refused (" + r.status + "): " + (j.message || "");
        });
      }).catch(function () { out.textContent = "The caption could not be sent."; });
  };

  function addFiles(files) {
    const caption = pendingCaption();
    Array.prototype.forEach.call(files, function (file) {
      const row = new UploadRow(file);
      row.caption = caption;
      row.start();
    });
  }

  input.addEventListener("change", function () { addFiles(input.files); input.value = ""; });
  drop.addEventListener("click", function (e) { if (e.target === drop) input.click(); });
  drop.addEventListener("keydown", function (e) {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  ["dragenter", "dragover"].forEach(function (type) {
    drop.addEventListener(type, function (e) { e.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    drop.addEventListener(type, function (e) { e.preventDefault(); drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (e) {
    if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
  });
  // a file dropped next to the zone must not navigate away from the page and its uploads
  window.addEventListener("dragover", function (e) { e.preventDefault(); });
  window.addEventListener("drop", function (e) { e.preventDefault(); });

  window.addEventListener("beforeunload", function (e) {
    if (active.size) { e.preventDefault(); e.returnValue = ""; }
  });

  // Uploads this browser started earlier and did not finish (tab closed, reload, crash).
  function showUnfinished() {
    const storage = tus.defaultOptions.urlStorage;
    if (!storage || !storage.findAllUploads) return;
    storage.findAllUploads().then(function (all) {
      const inProgress = new Set(Array.from(active, function (row) {
        return row.upload && row.upload.url;
      }));
      unfinishedList.textContent = "";
      return Promise.all(all.map(function (prev) {
        if (!prev.uploadUrl || inProgress.has(prev.uploadUrl)) return null;
        return fetch(prev.uploadUrl, { cache: "no-store" }).then(function (r) {
          return r.ok ? r.json() : null;
        }).then(function (info) {
          if (!info || info.status !== "ACTIVE") { storage.removeUpload(prev.urlStorageKey); return null; }
          const li = document.createElement("li");
          const pct = info.length ? Math.floor((info.offset / info.length) * 100) : 0;
          li.textContent = (info.filename || (prev.metadata && prev.metadata.filename) || "a file") +
            " — " + pct + "% uploaded (" + bytes(info.offset) + " of " + bytes(info.length) + ") ";
          const discard = document.createElement("button");
          discard.type = "button";
          discard.textContent = "Discard";
          discard.addEventListener("click", function () {
            tus.Upload.terminate(prev.uploadUrl, {}).catch(function () {}).then(function () {
              return storage.removeUpload(prev.urlStorageKey);
            }).then(showUnfinished);
          });
          li.appendChild(discard);
          unfinishedList.appendChild(li);
          return li;
        }).catch(function () { return null; });
      })).then(function (items) {
        unfinished.hidden = !items.some(Boolean);
      });
    });
  }
  showUnfinished();
})();
