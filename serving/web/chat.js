// The chat page: a conversation with the twin over the server's OpenAI API (/v1/chat/completions,
// streamed). The conversation lives here, in the page; each request sends it whole, every turn with its
// speaker's name, as serving.api reads it.
"use strict";

const view = {
  twin: document.getElementById("twin"), me: document.getElementById("me"), log: document.getElementById("log"),
  empty: document.getElementById("empty"), text: document.getElementById("text"),
  composer: document.getElementById("composer"), send: document.getElementById("send"),
  stop: document.getElementById("stop"), regenerate: document.getElementById("regenerate"),
  startOver: document.getElementById("start-over"), talk: document.getElementById("talk"),
  talkTurns: document.getElementById("talk-turns"), temperature: document.getElementById("temperature"),
  temperatureValue: document.getElementById("temperature-value"),
};
const state = { turns: [], busy: null, temperature: null }; // busy: the AbortController of the reply being written

// Whose turns go on the right: the person you are.
function side(speaker) {
  return speaker === view.me.value ? "mine" : "theirs";
}

function showEmpty() {
  view.empty.hidden = state.turns.length > 0;
  view.empty.textContent = `Say hi to ${view.twin.value || "the twin"}, or rather to their twin: it writes as ` +
    "they did in the run's chats. One message a line; Enter sends, Shift+Enter starts a new line.";
}

function render() {
  view.log.querySelectorAll(".turn, .error").forEach((node) => node.remove());
  for (const turn of state.turns) view.log.append(turnView(turn.speaker, turn.messages, side(turn.speaker)));
  showEmpty();
  scrollDown();
}

function scrollDown() {
  view.log.scrollTop = view.log.scrollHeight;
}

function showError(message) {
  view.log.append(element("p", "error", message));
  scrollDown();
}

function setBusy(controller) {
  state.busy = controller;
  for (const control of [view.send, view.regenerate, view.startOver, view.talk, view.twin, view.me]) {
    control.disabled = Boolean(controller);
  }
  view.send.hidden = Boolean(controller);
  view.stop.hidden = !controller;
}

// The conversation as OpenAI messages for `speaker`'s next turn: theirs are the assistant's.
function requestMessages(speaker) {
  return state.turns.map((turn) => ({
    role: turn.speaker === speaker ? "assistant" : "user", name: turn.speaker,
    content: turn.messages.join("\n"), twin_messages: turn.messages,
  }));
}

// The server's events (data: {...} lines) as objects, up to [DONE].
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        if (line === "data: [DONE]") return;
        yield JSON.parse(line.slice(6));
      }
    }
  }
}

// `speaker`'s next turn, streamed into bubbles as it is written, then added to the conversation.
// Stopped midway, it keeps what was written.
async function reply(speaker, controller) {
  const body = { model: speaker, messages: requestMessages(speaker), stream: true };
  if (state.temperature !== null) body.temperature = state.temperature;
  const shown = turnView(speaker, [], side(speaker));
  shown.append(element("div", "bubble typing", "…"));
  view.log.append(shown);
  view.empty.hidden = true;
  scrollDown();
  let content = "";
  let messages = null;
  try {
    const response = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body), signal: controller.signal });
    for await (const event of events(response)) {
      if (event.error) throw new Error(event.error.message);
      const delta = (event.choices[0] || {}).delta || {};
      if (delta.content) {
        content += delta.content;
        setBubbles(shown, content.split("\n").filter((message) => message.trim()));
        scrollDown();
      }
      if (delta.twin_messages) messages = delta.twin_messages;
    }
  } catch (error) {
    if (error.name !== "AbortError") {
      shown.remove();
      throw error;
    }
  }
  messages = messages || content.split("\n").filter((message) => message.trim());
  if (!messages.length) {
    shown.remove();
    showError(`(${speaker} wrote nothing)`);
    return false;
  }
  setBubbles(shown, messages);
  state.turns.push({ speaker, messages });
  return true;
}

// Runs `work` with the page busy; Stop aborts it. An error is shown in the conversation.
async function busyWith(work) {
  const controller = new AbortController();
  setBusy(controller);
  try {
    await work(controller);
  } catch (error) {
    showError(error.message);
  } finally {
    setBusy(null);
    view.text.focus();
  }
}

function send(event) {
  event.preventDefault();
  const messages = view.text.value.split("\n").map((line) => line.trim()).filter(Boolean);
  if (!messages.length || state.busy) return;
  view.text.value = "";
  fitText();
  const last = state.turns[state.turns.length - 1];
  if (last && last.speaker === view.me.value) last.messages.push(...messages); // one person's lines make one turn
  else state.turns.push({ speaker: view.me.value, messages });
  render();
  busyWith((controller) => reply(view.twin.value, controller));
}

function regenerate() {
  const last = state.turns[state.turns.length - 1];
  if (!last) return;
  let speaker = view.twin.value;
  if (last.speaker !== view.me.value || view.me.value === view.twin.value) {
    state.turns.pop(); // a reply the twin wrote: written again, by the same person
    speaker = last.speaker;
  }
  render();
  busyWith((controller) => reply(speaker, controller));
}

// Both people played by the twin, taking turns, for the number of turns asked.
function talk() {
  const turns = Math.max(1, Math.min(50, Number(view.talkTurns.value) || 1));
  const people = [view.twin.value, view.me.value];
  busyWith(async (controller) => {
    for (let written = 0; written < turns && !controller.signal.aborted; written++) {
      const last = state.turns[state.turns.length - 1];
      const speaker = last && last.speaker === people[0] ? people[1] : people[0];
      if (!(await reply(speaker, controller))) return;
    }
  });
}

function startOver() {
  state.turns = [];
  render();
  view.text.focus();
}

// The textarea grows with its lines, up to a few.
function fitText() {
  view.text.style.height = "auto";
  view.text.style.height = Math.min(view.text.scrollHeight + 2, 160) + "px";
  view.text.style.overflowY = view.text.scrollHeight > 160 ? "auto" : "hidden";
}

function fillPeople(names, partners) {
  for (const select of [view.twin, view.me]) {
    for (const name of names) select.append(element("option", "", name)); // an option's text is its value
  }
  view.twin.value = names[0]; // the person the run twins
  view.me.value = partners[names[0]] || names[1] || names[0]; // whom they wrote to most
}

// Without a run folder the server knows no names: any will do, typed in.
function typedPeople() {
  for (const [id, name] of [["twin", "Twin"], ["me", "User"]]) {
    const input = element("input");
    Object.assign(input, { id, value: name });
    input.setAttribute("aria-label", view[id].getAttribute("aria-label"));
    view[id].replaceWith(input);
    view[id] = input;
  }
}

async function start() {
  view.composer.addEventListener("submit", send);
  view.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
  });
  view.text.addEventListener("input", fitText);
  view.stop.addEventListener("click", () => state.busy && state.busy.abort());
  view.regenerate.addEventListener("click", regenerate);
  view.startOver.addEventListener("click", startOver);
  view.talk.addEventListener("click", talk);
  view.temperature.addEventListener("input", () => {
    state.temperature = Number(view.temperature.value);
    view.temperature.value = state.temperature;
    view.temperatureValue.textContent = state.temperature.toFixed(2);
  });
  try {
    const people = await (await api("/chat/people")).json();
    if (people.names.length) fillPeople(people.names, people.partners);
    else typedPeople();
  } catch (error) {
    showError(error.message);
  }
  for (const select of [view.twin, view.me]) select.addEventListener("change", render);
  render();
  document.body.dataset.ready = "yes"; // for the browser tests
}

start();
