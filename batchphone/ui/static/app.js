// batchphone ui: uploads, JSON posts with the CSRF token, and the live view of a task.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
    body: JSON.stringify(body || {}),
  });
  let data = {};
  try { data = await response.json(); } catch (e) { data = {error: await response.text()}; }
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function showError(where, message) {
  let p = where.querySelector(".error.js");
  if (!p) {
    p = document.createElement("p");
    p.className = "error js";
    p.setAttribute("role", "alert");
    where.appendChild(p);
  }
  p.textContent = message;
}

async function upload(file) {
  const error = document.getElementById("upload-error");
  error.hidden = true;
  const response = await fetch("/upload", {
    method: "POST",
    headers: {"X-CSRF-Token": csrf(), "X-Filename": encodeURIComponent(file.name),
              "Content-Type": "application/octet-stream"},
    body: file,
  });
  let data = {};
  try { data = await response.json(); } catch (e) { data = {error: response.statusText}; }
  if (!response.ok) {
    error.textContent = data.error || response.statusText;
    error.hidden = false;
    return;
  }
  window.location = data.url;
}

function formBody(form) {
  const body = {};
  for (const element of form.elements) {
    if (!element.name) continue;
    body[element.name] = element.type === "checkbox" ? element.checked : element.value;
  }
  return body;
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

async function watch(panel) {
  const id = panel.dataset.task;
  const bar = document.getElementById("bar");
  for (;;) {
    let task;
    try {
      const response = await fetch("/tasks/" + id);
      task = await response.json();
    } catch (e) {
      await new Promise(r => setTimeout(r, 1000));
      continue;
    }
    const total = task.total || 0;
    bar.max = Math.max(total, 1);
    bar.value = task.done;
    document.getElementById("rows-done").textContent =
      task.state === "stopping" ? "stopping: nothing new is sent…" : `${task.done} of ${total} rows`;
    const list = document.getElementById("live-counts");
    list.replaceChildren(...Object.entries(task.counts).sort().map(([status, n]) => {
      const li = document.createElement("li");
      li.className = "status-" + status;
      li.innerHTML = "<b></b> ";
      li.firstChild.textContent = n;
      li.appendChild(document.createTextNode(status));
      return li;
    }));
    const figures = [];
    if (task.attempts) figures.push(`${task.attempts} update calls`);
    if (task.calls_per_second) figures.push(`budget ${task.calls_per_second.toFixed(2)} calls/s`);
    if (task.eta_s) figures.push(`about ${seconds(task.eta_s)} left`);
    document.getElementById("figures").textContent = figures.join(" · ");
    const pause = document.getElementById("pause");
    pause.hidden = !task.pause_s;
    if (task.pause_s) pause.textContent = `The API asked to slow down: sending resumes in ${Math.ceil(task.pause_s)} s`;
    const canary = document.getElementById("canary");
    canary.hidden = !task.canary;
    if (task.canary) canary.textContent = "Canary " + task.canary;
    if (task.state === "done" || task.state === "failed") {
      window.location.reload();
      return;
    }
    await new Promise(r => setTimeout(r, 400));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = document.getElementById("drop");
  if (drop) {
    const input = document.getElementById("file");
    input.addEventListener("change", () => input.files.length && upload(input.files[0]));
    drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", e => {
      e.preventDefault();
      drop.classList.remove("over");
      if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
    });
  }
  const sheet = document.getElementById("sheet");
  if (sheet) sheet.addEventListener("change", () => {
    window.location = "?sheet=" + encodeURIComponent(sheet.value);
  });
  for (const form of document.querySelectorAll("form[data-post]")) {
    form.addEventListener("submit", async e => {
      e.preventDefault();
      for (const b of form.querySelectorAll("button")) b.disabled = true;
      try {
        await post(form.dataset.post, formBody(form));
        window.location.reload();
      } catch (err) {
        for (const b of form.querySelectorAll("button")) b.disabled = false;
        showError(form, err.message);
      }
    });
  }
  for (const button of document.querySelectorAll("button[data-post]")) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await post(button.dataset.post, button.dataset.body ? JSON.parse(button.dataset.body) : {});
        window.location.reload();
      } catch (err) {
        button.disabled = false;
        showError(button.parentElement, err.message);
      }
    });
  }
  for (const button of document.querySelectorAll("[data-show]")) {
    button.addEventListener("click", () => {
      document.getElementById(button.dataset.show).hidden = false;
      button.hidden = true;
    });
  }
  for (const button of document.querySelectorAll("[data-hide]")) {
    button.addEventListener("click", () => {
      document.getElementById(button.dataset.hide).hidden = true;
      for (const b of document.querySelectorAll(`[data-show="${button.dataset.hide}"]`)) b.hidden = false;
    });
  }
  const stop = document.getElementById("stop");
  if (stop) stop.addEventListener("click", async () => {
    stop.disabled = true;
    try { await post(stop.dataset.url); } catch (err) { showError(stop.parentElement, err.message); }
  });
  const panel = document.getElementById("task");
  if (panel) watch(panel);
});
