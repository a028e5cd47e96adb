// spanrec web player: stereo <audio> (caller = left channel, callee = right)
// with per-channel mute through Web Audio, a waveform from /peaks with DTMF and
// hold marks, click-to-seek, and the SIP ladder fetched after the page.
(function () {
  "use strict";
  var dataEl = document.getElementById("player-data");
  if (!dataEl) return;
  var data = JSON.parse(dataEl.textContent);

  fetch(data.ladder, { credentials: "same-origin" }).then(function (r) { return r.text(); })
    .then(function (html) { document.getElementById("ladder").innerHTML = html; })
    .catch(function (e) { document.getElementById("ladder").textContent = "No SIP ladder: " + e; });

  var audio = document.getElementById("audio");
  if (!audio || !data.audio) return;
  audio.src = data.audio;
  var playBtn = document.getElementById("play");
  var timeEl = document.getElementById("time");
  var canvas = document.getElementById("wave");
  var ctx2d = canvas.getContext("2d");
  var peaks = null;
  var graph = null;

  function fmt(s) {
    if (!isFinite(s)) return "0:00";
    var m = Math.floor(s / 60), r = Math.floor(s % 60);
    return m + ":" + (r < 10 ? "0" : "") + r;
  }
  function duration() {
    if (isFinite(audio.duration) && audio.duration > 0) return audio.duration;
    return peaks ? peaks.duration_s : 0;
  }
  function ensureGraph() {           // Web Audio: split the two channels, a gain each
    if (graph || !window.AudioContext) return graph;
    var ac = new AudioContext();
    var src = ac.createMediaElementSource(audio);
    var split = ac.createChannelSplitter(2), merge = ac.createChannelMerger(2);
    var gains = [ac.createGain(), ac.createGain()];
    src.connect(split);
    for (var c = 0; c < 2; c++) { split.connect(gains[c], c); gains[c].connect(merge, 0, c); }
    merge.connect(ac.destination);
    graph = { ac: ac, gains: gains };
    applyMute();
    return graph;
  }
  function applyMute() {
    if (!graph) return;
    graph.gains[0].gain.value = document.getElementById("mute-caller").checked ? 0 : 1;
    graph.gains[1].gain.value = document.getElementById("mute-callee").checked ? 0 : 1;
  }
  document.getElementById("mute-caller").addEventListener("change", function () { ensureGraph(); applyMute(); });
  document.getElementById("mute-callee").addEventListener("change", function () { ensureGraph(); applyMute(); });

  playBtn.addEventListener("click", function () {
    var g = ensureGraph();
    if (g && g.ac.state === "suspended") g.ac.resume();
    if (audio.paused) audio.play(); else audio.pause();
  });
  audio.addEventListener("play", function () { playBtn.textContent = "Pause"; });
  audio.addEventListener("pause", function () { playBtn.textContent = "Play"; });
  audio.addEventListener("timeupdate", draw);
  audio.addEventListener("loadedmetadata", draw);

  canvas.addEventListener("click", function (ev) {
    var rect = canvas.getBoundingClientRect();
    var d = duration();
    if (d > 0) { audio.currentTime = (ev.clientX - rect.left) / rect.width * d; draw(); }
  });

  function draw() {
    var w = canvas.width, h = canvas.height, half = h / 2, d = duration();
    ctx2d.clearRect(0, 0, w, h);
    ctx2d.strokeStyle = "#d5dae1";
    ctx2d.beginPath(); ctx2d.moveTo(0, half); ctx2d.lineTo(w, half); ctx2d.stroke();
    if (peaks && peaks.channels.length) {
      for (var c = 0; c < Math.min(2, peaks.channels.length); c++) {
        var ch = peaks.channels[c], n = ch.length, mid = c === 0 ? half / 2 : half * 1.5;
        ctx2d.fillStyle = c === 0 ? "#0b5cad" : "#1a7f37";
        for (var i = 0; i < n; i++) {
          var x = i / n * w, y0 = mid - ch[i][1] * half / 2, y1 = mid - ch[i][0] * half / 2;
          ctx2d.fillRect(x, y0, Math.max(1, w / n - 0.5), Math.max(1, y1 - y0));
        }
      }
    }
    ctx2d.fillStyle = "#5b6470";
    ctx2d.fillText("caller", 4, 12);
    ctx2d.fillText("callee", 4, half + 12);
    if (d > 0) {
      data.marks.forEach(function (m) {
        var x = m.at / d * w;
        ctx2d.fillStyle = m.kind === "dtmf" ? "#8250df" : "rgba(212,167,44,0.35)";
        if (m.kind === "hold") ctx2d.fillRect(x, 0, Math.max(2, (m.end - m.at) / d * w), h);
        else { ctx2d.fillRect(x, 0, 2, h); ctx2d.fillText(m.label, x + 3, 10); }
      });
      ctx2d.fillStyle = "#b00020";
      ctx2d.fillRect(audio.currentTime / d * w, 0, 2, h);
    }
    timeEl.textContent = fmt(audio.currentTime) + " / " + fmt(d);
  }
  ctx2d.font = "11px monospace";
  draw();
  if (data.peaks) {
    fetch(data.peaks + "?n=" + canvas.width, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) { if (p && p.channels) { peaks = p; draw(); } });
  }
})();
