// What the chat page and the judge page share: the API key, requests to the server, and turns shown as
// bubbles. Names and messages are only ever set as textContent: whatever they hold stays text.
"use strict";

const KEY_ITEM = "twin-api-key";

// A link may carry the key after "#key=" (the part of an address a browser never sends to a server):
// it is kept for this tab only, then taken out of the address bar.
(function keyFromAddress() {
  const match = location.hash.match(/^#key=(.+)$/);
  if (match) {
    sessionStorage.setItem(KEY_ITEM, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Asks for the API key (a server started with --api-key refuses every request without it); resolves
// once one is given. The request is then tried again: a wrong key asks again.
function askForKey(wrong) {
  return new Promise((resolve) => {
    const overlay = element("div", "overlay");
    const form = element("form", "card");
    const about = element("p", "", "The key its server was started with (");
    about.append(element("code", "", "--api-key"), " or ", element("code", "", "$TWIN_API_KEY"),
      "). It is kept in this tab only.");
    form.append(element("h2", "", "This twin needs its API key"), about);
    const input = element("input");
    Object.assign(input, { type: "password", autocomplete: "off", required: true, placeholder: "API key" });
    input.setAttribute("aria-label", "API key");
    form.append(input);
    if (wrong) form.append(element("p", "error", "That key was refused."));
    form.append(element("button", "primary", "Use this key"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY_ITEM, input.value.trim());
      overlay.remove();
      resolve();
    });
    overlay.append(form);
    document.body.append(overlay);
    input.focus();
  });
}

// fetch() with the key; the server's error message (OpenAI's JSON) is thrown as an Error.
async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_ITEM);
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = "Bearer " + key;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    await askForKey(Boolean(key));
    return api(path, options);
  }
  if (!response.ok) {
    let message = `the server answered ${response.status}`;
    try {
      message = (await response.json()).error.message;
    } catch (ignored) { /* not OpenAI's JSON: the status says enough */ }
    throw new Error(message);
  }
  return response;
}

// One person's turn: their name, then one bubble per message. `side` is "mine" (right) or "theirs" (left).
function turnView(speaker, messages, side) {
  const turn = element("div", "turn " + side);
  turn.append(element("div", "name", speaker));
  setBubbles(turn, messages);
  return turn;
}

function setBubbles(turn, messages) {
  turn.querySelectorAll(".bubble").forEach((bubble) => bubble.remove());
  for (const message of messages) turn.append(element("div", "bubble", message));
}
