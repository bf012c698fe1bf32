// edgegen's chat page: streams replies from /v1/chat/completions (server-sent events), shows the
// speed of each reply, and keeps the conversation in this page only (Reset forgets it). The whole
// conversation is sent every turn, rendered identically, so the server re-runs only the new tokens.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { messages: [], controller: null, model: null };

function headers() {
  const out = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

function needKey() {
  $("settings").open = true;
  $("api-key").focus();
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    const body = await response.json();
    if (response.status === 401) needKey();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    const card = body.data[0];
    state.model = card.id;
    $("model").textContent = `${card.id} · ${card.runtime} · context ${card.context_length}`;
  } catch (err) {
    $("model").textContent = "model unavailable: " + err.message;
  }
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function bubble(role, text) {
  $("empty").hidden = true;
  const node = element("div", "msg " + role);
  node.append(element("div", "content", text), element("div", "stats"));
  $("messages").append(node);
  follow(node);
  return node;
}

// Scrolls `node`'s end into view above the sticky message box (which would cover it otherwise).
function follow(node) {
  document.documentElement.style.scrollPaddingBottom = `${$("composer").offsetHeight + 8}px`;
  node.scrollIntoView({ block: "end" });
}

// Yields the data of each server-sent event of a fetch body.
async function* serverEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim());
      if (data.length) yield data.join("\n");
    }
  }
}

function requestBody() {
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(state.messages);
  const body = { model: state.model, messages, stream: true, stream_options: { include_usage: true } };
  const temperature = $("temperature").value;
  const maxTokens = $("max-tokens").value;
  if (temperature !== "") body.temperature = Number(temperature);
  if (maxTokens !== "") body.max_tokens = Number(maxTokens);
  return body;
}

function summary(timing, usage, seconds) {
  if (!timing) return "";
  const parts = [`${timing.generated_tokens} tokens`, `${timing.decode_tokens_per_s.toFixed(1)} tok/s`];
  if (usage) {
    const cached = usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens : 0;
    parts.push(`prompt ${usage.prompt_tokens} tokens (${cached} cached) at ${timing.prefill_tokens_per_s.toFixed(0)} tok/s`);
  }
  parts.push(`${seconds.toFixed(2)} s`);
  if (timing.finish_reason === "length") parts.push("stopped at max tokens");
  return parts.join(" · ");
}

// Streams one reply into `reply`; its text so far is in `out.text`, also when it stops or fails.
async function streamReply(reply, out) {
  const content = reply.querySelector(".content");
  const stats = reply.querySelector(".stats");
  const started = performance.now();
  let chunks = 0, first = 0, timing = null, usage = null;
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: state.controller.signal,
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) needKey();
    throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  }
  for await (const data of serverEvents(response.body)) {
    if (data === "[DONE]") break;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new Error(chunk.error.message);
    if (chunk.usage) usage = chunk.usage;
    if (chunk.timing) timing = chunk.timing;
    const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
    if (!piece) continue;
    if (!first) first = performance.now();
    out.text += piece;
    chunks += 1;
    reply.dataset.chunks = String(chunks);
    content.textContent = out.text;
    const rate = chunks > 1 ? (chunks - 1) / ((performance.now() - first) / 1000) : 0;
    stats.textContent = `${chunks} tokens · ${rate.toFixed(1)} tok/s`;
    follow(reply);
  }
  stats.textContent = summary(timing, usage, (performance.now() - started) / 1000);
  follow(reply);
}

async function send(text) {
  // This exchange belongs to the conversation it began in: Reset during the reply starts a new
  // one, and what this reply writes afterwards goes to the forgotten one.
  const history = state.messages;
  history.push({ role: "user", content: text });
  const question = bubble("user", text);
  const reply = bubble("assistant", "");
  const out = { text: "" };
  reply.classList.add("streaming");
  setBusy(true);
  try {
    await streamReply(reply, out);
    history.push({ role: "assistant", content: out.text });
  } catch (err) {
    if (err.name === "AbortError") {
      history.push({ role: "assistant", content: out.text }); // kept when stopped, as `edgegen chat` does
      reply.querySelector(".stats").textContent += " · stopped";
    } else {  // failed: neither the question (shown as unsent) nor any partial reply stays
      history.pop();
      reply.classList.add("error");
      reply.querySelector(".content").textContent = err.message;
      question.classList.add("unsent");
    }
  } finally {
    reply.classList.remove("streaming");
    reply.dataset.done = "true";
    setBusy(false);
  }
}

function setBusy(busy) {
  if (!busy) state.controller = null;
  else state.controller = new AbortController();
  $("send").textContent = busy ? "Stop" : "Send";
  $("status").textContent = busy ? "generating…" : "";
  document.body.classList.toggle("busy", busy);
}

function reset() {
  if (state.controller) state.controller.abort();
  state.messages = [];
  for (const node of [...document.querySelectorAll(".msg")]) node.remove();
  $("empty").hidden = false;
  $("status").textContent = "conversation cleared";
  $("prompt").focus();
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  if (state.controller) {
    state.controller.abort();
    return;
  }
  const text = $("prompt").value;
  if (!text.trim()) return;
  $("prompt").value = "";
  send(text);
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("reset").addEventListener("click", reset);
$("api-key").addEventListener("change", loadModel);
loadModel();
