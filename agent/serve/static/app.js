// The chat page of `llava-agent serve`: a client of the server's own JSON routes.
// Everything the model, a tool or a file name says is put on the page with textContent or as an
// attribute value, never parsed as HTML. Generated files are fetched with the API key and shown
// through blob: URLs (an <img src> cannot send the key). Videos the user attaches are uploaded at once
// (POST /v1/uploads, when the server's agent has a tool that reads videos) and named in the message
// by their file id.
"use strict";

const KEY_STORAGE = "llava-agent-api-key";
const AGENT_MODEL = "llava-agent";
const MAX_IMAGE_BYTES = 8 * 1024 * 1024;
const VIDEO_NAME = /\.(mp4|m4v|mov|webm|mkv)$/i;

const state = {
  thread: null,         // the caller's key of the open thread (null: a new chat)
  agentModel: AGENT_MODEL,
  attachments: [],      // {kind: "image", name, dataUrl} or {kind: "video", name, localUrl, fileId, upload, info}
  videos: { accepted: false, maxBytes: 0 },  // what the server's tools route says about video uploads
  controller: null,     // AbortController of the reply being streamed
  blobUrls: [],
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function setStatus(text) { $("status").textContent = text || ""; }

// ----- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) { message = String(body.error.message || message); code = body.error.code || null; }
  } catch (_) { /* not JSON */ }
  return new ApiError(response.status, message, code);
}

async function api(path, options = {}) {
  const init = { ...options };
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    delete init.json;
  }
  for (;;) {
    init.headers = { ...authHeaders(), ...(options.headers || {}) };
    if (options.json !== undefined) init.headers["Content-Type"] = "application/json";
    const response = await fetch(path, init);
    if (response.status === 401) {  // no key yet, or a wrong one: ask (again) and retry
      await askForKey(sessionStorage.getItem(KEY_STORAGE) ? "That key was not accepted." : "");
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

function askForKey(problem) {
  const dialog = $("key-dialog");
  $("key-error").textContent = problem || "";
  $("key-input").value = "";
  return new Promise((resolve) => {
    const form = $("key-form");
    const done = (event) => {
      event.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORAGE, key);
      form.removeEventListener("submit", done);
      dialog.close();
      resolve();
    };
    form.addEventListener("submit", done);
    dialog.addEventListener("cancel", (event) => event.preventDefault(), { once: true });
    if (!dialog.open) dialog.showModal();
    $("key-input").focus();
  });
}

function localPath(url) {
  // files are fetched from this page's own server, whatever base URL the server wrote in the link
  try { const parsed = new URL(url, location.href); return parsed.pathname + parsed.search; } catch (_) { return url; }
}

async function blobUrl(url) {
  const response = await api(localPath(url));
  const object = URL.createObjectURL(await response.blob());
  state.blobUrls.push(object);
  return object;
}

// ----- threads ---------------------------------------------------------------------------------

async function loadThreads() {
  const list = $("thread-list");
  let threads = [];
  try {
    threads = (await (await api("/v1/agent/threads")).json()).data;
  } catch (error) {
    setStatus("Conversations: " + error.message);
    return;
  }
  list.replaceChildren();
  $("threads-empty").hidden = threads.length > 0;
  for (const thread of threads) list.append(threadItem(thread));
}

function threadItem(thread) {
  const title = thread.title || "(untitled)";
  const item = el("li", { className: thread.id === state.thread ? "current" : "", "data-thread": thread.id });
  const open = el("button", { type: "button", className: "open", text: title, title,
    "aria-current": thread.id === state.thread ? "true" : null, onclick: () => openThread(thread.id) });
  const rename = el("button", { type: "button", className: "small", text: "Rename", "aria-label": "Rename " + title,
    onclick: () => startRename(item, thread) });
  const remove = el("button", { type: "button", className: "small", text: "Delete", "aria-label": "Delete " + title,
    onclick: () => deleteThread(thread) });
  item.append(open, rename, remove);
  return item;
}

function startRename(item, thread) {
  const input = el("input", { type: "text", value: thread.title || "", "aria-label": "New title", maxlength: 200 });
  const finish = async (save) => {
    if (save && input.value.trim() && input.value.trim() !== thread.title) {
      try {
        await api("/v1/agent/threads/" + encodeURIComponent(thread.id), { method: "PATCH", json: { title: input.value } });
      } catch (error) { setStatus("Rename failed: " + error.message); }
    }
    await loadThreads();
    if (thread.id === state.thread) await refreshTitle();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true), { once: true });
  item.replaceChildren(input);
  input.focus();
  input.select();
}

async function deleteThread(thread) {
  if (!confirm(`Delete the conversation "${thread.title || "(untitled)"}"? This cannot be undone.`)) return;
  try {
    await api("/v1/agent/threads/" + encodeURIComponent(thread.id), { method: "DELETE" });
  } catch (error) { setStatus("Delete failed: " + error.message); return; }
  if (thread.id === state.thread) newChat();
  await loadThreads();
}

async function refreshTitle() {
  if (!state.thread) { $("thread-title").textContent = "New chat"; return; }
  const item = document.querySelector(`#thread-list li[data-thread="${CSS.escape(state.thread)}"] .open`);
  $("thread-title").textContent = item ? item.textContent : state.thread;
}

function clearMessages() {
  for (const url of state.blobUrls) URL.revokeObjectURL(url);
  state.blobUrls = [];
  $("messages").replaceChildren();
}

function newChat() {
  if (state.controller) stopReply();
  state.thread = null;
  clearMessages();
  refreshTitle();
  loadThreads();
  closeThreadsOnPhone();
  $("prompt").focus();
}

async function openThread(id) {
  if (state.controller) stopReply();
  let thread;
  try {
    thread = await (await api("/v1/agent/threads/" + encodeURIComponent(id))).json();
  } catch (error) { setStatus("Could not open the conversation: " + error.message); return; }
  state.thread = thread.id;
  clearMessages();
  $("thread-title").textContent = thread.title || "(untitled)";
  let reply = null;
  for (const message of thread.messages) {
    if (message.role === "user") { addUserMessage(message.text, message.images, message.videos); reply = null; }
    else if (message.role === "assistant") {
      if (!reply) reply = addReply();
      for (const call of message.tool_calls) toolStarted(reply, call);
      if (message.text) { reply.text.textContent = message.text; reply.text.hidden = false; }
    } else if (message.role === "tool") {
      if (!reply) reply = addReply();
      toolEnded(reply, { ...message, fromHistory: true });
    }
  }
  for (const reply of document.querySelectorAll(".msg.assistant .text")) if (!reply.textContent) reply.hidden = true;
  await loadThreads();
  closeThreadsOnPhone();
  scrollDown();
  $("prompt").focus();
}

// ----- messages --------------------------------------------------------------------------------

function scrollDown() { const box = $("messages"); box.scrollTop = box.scrollHeight; }

function addUserMessage(text, images = [], videos = []) {
  const box = el("article", { className: "msg user", "aria-label": "You" });
  if (text) box.append(el("p", { className: "text", text }));
  if (images.length) {
    const row = el("div", { className: "user-images" });
    for (const image of images) {
      if (image.url) row.append(el("img", { src: image.url, alt: image.name || "attached image" }));
      else row.append(el("span", { className: "note", text: "[image " + (image.name || "") + "]" }));
    }
    box.append(row);
  }
  for (const video of videos) box.append(userVideo(video));
  $("messages").append(box);
  scrollDown();
}

function formatSeconds(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds)) return "";
  const whole = Math.round(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

function userVideo(video) {
  // video: {name, localUrl} while sending, or {name, url} from a thread's history (url null: not available)
  const name = video.name || "video";
  if (!video.localUrl && !video.url) {
    return el("p", { className: "attached-video unavailable", text: "Video: " + name + " (not available here)" });
  }
  const player = el("video", { controls: "", preload: "metadata", "aria-label": "Attached video " + name });
  const figure = el("figure", { className: "attached-video" }, player, el("figcaption", { className: "note", text: name }));
  if (video.localUrl) player.src = video.localUrl;
  else blobUrl(video.url).then((url) => { player.src = url; })
    .catch((error) => { figure.append(el("p", { className: "error", text: name + ": " + error.message })); });
  return figure;
}

function addReply() {
  const box = el("article", { className: "msg assistant", "aria-label": "Agent" });
  const tools = el("div", { className: "tools" });
  const text = el("p", { className: "text" });
  const note = el("p", { className: "note", hidden: "" });
  box.append(tools, text, note);
  $("messages").append(box);
  scrollDown();
  return { box, tools, text, note, calls: new Map() };
}

function argumentsText(args) {
  try { return JSON.stringify(args, null, 2); } catch (_) { return String(args); }
}

function toolStarted(reply, call) {
  const card = el("details", { className: "tool-call running", "data-tool": call.name });
  const summary = el("summary", {},
    el("span", { className: "tool-name", text: call.name }),
    el("span", { className: "tool-state", text: "running…" }));
  card.append(summary, el("pre", { className: "tool-args", text: argumentsText(call.arguments) }));
  card.dataset.started = String(performance.now());
  reply.tools.append(card);
  reply.calls.set(call.id, card);
  scrollDown();
  return card;
}

function toolEnded(reply, result) {
  let card = reply.calls.get(result.id);
  if (!card) card = toolStarted(reply, { id: result.id, name: result.name, arguments: {} });
  card.classList.remove("running");
  const seconds = typeof result.duration_s === "number" ? result.duration_s
    : (card.dataset.started && !result.fromHistory ? (performance.now() - Number(card.dataset.started)) / 1000 : null);
  const timing = seconds === null ? "" : ` in ${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const stateText = card.querySelector(".tool-state");
  if (result.is_error) {
    card.classList.add("failed");
    stateText.textContent = "failed" + timing;
    card.open = true;
  } else {
    card.classList.add("done");
    stateText.textContent = "done" + timing;
  }
  if (result.content) card.append(el("pre", { className: result.is_error ? "tool-result error" : "tool-result", text: result.content }));
  renderFiles(card, result.files || []);
}

function renderFiles(card, files) {
  if (!files.length) return;
  const box = el("div", { className: "artifacts" });
  const thumbs = files.filter((f) => f.kind === "thumbnail");
  const grid = thumbs.length ? el("div", { className: "thumb-grid", role: "list", "aria-label": "Search results" }) : null;
  // a generated video plays inline; the picture made for it (its contact sheet) is its poster and is shown too
  const video = files.find((f) => f.kind === "output" && (f.mime_type || "").startsWith("video/"));
  const sheet = video ? files.find((f) => f.kind === "preview" && (f.mime_type || "").startsWith("image/")) : null;
  for (const file of files) {
    if (file.kind === "thumbnail") grid.append(thumbnail(file));
    else if (file === video) box.append(videoArtifact(file, sheet));
    else box.append(artifact(file, file === sheet ? "contact-sheet" : ""));
  }
  if (grid) box.append(grid);
  card.append(box);
  card.open = true;
}

function thumbnail(file) {
  const image = el("img", { alt: file.source || file.filename, loading: "lazy" });
  const score = typeof file.score === "number" ? file.score.toFixed(3) : "";
  const caption = el("figcaption", {}, el("span", { className: "score", text: score }), " ",
    el("span", { text: file.source || file.filename }));
  if (file.caption) caption.append(el("br"), el("span", { className: "muted", text: file.caption }));
  blobUrl(file.url).then((url) => { image.src = url; }).catch((error) => { image.alt = "not available: " + error.message; });
  return el("figure", { role: "listitem" }, image, caption);
}

function videoArtifact(file, sheet) {
  const player = el("video", { className: "artifact", controls: "", preload: "metadata", playsinline: "",
    "aria-label": file.filename });
  const wrap = el("figure", { className: "file video" }, player, el("figcaption", { className: "note", text: file.filename }));
  if (sheet) blobUrl(sheet.url).then((url) => { player.poster = url; }).catch(() => {});
  blobUrl(file.url).then((url) => { player.src = url; })
    .catch((error) => { wrap.append(el("p", { className: "error", text: file.filename + ": " + error.message })); });
  return wrap;
}

function artifact(file, role = "") {
  const mime = file.mime_type || "";
  let node;
  if (mime.startsWith("image/")) node = el("img", { className: role ? "artifact " + role : "artifact",
    alt: role === "contact-sheet" ? "Contact sheet of " + file.filename : file.filename });
  else if (mime.startsWith("audio/")) node = el("audio", { controls: "", preload: "auto", "aria-label": file.filename });
  else if (mime.startsWith("video/")) node = el("video", { controls: "", preload: "metadata", "aria-label": file.filename });
  else node = el("a", { className: "download", download: file.filename, text: "Download " + file.filename });
  const wrap = el("figure", { className: "file" }, node, el("figcaption", { className: "note", text: file.filename }));
  blobUrl(file.url).then((url) => {
    if (node.tagName === "A") node.setAttribute("href", url);
    else node.src = url;
  }).catch((error) => { wrap.append(el("p", { className: "error", text: file.filename + ": " + error.message })); });
  return wrap;
}

// ----- sending and streaming -------------------------------------------------------------------

function setBusy(busy) {
  $("send").disabled = busy;
  $("send").hidden = busy;
  $("stop").hidden = !busy;
}

async function send(event) {
  if (event) event.preventDefault();
  if (state.controller || state.waiting) return;
  const prompt = $("prompt");
  const uploading = state.attachments.filter((a) => a.kind === "video" && !a.fileId).map((a) => a.upload);
  if (uploading.length) {  // the message goes once its videos are on the server
    state.waiting = true;
    setStatus("Uploading the video…");
    try { await Promise.allSettled(uploading); } finally { state.waiting = false; }
  }
  const text = prompt.value.trim();
  const attachments = state.attachments.filter((a) => a.kind === "image" || a.fileId);
  if (!text && !attachments.length) { prompt.focus(); return; }
  const content = [];
  if (text) content.push({ type: "text", text });
  for (const item of attachments) {
    if (item.kind === "image") content.push({ type: "image_url", image_url: { url: item.dataUrl } });
    else content.push({ type: "file", file: { file_id: item.fileId, filename: item.name } });
  }
  prompt.value = "";
  state.attachments = [];
  renderAttachments();
  const videos = attachments.filter((a) => a.kind === "video");
  for (const video of videos) state.blobUrls.push(video.localUrl);  // revoked with the conversation's other files
  addUserMessage(text, attachments.filter((a) => a.kind === "image").map((a) => ({ name: a.name, url: a.dataUrl })),
    videos.map((v) => ({ name: v.name, localUrl: v.localUrl })));
  const reply = addReply();
  state.controller = new AbortController();
  setBusy(true);
  setStatus("Thinking…");
  prompt.focus();
  const headers = { ...authHeaders(), "Content-Type": "application/json" };
  if (state.thread) headers["X-Thread-Id"] = state.thread;
  try {
    const body = JSON.stringify({ model: state.agentModel, stream: true, messages: [{ role: "user", content }] });
    let response;
    for (;;) {
      response = await fetch("/v1/chat/completions", {
        method: "POST", headers: { ...headers, ...authHeaders() }, signal: state.controller.signal, body });
      if (response.status !== 401) break;
      await askForKey(sessionStorage.getItem(KEY_STORAGE) ? "That key was not accepted." : "");
    }
    if (!response.ok) throw await errorOf(response);
    const thread = response.headers.get("X-Thread-Id");
    if (thread && thread !== state.thread) { state.thread = thread; }
    await readStream(response, reply);
    setStatus("");
  } catch (error) {
    if (error.name === "AbortError") {
      reply.note.hidden = false;
      reply.note.textContent = "Stopped.";
      setStatus("Stopped");
    } else {
      reply.box.append(el("p", { className: "error", role: "alert", text: error.message }));
      setStatus("Error");
    }
  } finally {
    for (const card of reply.tools.querySelectorAll(".tool-call.running")) {
      card.classList.remove("running");
      card.querySelector(".tool-state").textContent = "not finished";
    }
    if (!reply.text.textContent) reply.text.hidden = true;
    state.controller = null;
    setBusy(false);
    await loadThreads();
    await refreshTitle();
    prompt.focus();
  }
}

async function readStream(response, reply) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) handleData(line.slice(6), reply);
      }
    }
  }
}

function handleData(data, reply) {
  if (data === "[DONE]") return;
  let chunk;
  try { chunk = JSON.parse(data); } catch (_) { return; }
  if (chunk.error) throw new ApiError(500, String(chunk.error.message || "the reply failed"), chunk.error.code);
  const extra = chunk.llava_agent || {};
  if (extra.event) {
    const event = extra.event;
    if (event.type === "tool_call") { toolStarted(reply, event); setStatus("Running " + event.name + "…"); }
    else if (event.type === "tool_result") { toolEnded(reply, event); setStatus("Thinking…"); }
  }
  const choice = (chunk.choices || [])[0];
  if (choice && choice.delta && typeof choice.delta.content === "string" && choice.delta.content) {
    reply.text.hidden = false;
    reply.text.textContent += choice.delta.content;
    setStatus("Writing…");
    scrollDown();
  }
  if (extra.thread) state.thread = extra.thread;
  if (choice && choice.finish_reason && extra.stopped) { reply.note.hidden = false; reply.note.textContent = "Stopped."; }
  if (choice && choice.finish_reason && extra.limit_reached) { reply.note.hidden = false; reply.note.textContent = "The step limit ended this reply."; }
}

function stopReply() {
  if (state.controller) state.controller.abort();
}

// ----- attachments -----------------------------------------------------------------------------

function isVideo(file) {
  return file.type.startsWith("video/") || (!file.type && VIDEO_NAME.test(file.name || ""));
}

function megabytes(bytes) { return `${Math.round(bytes / 104857.6) / 10} MB`; }

function addFiles(files) {
  for (const file of files) {
    if (isVideo(file) && state.videos.accepted) { addVideo(file); continue; }
    if (!file.type.startsWith("image/")) {
      const kinds = state.videos.accepted ? "images and videos" : "images";
      setStatus(`${file.name}: only ${kinds} can be attached here`);
      continue;
    }
    if (file.size > MAX_IMAGE_BYTES) { setStatus(`${file.name} is over ${MAX_IMAGE_BYTES / 1048576} MB; send a smaller image`); continue; }
    const reader = new FileReader();
    reader.onload = () => {
      state.attachments.push({ kind: "image", name: file.name || "pasted image", dataUrl: String(reader.result) });
      renderAttachments();
    };
    reader.readAsDataURL(file);
  }
}

function addVideo(file) {
  const name = file.name || "pasted video";
  if (file.size > state.videos.maxBytes) {
    setStatus(`${name} is ${megabytes(file.size)}, over this server's limit of ${megabytes(state.videos.maxBytes)}; send a shorter video`);
    return;
  }
  const item = { kind: "video", name, localUrl: URL.createObjectURL(file), fileId: null, info: null };
  item.upload = api("/v1/uploads?filename=" + encodeURIComponent(name), {
    method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
  }).then((response) => response.json()).then((uploaded) => {
    item.fileId = uploaded.id;
    item.info = uploaded.video || null;
    renderAttachments();
  }).catch((error) => {  // not a video, too large...: the chip goes, the reason stays in the status line
    removeAttachment(item);
    setStatus(`${name}: ${error.message}`);
  });
  state.attachments.push(item);
  renderAttachments();
}

function removeAttachment(item) {
  const index = state.attachments.indexOf(item);
  if (index < 0) return;
  state.attachments.splice(index, 1);
  if (item.localUrl) URL.revokeObjectURL(item.localUrl);
  renderAttachments();
}

function renderAttachments() {
  const list = $("attachments");
  list.replaceChildren();
  for (const item of state.attachments) {
    const remove = el("button", { type: "button", text: "×", "aria-label": "Remove " + item.name,
      onclick: () => { removeAttachment(item); $("prompt").focus(); } });
    if (item.kind === "image") {
      list.append(el("li", { className: "image" }, el("img", { src: item.dataUrl, alt: "" }),
        el("span", { className: "name", text: item.name }), remove));
      continue;
    }
    const ready = Boolean(item.fileId);
    const detail = ready ? formatSeconds(item.info && item.info.duration_s) : "uploading…";
    list.append(el("li", { className: "video", "data-state": ready ? "ready" : "uploading" },
      el("video", { src: item.localUrl, muted: "", preload: "metadata", "aria-hidden": "true" }),
      el("span", { className: "name", text: item.name }),
      el("span", { className: "detail muted", text: detail }), remove));
  }
}

// ----- panels ----------------------------------------------------------------------------------

async function loadVideoSupport() {
  // the tools route says whether the agent takes videos; the picker, paste and drop follow it
  try {
    const answer = await (await api("/v1/agent/tools")).json();
    const videos = answer.videos || {};
    state.videos = { accepted: Boolean(videos.accepted), maxBytes: Number(videos.max_bytes) || 0 };
  } catch (_) {
    state.videos = { accepted: false, maxBytes: 0 };
  }
  const accepted = state.videos.accepted;
  $("attach").accept = accepted ? "image/*,video/*" : "image/*";
  $("attach-label").textContent = accepted ? "Attach images or videos" : "Attach images";
  $("attach-button").title = $("attach-label").textContent;
  $("drop-hint").textContent = accepted ? "Paste or drop images or videos here." : "Paste or drop images here.";
}

async function openTools() {
  const list = $("tools-list");
  list.replaceChildren(el("li", { className: "muted", text: "Loading…" }));
  $("tools-dialog").showModal();
  try {
    const tools = (await (await api("/v1/agent/tools")).json()).data;
    list.replaceChildren();
    if (!tools.length) list.append(el("li", { className: "muted", text: "No tools are enabled." }));
    for (const tool of tools) {
      const params = Object.keys((tool.parameters || {}).properties || {});
      list.append(el("li", {}, el("div", {},
        el("div", { className: "tool-name", text: tool.name }),
        el("div", { text: tool.description || "" }),
        el("div", { className: "params", text: params.length ? "arguments: " + params.join(", ") : "no arguments" }))));
    }
  } catch (error) { list.replaceChildren(el("li", { className: "error", text: error.message })); }
}

async function openMemory() {
  const list = $("memory-list");
  const note = $("memory-note");
  note.textContent = "";
  list.replaceChildren(el("li", { className: "muted", text: "Loading…" }));
  if (!$("memory-dialog").open) $("memory-dialog").showModal();
  let memories;
  try {
    memories = (await (await api("/v1/agent/memories")).json()).data;
  } catch (error) { list.replaceChildren(); note.textContent = error.message; return; }
  list.replaceChildren();
  if (!memories.length) note.textContent = "Nothing remembered yet. Ask the agent to remember something.";
  for (const memory of memories) {
    const forget = el("button", { type: "button", text: "Delete", "aria-label": "Delete the fact: " + memory.text,
      onclick: async () => {
        try { await api("/v1/agent/memories/" + encodeURIComponent(memory.id), { method: "DELETE" }); }
        catch (error) { note.textContent = error.message; return; }
        openMemory();
      } });
    list.append(el("li", {}, el("div", { text: memory.text }), forget));
  }
}

function closeThreadsOnPhone() {
  $("threads").classList.remove("open");
  $("toggle-threads").setAttribute("aria-expanded", "false");
}

// ----- start -----------------------------------------------------------------------------------

function start() {
  $("composer").addEventListener("submit", send);
  $("stop").addEventListener("click", () => { stopReply(); $("prompt").focus(); });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(); }
  });
  $("prompt").addEventListener("paste", (event) => {
    const files = [...(event.clipboardData ? event.clipboardData.files : [])];
    if (files.length) { event.preventDefault(); addFiles(files); }
  });
  const composer = $("composer");
  composer.addEventListener("dragover", (event) => { event.preventDefault(); composer.classList.add("dragging"); });
  composer.addEventListener("dragleave", () => composer.classList.remove("dragging"));
  composer.addEventListener("drop", (event) => {
    event.preventDefault();
    composer.classList.remove("dragging");
    addFiles([...event.dataTransfer.files]);
  });
  $("attach").addEventListener("change", (event) => { addFiles([...event.target.files]); event.target.value = ""; $("prompt").focus(); });
  $("new-thread").addEventListener("click", newChat);
  $("open-tools").addEventListener("click", openTools);
  $("open-memory").addEventListener("click", openMemory);
  for (const button of document.querySelectorAll(".close-dialog")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  $("toggle-threads").addEventListener("click", () => {
    const open = $("threads").classList.toggle("open");
    $("toggle-threads").setAttribute("aria-expanded", String(open));
  });
  fetch("/health").then((r) => r.json()).then((health) => {
    if (health.agent_model) state.agentModel = health.agent_model;
    else setStatus("The agent model is off on this server.");
  }).catch(() => {});
  loadThreads().then(loadVideoSupport);
  $("prompt").focus();
}

document.addEventListener("DOMContentLoaded", start);
