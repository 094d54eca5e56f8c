// Live updates for server-rendered pages. The page names a WebSocket in
// <body data-live-url>; each message is JSON. Elements opt in with
// data-live="KEY": a message {"kind": ..., ...} updates every element whose
// data-live equals the key the product derives (see liveKey below) and
// draws charts on <canvas data-chart="STREAM_ID">.
(function () {
  "use strict";
  var url = document.body && document.body.dataset.liveUrl;
  if (!url) return;
  var series = {};
  var MAX_POINTS = 60;

  function setText(key, text, cls) {
    document.querySelectorAll('[data-live="' + key + '"]').forEach(function (el) {
      el.textContent = text;
      if (cls !== undefined) el.className = "badge " + cls;
    });
  }

  function draw(canvas, points) {
    var ctx = canvas.getContext("2d");
    var w = canvas.width = canvas.clientWidth || 600;
    var h = canvas.height = canvas.clientHeight || 120;
    ctx.clearRect(0, 0, w, h);
    var names = Object.keys(points);
    var max = 1;
    names.forEach(function (n) { points[n].forEach(function (p) { if (p.kbps > max) max = p.kbps; }); });
    var colours = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c"];
    names.forEach(function (n, i) {
      var pts = points[n];
      ctx.strokeStyle = colours[i % colours.length];
      ctx.beginPath();
      pts.forEach(function (p, j) {
        var x = (j / (MAX_POINTS - 1)) * w;
        var y = h - (p.kbps / max) * (h - 14) - 2;
        if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
      var last = pts[pts.length - 1];
      ctx.fillStyle = ctx.strokeStyle;
      ctx.fillText(n + " " + last.kbps.toFixed(0) + " kb/s, " + last.rtt.toFixed(0) + " ms, " + last.loss.toFixed(1) + "% loss", 6, 12 + i * 12);
    });
  }

  function apply(msg) {
    if (msg.kind === "presence") {
      setText("presence:" + msg.sender_id, msg.presence, msg.presence);
    } else if (msg.kind === "stream_state") {
      setText("state:" + msg.stream_id, msg.state, msg.state);
    } else if (msg.kind === "stream_stats") {
      var s = series[msg.stream_id] = series[msg.stream_id] || {};
      (msg.links || []).forEach(function (l) {
        var arr = s[l.name] = s[l.name] || [];
        arr.push({ kbps: l.bitrate_kbps, rtt: l.rtt_ms, loss: l.loss_pct });
        if (arr.length > MAX_POINTS) arr.shift();
      });
      setText("bitrate:" + msg.stream_id, msg.encoder_kbps.toFixed(0) + " kb/s");
      document.querySelectorAll('canvas[data-chart="' + msg.stream_id + '"]').forEach(function (c) { draw(c, s); });
    }
  }

  var delay = 1000;
  function connect() {
    var proto = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(proto + location.host + url);
    ws.onopen = function () { delay = 1000; document.body.dataset.live = "connected"; };
    ws.onmessage = function (e) { try { apply(JSON.parse(e.data)); } catch (_) {} };
    ws.onclose = function () {
      document.body.dataset.live = "closed";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
