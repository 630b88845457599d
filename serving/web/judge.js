// The blind test: a held-out moment, the real next turn and the twin's in random order; the judge picks
// one or can't tell. Which is which stays on the server. The judge is a random id this browser keeps, so
// that they can stop and come back to the moments they have not judged.
"use strict";

const JUDGE_ITEM = "twin-judge";
const judge = localStorage.getItem(JUDGE_ITEM) || (() => {
  const id = Array.from(crypto.getRandomValues(new Uint8Array(16)), (byte) => byte.toString(16).padStart(2, "0")).join("");
  localStorage.setItem(JUDGE_ITEM, id);
  return id;
})();
const view = {
  status: document.getElementById("status"), moment: document.getElementById("moment"),
  earlier: document.getElementById("earlier"), conversation: document.getElementById("conversation"),
  who: document.getElementById("who"), progress: document.getElementById("progress"),
  candidates: [document.getElementById("candidate-0"), document.getElementById("candidate-1")],
  buttons: document.querySelectorAll(".pick, #cant-tell"),
};
let pair = null;

function showProgress(figures) {
  view.progress.textContent = `${figures.judged} of ${figures.moments} judged`;
  document.body.dataset.judged = figures.judged; // for the browser tests
}

function showStatus(text) {
  view.status.textContent = text;
  view.status.hidden = !text;
}

async function next() {
  view.moment.hidden = true;
  showStatus("The twin is writing its reply…");
  try {
    const shown = await (await api(`/judge/api/pair?judge=${judge}`)).json();
    showProgress(shown);
    if (shown.pair === null) {
      showStatus("You have judged every moment there is. Thank you!");
      return;
    }
    pair = shown.pair;
    view.earlier.textContent = shown.earlier_turns ? `(${shown.earlier_turns} earlier turns)` : "";
    view.conversation.replaceChildren(...shown.turns.map((turn) =>
      turnView(turn.speaker, turn.messages, turn.speaker === shown.speaker ? "mine" : "theirs")));
    view.who.textContent = shown.speaker;
    shown.candidates.forEach((messages, index) => {
      view.candidates[index].replaceChildren(turnView(shown.speaker, messages.length ? messages : ["(nothing)"], "mine"));
    });
    showStatus("");
    view.moment.hidden = false;
    view.buttons.forEach((button) => { button.disabled = false; });
  } catch (error) {
    showStatus(error.message);
  }
}

async function answer(choice) {
  view.buttons.forEach((button) => { button.disabled = true; });
  try {
    const figures = await (await api("/judge/api/answer", {
      method: "POST", body: JSON.stringify({ judge, pair, choice }),
    })).json();
    showProgress(figures);
  } catch (error) { // the pair was replaced (the page open twice, say): the next one, and why
    await next();
    showStatus(error.message);
    return;
  }
  window.scrollTo(0, 0);
  next();
}

view.buttons.forEach((button) => button.addEventListener("click", () =>
  answer(button.dataset.choice === undefined ? null : Number(button.dataset.choice))));
next().then(() => { document.body.dataset.ready = "yes"; });
