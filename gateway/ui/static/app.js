"use strict";
// The operator's dashboard: plain JS, no library. One WebSocket (/ui/live, with this page's query,
// so a ?token= goes along) brings state, frames, detections and log lines, and carries the
// Start/Stop/Restart actions. It reconnects by itself when the gateway restarts.
(function () {
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  let ws = null, backoff = 500, nextId = 1, lastState = null, watchKey = "";
  const tiles = new Map();   // camera → {root, canvas, stats, badge, frames}
  const frames = new Map();  // camera → last frame message
  const pending = new Map(); // action id → button
  let route = parseRoute();

  function parseRoute() {
    const m = location.hash.match(/^#\/camera\/(.+)$/);
    return m ? {page: "camera", camera: decodeURIComponent(m[1])} : {page: "fleet"};
  }

  // -- the connection ---------------------------------------------------------------------------
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(proto + "//" + location.host + "/ui/live" + location.search);
    ws.onopen = () => { backoff = 500; watchKey = ""; setLink(true); subscribe(); };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg.type === "state") onState(msg);
      else if (msg.type === "frame") onFrame(msg);
      else if (msg.type === "detections") onDetections(msg);
      else if (msg.type === "logs") onLogs(msg);
      else if (msg.type === "result") onResult(msg);
    };
    ws.onclose = () => {
      setLink(false);
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 5000);
    };
  }
  function send(msg) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg)); }
  function setLink(up) {
    const h = $("h-link");
    h.textContent = up ? "live" : "reconnecting…";
    h.className = "stat " + (up ? "ok" : "bad");
    document.body.dataset.live = up ? "1" : "0";
  }

  // What this page looks at: every camera on the fleet page, one on a camera page.
  function subscribe(force) {
    const cameras = route.page === "camera" ? [route.camera]
      : (lastState ? lastState.cameras.map((c) => c.camera) : []);
    const key = route.page + "|" + cameras.join(",");
    if (key === watchKey && !force) return;
    watchKey = key;
    send({op: "watch", cameras: cameras});
    send({op: "logs", camera: route.page === "camera" ? route.camera : null});
  }

  // -- state ----------------------------------------------------------------------------------------
  function stateOf(c) {
    if (c.operator_stopped) return ["STOPPED", "warn"];
    if (c.process_state === "RUNNING") return c.stream_online ? ["ONLINE", "ok"] : ["NO STREAM", "bad"];
    return [c.process_state || "UNKNOWN", c.process_state === "STARTING" ? "warn" : "bad"];
  }
  const fmt = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  function sessions(c) {
    const s = Object.entries(c.sessions || {});
    return s.length ? s.map(([d, id]) => d + ": " + (id === null ? "–" : id)).join(", ") : "–";
  }
  function statRows(c) {
    return [
      ["process", (c.process_state || "–") + (c.pid ? " (" + c.pid + ")" : "") + (c.host ? " on " + c.host : "")],
      ["stream", c.stream_online ? "online" : "offline"],
      ["fps", fmt(c.fps, 1)],
      ["inference", fmt(c.inference_ms, 1) + " ms"],
      ["reconnects 1h", c.reconnects_1h],
      ["restarts 1h", c.restarts_1h],
      ["RSS", fmt(c.rss_mb, 0) + " MB"],
      ["detections", c.detections],
      ["frame age", c.frame_age_s === null ? "–" : fmt(c.frame_age_s, 1) + " s"],
      ["sessions", sessions(c), "wide"],
      ["last error", c.last_error || "–", "wide" + (c.last_error && !c.online ? " err" : "")],
    ];
  }
  function fillStats(dl, c) {
    dl.replaceChildren(...statRows(c).map(([k, v, cls]) => {
      const d = el("div", cls && cls.includes("wide") ? "wide" : "");
      d.append(el("dt", "", k), el("dd", cls && cls.includes("err") ? "err" : "", String(v)));
      d.dataset.key = k;
      return d;
    }));
  }

  function onState(msg) {
    lastState = msg;
    const g = msg.gateway, n = msg.counts;
    $("h-backend").innerHTML = "";
    $("h-backend").append("backend: ", el("b", g.backend_connected ? "ok" : "warn",
      g.backend_connected ? "connected" : "not connected"));
    $("h-counts").replaceChildren("cameras ", el("b", "", n.cameras), " · online ", el("b", "ok", n.online),
      " · failing ", el("b", n.failing ? "bad" : "", n.failing), " · stopped ", el("b", n.stopped ? "warn" : "", n.stopped));
    $("h-gateway").replaceChildren("gateway CPU ", el("b", "", fmt(g.cpu_percent, 1) + " %"),
      " · RSS ", el("b", "", fmt(g.rss_mb, 0) + " MB"));
    $("h-host").replaceChildren("host CPU ", el("b", "", fmt(g.host_cpu_percent, 0) + " %"),
      " · memory ", el("b", "", fmt(g.host_memory_percent, 0) + " %"));
    document.body.dataset.cameras = String(n.cameras);
    renderHosts(msg.hosts || []);
    renderFleet(msg.cameras);
    renderCamera(msg.cameras);
    subscribe();
  }

  function renderFleet(cameras) {
    const grid = $("grid");
    const seen = new Set();
    $("fleet-empty").hidden = cameras.length > 0;
    for (const c of cameras) {
      seen.add(c.camera);
      let t = tiles.get(c.camera);
      if (!t) {
        t = {root: el("article", "tile"), canvas: el("canvas"), stats: el("dl", "stats"), badge: el("span", "badge"),
          stale: el("span", "stale", "no frame"), frames: 0};
        t.root.dataset.camera = c.camera;
        const h = el("h3"), a = el("a", "", c.camera);
        a.href = "#/camera/" + encodeURIComponent(c.camera);
        h.append(a, el("span", "grow"), t.badge);
        const f = el("div", "frame");
        t.canvas.width = 640; t.canvas.height = 360;
        f.append(t.canvas, t.stale);
        t.root.append(h, f, t.stats);
        grid.append(t.root);
        tiles.set(c.camera, t);
      }
      const [label, cls] = stateOf(c);
      t.badge.textContent = label;
      t.badge.className = "badge " + cls;
      t.root.className = "tile" + (cls === "bad" ? " failing" : c.operator_stopped ? " stopped" : "");
      t.root.dataset.state = label;
      t.root.dataset.process = c.process_state || "";
      t.stale.hidden = c.frame_age_s !== null && c.frame_age_s < 5;
      t.stale.textContent = c.frame_age_s === null ? "no frame yet" : "last frame " + fmt(c.frame_age_s, 0) + " s ago";
      fillStats(t.stats, c);
    }
    for (const [id, t] of tiles) if (!seen.has(id)) { t.root.remove(); tiles.delete(id); }
  }

  function renderHosts(hosts) {
    $("hosts").hidden = hosts.length === 0;
    $("host-list").replaceChildren(...hosts.map((h) => {
      const box = el("div", "host" + (h.up ? "" : " down") + (h.draining ? " draining" : ""));
      box.dataset.host = h.name;
      const state = !h.up ? ["DOWN", "bad"] : h.draining ? ["DRAINING", "warn"] : ["UP", "ok"];
      const b = el("button", "", h.draining ? "Undrain" : "Drain");
      b.dataset.hostAction = h.draining ? "undrain" : "drain";
      b.addEventListener("click", () => {
        const id = nextId++;
        pending.set(id, b);
        b.disabled = true;
        send({op: "host", host: h.name, action: b.dataset.hostAction, id: id});
      });
      box.append(el("b", "", h.name), el("span", "badge " + state[1], state[0]),
        el("small", "", h.cameras + "/" + h.capacity + " cameras · load " + fmt(h.load1, 2) +
          (h.error ? " · " + h.error : "")), b);
      return box;
    }));
  }

  function renderCamera(cameras) {
    if (route.page !== "camera") return;
    const c = cameras.find((x) => x.camera === route.camera);
    $("cam-title").textContent = route.camera;
    if (!c) { $("cam-badge").textContent = "NO SUCH CAMERA"; return; }
    const [label, cls] = stateOf(c);
    $("cam-badge").textContent = label;
    $("cam-badge").className = "badge " + cls;
    $("camera").dataset.state = label;
    fillStats($("cam-stats"), c);
    const stale = document.querySelector("#camera .stale");
    stale.hidden = c.frame_age_s !== null && c.frame_age_s < 5;
    stale.textContent = c.frame_age_s === null ? "no frame yet" : "last frame " + fmt(c.frame_age_s, 0) + " s ago";
  }

  // -- frames ------------------------------------------------------------------------------------------
  function onFrame(msg) {
    frames.set(msg.camera, msg);
    const img = new Image();
    img.onload = () => {
      const t = tiles.get(msg.camera);
      if (t && route.page === "fleet") {
        draw(t.canvas, img, msg, false);
        t.frames += 1;
        t.root.dataset.frames = String(t.frames);
        t.root.dataset.captured = String(msg.captured_at);
        t.root.dataset.boxes = String(msg.tracks.length);
        t.root.dataset.labels = msg.tracks.map((x) => x.labels.join(" ")).join("|");
      }
      if (route.page === "camera" && msg.camera === route.camera) {
        const canvas = $("cam-canvas");
        draw(canvas, img, msg, $("debug").checked);
        canvas.dataset.captured = String(msg.captured_at);
        canvas.dataset.boxes = String(msg.tracks.length);
      }
    };
    img.src = "data:image/jpeg;base64," + msg.jpeg;
  }

  function draw(canvas, img, msg, debug) {
    if (canvas.width !== img.naturalWidth || canvas.height !== img.naturalHeight) {
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    }
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const s = img.naturalWidth / Math.max(1, msg.width);
    const lw = Math.max(2, Math.round(canvas.width / 320));
    ctx.lineWidth = lw;
    ctx.font = "bold " + Math.max(12, Math.round(canvas.width / 45)) + "px system-ui, sans-serif";
    for (const b of msg.crops || []) {   // the subscription's crop / ROI
      ctx.setLineDash([8, 6]);
      ctx.strokeStyle = "#f0b429";
      ctx.strokeRect(b[0] * s, b[1] * s, (b[2] - b[0]) * s, (b[3] - b[1]) * s);
      ctx.setLineDash([]);
      ctx.fillStyle = "#f0b429";
      ctx.fillText("ROI", b[0] * s + 4, b[1] * s + 16);
    }
    if (debug) {  // where the motion detector saw change in the last frame (it gates the detector)
      ctx.setLineDash([4, 4]);
      ctx.strokeStyle = "#ff5c5c";
      for (const b of msg.motion || []) ctx.strokeRect(b[0] * s, b[1] * s, (b[2] - b[0]) * s, (b[3] - b[1]) * s);
      ctx.setLineDash([]);
    }
    for (const t of msg.tracks || []) {
      const [x1, y1, x2, y2] = t.box.map((v) => v * s);
      const color = t.fired ? "#3ecf8e" : t.still > 0 ? "#f0b429" : "#4ea8ff";
      ctx.strokeStyle = color;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      let text = "#" + t.track_id;
      if (t.labels && t.labels.length) text += " " + t.labels.join(" · ");
      if (debug && !t.fired) text += "  still " + Math.round(t.still * 100) + "%";
      const tw = ctx.measureText(text).width + 8, th = parseInt(ctx.font.split(" ")[1], 10) + 6;
      const ty = y1 - th >= 0 ? y1 - th : y1;
      ctx.fillStyle = color;
      ctx.fillRect(x1 - lw / 2, ty, tw, th);
      ctx.fillStyle = "#000";
      ctx.fillText(text, x1 + 4, ty + th - 6);
      if (debug) {  // stillness progress: a full bar = stable, its detection cycle runs
        ctx.fillStyle = "#000a";
        ctx.fillRect(x1, y2 - 8, x2 - x1, 8);
        ctx.fillStyle = color;
        ctx.fillRect(x1, y2 - 8, (x2 - x1) * Math.min(1, t.still), 8);
      }
    }
    if (debug) {
      const age = Math.max(0, Date.now() / 1000 - msg.captured_at);
      const lines = ["debug: " + (msg.tracks || []).length + " track(s), frame " + msg.width + "×" + msg.height +
        ", age " + age.toFixed(1) + " s", "motion regions (red, dashed): " + (msg.motion || []).length];
      ctx.fillStyle = "#000b";
      ctx.fillRect(0, canvas.height - 44, canvas.width, 44);
      ctx.fillStyle = "#dde3ea";
      ctx.font = "13px ui-monospace, monospace";
      lines.forEach((l, i) => ctx.fillText(l, 8, canvas.height - 26 + i * 18));
    }
  }

  // -- the camera page ----------------------------------------------------------------------------------
  function onDetections(msg) {
    if (route.page !== "camera" || msg.camera !== route.camera) return;
    const list = $("detections");
    list.replaceChildren(...msg.items.map((d) => {
      const li = el("li");
      const img = el("img");
      if (d.thumb) img.src = "data:image/jpeg;base64," + d.thumb;
      img.alt = "vehicle " + d.track_id;
      const text = el("div");
      const what = [d.brand, d.body_type].filter(Boolean).join(" · ") || "unclassified";
      text.append(el("b", "", "#" + d.track_id + " " + what),
        el("small", "", new Date(d.captured_at * 1000).toLocaleTimeString() + " · " + d.displays.join(", ") +
          (d.session_id !== null && d.session_id !== undefined ? " · session " + d.session_id : "")));
      li.append(img, text);
      return li;
    }));
    if (!msg.items.length) list.append(el("li", "empty", "none yet"));
  }

  function onLogs(msg) {
    if (route.page !== "camera" || msg.camera !== route.camera) return;
    const pre = $("log");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
    const old = msg.reset ? [] : (pre.textContent ? pre.textContent.split("\n") : []);
    pre.textContent = old.concat(msg.lines).slice(-200).join("\n");
    pre.dataset.camera = msg.camera;
    if (atBottom || msg.reset) pre.scrollTop = pre.scrollHeight;
  }

  function onResult(msg) {
    const button = pending.get(msg.id);
    pending.delete(msg.id);
    if (msg.host !== undefined) {
      $("host-result").textContent = msg.ok ? msg.action + " " + msg.host + ": done" : "failed: " + msg.error;
      $("host-result").className = "result " + (msg.ok ? "ok" : "bad");
      return;
    }
    document.querySelectorAll("#camera button[data-action]").forEach((b) => { b.disabled = false; });
    $("cam-result").textContent = msg.ok ? msg.action + " " + msg.camera + ": done"
      : (button ? button.dataset.action + ": " : "") + "failed: " + msg.error;
    $("cam-result").className = "result " + (msg.ok ? "ok" : "bad");
  }

  document.querySelectorAll("#camera button[data-action]").forEach((b) => {
    b.addEventListener("click", () => {
      const id = nextId++;
      pending.set(id, b);
      document.querySelectorAll("#camera button[data-action]").forEach((x) => { x.disabled = true; });
      $("cam-result").textContent = b.dataset.action + "…";
      $("cam-result").className = "result";
      send({op: "control", camera: route.camera, action: b.dataset.action, id: id});
    });
  });
  $("debug").addEventListener("change", () => {
    const f = frames.get(route.camera);
    if (f) onFrame(f);
  });

  function show() {
    route = parseRoute();
    $("fleet").hidden = route.page !== "fleet";
    $("camera").hidden = route.page !== "camera";
    if (route.page === "camera") {
      $("log").textContent = "";
      $("detections").replaceChildren();
      $("cam-result").textContent = "";
      $("log-name").textContent = "(" + route.camera + ", last 200 lines, follows)";
      $("legend").textContent = "blue: moving · yellow: standing still (debug: progress) · green: classified · dashed: crop/ROI (debug: red dashed = motion)";
      document.title = route.camera + " · Fleet dashboard";
    } else {
      document.title = "Fleet dashboard";
    }
    if (lastState) { renderFleet(lastState.cameras); renderCamera(lastState.cameras); }
    subscribe(true);
  }
  window.addEventListener("hashchange", show);
  show();
  connect();
})();
