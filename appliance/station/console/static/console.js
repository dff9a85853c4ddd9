// The console's only script: live alarms (Server-Sent Events), sound, keyboard, skeleton canvas,
// and the revealed video with the involved persons outlined on a canvas over it.
// No inline script anywhere (the Content-Security-Policy forbids it); data comes from data-*
// attributes and same-origin JSON.
"use strict";

const EDGES = [[15, 13], [13, 11], [16, 14], [14, 12], [11, 12], [5, 11], [6, 12], [5, 6], [5, 7], [6, 8],
  [7, 9], [8, 10], [1, 2], [0, 1], [0, 2], [1, 3], [2, 4], [3, 5], [4, 6]];
const COLOURS = ["#ff3b30", "#0af", "#ffd400", "#30d158", "#bf5af2", "#ff9f0a"];
window.consoleState = { seen: [], soundArmed: false, beeps: 0 };

let audio = null;
function armSound() {
  audio = audio || new (window.AudioContext || window.webkitAudioContext)();
  audio.resume();
  window.consoleState.soundArmed = true;
  const b = document.getElementById("arm-sound");
  if (b) { b.textContent = "Sound armed"; }
}
function beep() {
  window.consoleState.beeps += 1;
  if (!audio) { return; }
  const o = audio.createOscillator(), g = audio.createGain();
  o.frequency.value = 880; g.gain.value = 0.2;
  o.connect(g); g.connect(audio.destination);
  o.start(); o.stop(audio.currentTime + 0.4);
}

function utc(ms) { return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z"; }

function alarmItem(a) {
  const li = document.createElement("li");
  li.className = "alarm new " + (a.kind || "behaviour");
  li.dataset.alarmId = a.alarm_id;
  li.dataset.created = a.created_unix_ms;
  const link = document.createElement("a");
  link.href = "/alarms/" + encodeURIComponent(a.alarm_id);
  const parts = [["pattern", a.pattern], ["device", a.device_id], ["time", utc(a.created_unix_ms)], ["state", "new"],
    ["clip", (a.kind || "").startsWith("device_") ? "" : (a.clip ? "clip stored" : "clip follows")]];
  for (const [cls, text] of parts) {
    const s = document.createElement(cls === "pattern" ? "strong" : "span");
    s.className = cls; s.textContent = text; link.appendChild(s);
  }
  li.appendChild(link);
  return li;
}

function startMonitor() {
  const list = document.getElementById("alarms");
  const live = document.getElementById("live");
  const armButton = document.getElementById("arm-sound");
  if (armButton) { armButton.addEventListener("click", armSound); }
  const source = new EventSource("/events");
  source.onopen = () => { live.textContent = "live"; live.classList.add("connected"); };
  source.onerror = () => { live.textContent = "reconnecting"; live.classList.remove("connected"); };
  source.addEventListener("alarm", (e) => {
    const a = JSON.parse(e.data);
    if (list.querySelector(`[data-alarm-id="${CSS.escape(a.alarm_id)}"]`)) { return; }
    list.prepend(alarmItem(a));
    document.body.classList.add("lit");
    window.consoleState.seen.push({ alarm_id: a.alarm_id, latency_ms: Date.now() - a.created_unix_ms });
    beep();
  });
  source.addEventListener("alarm-update", (e) => {
    const a = JSON.parse(e.data);
    const li = list.querySelector(`[data-alarm-id="${CSS.escape(a.alarm_id)}"]`);
    if (li && a.clip) { li.querySelector(".clip").textContent = "clip stored"; }
  });
  source.addEventListener("workflow", (e) => {
    const w = JSON.parse(e.data);
    const li = list.querySelector(`[data-alarm-id="${CSS.escape(w.alarm_id)}"]`);
    if (!li) { return; }
    if (w.state === "closed") { li.remove(); } else {
      li.classList.remove("new"); li.classList.add(w.state);
      li.querySelector(".state").textContent = `${w.state} (${w.owner})`;
    }
    if (!list.children.length) { document.body.classList.remove("lit"); }
  });
  let selected = -1;
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input, textarea, select")) { return; }
    const items = Array.from(list.children);
    if (e.key === "s" || e.key === "S") { armSound(); return; }
    if (!items.length) { return; }
    if (e.key === "j" || e.key === "k") {
      selected = Math.max(0, Math.min(items.length - 1, selected + (e.key === "j" ? 1 : -1)));
      items.forEach((li, i) => li.classList.toggle("selected", i === selected));
      items[selected].querySelector("a").focus();
    } else if (e.key === "Enter" && selected >= 0) {
      items[selected].querySelector("a").click();
    }
  });
}

function startAlarmPage() {
  const canvas = document.getElementById("skeleton");
  if (canvas) { drawSkeletons(canvas); }
  for (const [videoId, canvasId] of [["clip-video", "outlines"], ["full-video", "full-outlines"]]) {
    const video = document.getElementById(videoId);
    if (video) { startVideo(video, document.getElementById(canvasId)); }
  }
  // The clip arriving, or another person claiming or closing this alarm, shows at once.
  const detail = document.querySelector(".alarm-detail");
  const source = new EventSource("/events");
  source.addEventListener("alarm-update", (e) => {
    const a = JSON.parse(e.data);
    if (a.alarm_id === detail.dataset.alarmId && a.clip) { document.getElementById("clip").textContent = "stored"; }
  });
  source.addEventListener("workflow", (e) => {
    const w = JSON.parse(e.data);
    if (w.alarm_id === detail.dataset.alarmId) {
      document.getElementById("state").textContent = `${w.state} (${w.owner})`;
    }
  });
  source.addEventListener("grant", (e) => {
    // A supervisor opened the full video requested on this page: show it (the page asks the server).
    const g = JSON.parse(e.data);
    if (g.alarm_id === detail.dataset.alarmId && g.user === document.body.dataset.user &&
        !document.getElementById("full-video")) { window.location.replace(window.location.pathname); }
  });
  const verdictForm = document.getElementById("verdict-form");
  const codes = document.getElementById("reason-code");
  function filterCodes(verdict) {
    if (!codes) { return; }
    let first = null;
    for (const o of codes.options) {
      o.hidden = o.dataset.verdict !== verdict;
      if (!o.hidden && !first) { first = o; }
    }
    if (first) { codes.value = first.value; }
  }
  if (verdictForm) {
    verdictForm.addEventListener("change", (e) => { if (e.target.name === "verdict") { filterCodes(e.target.value); } });
  }
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input, textarea, select")) { if (e.key === "Escape") { e.target.blur(); } return; }
    const key = e.key.toLowerCase();
    if (key === "escape") { window.location.href = "/"; }
    if (key === "c" && document.getElementById("claim")) { document.getElementById("claim").click(); }
    if (["t", "f", "u"].includes(key) && verdictForm) {
      const v = { t: "true", f: "false", u: "unclear" }[key];
      const radio = document.getElementById("verdict-" + v);
      radio.checked = true; filterCodes(v); codes.focus();
    }
    if (key === "r" && document.getElementById("reveal-reason")) {
      e.preventDefault(); document.getElementById("reveal-reason").focus();
    }
    if (key === "v") {
      const video = document.getElementById("full-video") || document.getElementById("clip-video");
      if (video) { if (video.paused) { video.play(); } else { video.pause(); } }
    }
  });
}

async function drawSkeletons(canvas) {
  const response = await fetch(canvas.dataset.src, { credentials: "same-origin" });
  if (!response.ok) { canvas.dataset.error = String(response.status); return; }
  const data = await response.json();
  const sk = data.skeletons;
  if (!sk || !sk.frames.length) { canvas.dataset.frames = "0"; return; }
  const [w, h] = sk.frame_size;
  const scale = Math.min(canvas.width / w, canvas.height / h);
  const ctx = canvas.getContext("2d");
  const tracks = data.tracks;
  canvas.dataset.frames = String(sk.frames.length);
  let i = 0;
  function frame() {
    const f = sk.frames[i % sk.frames.length];
    ctx.fillStyle = "#050505"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.lineWidth = 3;
    for (const p of f.persons) {
      const colour = COLOURS[tracks.indexOf(p.track) % COLOURS.length];
      ctx.strokeStyle = colour; ctx.fillStyle = colour;
      const pt = (k) => [p.kp[k][0] / 10 * scale, p.kp[k][1] / 10 * scale, p.kp[k][2]];
      for (const [a, b] of EDGES) {
        const [ax, ay, ac] = pt(a), [bx, by, bc] = pt(b);
        if (ac < 300 || bc < 300) { continue; }
        ctx.beginPath(); ctx.moveTo(ax, ay); ctx.lineTo(bx, by); ctx.stroke();
      }
      ctx.font = "14px sans-serif";
      ctx.fillText("#" + p.track, p.box[0] / 10 * scale, Math.max(12, p.box[1] / 10 * scale - 4));
    }
    ctx.fillStyle = "#9a9a9a";
    ctx.fillText(`${(f.t_ms / 1000).toFixed(1)} s`, 8, canvas.height - 8);
    canvas.dataset.drawn = String(i + 1);
    i += 1;
    if (i < 100000) { setTimeout(() => requestAnimationFrame(frame), 100); }
  }
  frame();
}

// The involved persons' boxes (video pixels, per frame index) from the clip's sealed metadata,
// drawn over the playing video: the outline is the browser's, never burned into the pixels.
async function startVideo(video, canvas) {
  // When this page's navigation began (the reveal's form submission) -> data / first frame shown.
  const timing = window.consoleState.video = window.consoleState.video || {};
  video.addEventListener("loadeddata", () => { timing[video.id + "_loaded_ms"] = performance.now(); }, { once: true });
  if (video.requestVideoFrameCallback) {
    video.requestVideoFrameCallback(() => { timing[video.id + "_first_frame_ms"] = performance.now(); });
  }
  video.play().catch(() => {});
  const response = await fetch(video.dataset.outlines, { credentials: "same-origin" });
  if (!response.ok) { canvas.dataset.error = String(response.status); return; }
  const data = await response.json();
  const byFrame = new Map();
  const tracks = Object.keys(data.involved_boxes || {}).sort((a, b) => Number(a) - Number(b));
  for (const track of tracks) {
    for (const [fi, x, y, w, h] of data.involved_boxes[track]) {
      if (!byFrame.has(fi)) { byFrame.set(fi, []); }
      byFrame.get(fi).push([track, x, y, w, h]);
    }
  }
  const frames = (data.frame_times_s || []).length;
  const fps = data.fps || 10;
  const ctx = canvas.getContext("2d");
  let drawn = 0;
  function draw() {
    const cw = video.clientWidth, ch = video.clientHeight;
    if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
    ctx.clearRect(0, 0, cw, ch);
    const vw = video.videoWidth || data.width, vh = video.videoHeight || data.height;
    if (!vw || !vh) { return; }
    // The element keeps the video's aspect ratio inside its box (object-fit: contain).
    const scale = Math.min(cw / vw, ch / vh), ox = (cw - vw * scale) / 2, oy = (ch - vh * scale) / 2;
    const sx = scale * vw / (data.width || vw), sy = scale * vh / (data.height || vh);
    let fi = Math.floor(video.currentTime * fps + 1e-3);
    if (frames) { fi = Math.min(frames - 1, fi); }
    const boxes = byFrame.get(fi) || [];
    ctx.lineWidth = 3; ctx.font = "14px sans-serif";
    for (const [track, x, y, w, h] of boxes) {
      const colour = COLOURS[tracks.indexOf(track) % COLOURS.length];
      ctx.strokeStyle = colour; ctx.fillStyle = colour;
      ctx.strokeRect(ox + x * sx, oy + y * sy, w * sx, h * sy);
      ctx.fillText("#" + track, ox + x * sx + 2, Math.max(12, oy + y * sy - 4));
    }
    drawn += 1;
    canvas.dataset.drawn = String(drawn);
    canvas.dataset.boxes = String(boxes.length);
    canvas.dataset.frame = String(fi);
  }
  canvas.dataset.tracks = String(tracks.length);
  const onFrame = () => { draw(); video.requestVideoFrameCallback(onFrame); };
  if (video.requestVideoFrameCallback) { video.requestVideoFrameCallback(onFrame); }
  else { video.addEventListener("timeupdate", draw); }
  for (const ev of ["loadeddata", "seeked", "pause"]) { video.addEventListener(ev, draw); }
  window.addEventListener("resize", draw);
  draw();
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "monitor") { startMonitor(); }
  if (page === "alarm") { startAlarmPage(); }
});
