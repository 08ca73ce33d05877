// The labelling page: fetches tasks from the JSON API and sends labels back.
//
// Every piece of model output or prompt is put on the page with textContent, never innerHTML, so
// text such as "<script>" or "<img onerror=...>" is shown as text and never runs.
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("task-config").textContent);
  const $ = (id) => document.getElementById(id);
  const SCREENS = ["screen-loading", "screen-break", "screen-done", "screen-warning", "screen-task"];

  let task = null;
  let busy = false;
  // pairwise: choice; rank: order (response indices, best first), picked (keyboard picks so far),
  // selected (position of the highlighted card); rating: ratings, current (highlighted response).
  let state = {};

  function resetState() {
    const count = task ? task.response_count : 0;
    state = {
      choice: null,
      order: Array.from({ length: count }, (_, i) => i),
      picked: 0,
      selected: 0,
      ratings: new Array(count).fill(null),
      current: 0,
      editing: false,
    };
  }

  async function api(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": config.csrf_token },
      body: JSON.stringify(body || {}),
    });
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    return { status: response.status, data: data };
  }

  function show(screen) {
    for (const id of SCREENS) $(id).hidden = id !== screen;
  }

  function setError(message) {
    const line = $("status-line");
    line.textContent = message || "";
    line.hidden = !message;
  }

  function renderProgress(progress) {
    if (!progress) return;
    $("progress").textContent =
      "You: " + progress.my_labels + " labelled · Project: " + progress.complete_items + " of " +
      progress.items + " items complete";
  }

  // ------------------------------------------------------------ loading tasks

  async function loadNext() {
    if (busy) return;
    busy = true;
    setError("");
    try {
      const result = await api("/api/projects/" + config.project_id + "/next");
      handleTaskResponse(result.status, result.data);
    } catch (error) {
      setError("Could not reach the server: " + error);
    } finally {
      busy = false;
    }
  }

  function handleTaskResponse(status, data) {
    if (status === 429) return showBreak(data || {});
    if (status === 401) {
      window.location.href = "/login?next=" + encodeURIComponent(window.location.pathname);
      return;
    }
    if (status === 503) {  // busy for a moment: ask again
      setError((data && data.detail) || "Busy; trying again.");
      setTimeout(loadNext, 1000);
      return;
    }
    if (status !== 200) return setError((data && data.detail) || "Error " + status);
    renderProgress(data.progress);
    if (!data.task) {
      task = null;
      $("done-message").textContent = data.message || "No more items.";
      show("screen-done");
      // The last items are held by others; one may come back (skipped, or left too long).
      if (data.retry_after_seconds) setTimeout(loadNext, data.retry_after_seconds * 1000);
      return;
    }
    task = data.task;
    resetState();
    if (!task.revealed) {
      $("warning-categories").textContent = task.categories.join(", ");
      show("screen-warning");
      return;
    }
    renderTask();
  }

  function safeLink(url) {
    return typeof url === "string" && /^https?:\/\//.test(url) ? url : null;
  }

  function showBreak(data) {
    task = null;
    $("break-message").textContent = data.detail || "Please take a break.";
    const resume = data.resume_at ? new Date(data.resume_at) : null;
    $("break-resume").textContent = resume ? resume.toLocaleString() : "later";
    const link = safeLink(data.wellbeing_url || config.wellbeing_url);
    $("break-wellbeing").hidden = !link;
    if (link) $("break-wellbeing-link").href = link;
    show("screen-break");
  }

  // ------------------------------------------------------------ rendering

  function textBlock(value) {
    const block = document.createElement("div");
    if (typeof value === "string") {
      block.className = "text";
      block.textContent = value;
      return block;
    }
    for (const message of value || []) {
      const turn = document.createElement("div");
      turn.className = "turn turn-" + message.role;
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = message.role;
      const text = document.createElement("div");
      text.className = "text";
      text.textContent = message.content;
      turn.append(role, text);
      block.append(turn);
    }
    return block;
  }

  function plainText(value) {
    if (typeof value === "string") return value;
    const messages = value || [];
    return messages.length ? messages[messages.length - 1].content : "";
  }

  function responseCard(index, title) {
    const card = document.createElement("article");
    card.className = "response card";
    card.dataset.index = String(index);
    const heading = document.createElement("h3");
    heading.textContent = title;
    card.append(heading, textBlock(task.responses[index]));
    return card;
  }

  function renderTask() {
    const prompt = $("prompt");
    prompt.replaceChildren(textBlock(task.prompt));
    $("pairwise-controls").hidden = task.task_type !== "pairwise";
    $("rationale-box").hidden = !task.ask_rationale;
    $("rationale").value = "";
    $("edit-box").hidden = !task.allow_edit;
    $("edit-label").hidden = true;
    $("edited-response").value = "";
    const help = {
      pairwise: "Which answer is better? Press 1 or 2, t for a tie, b if both are bad, then Enter.",
      rank: "Order the answers best first: press their numbers from best to worst (or drag them), then Enter.",
      rating: "Rate each answer: press 1–" + task.rating_scale + " for the highlighted answer, then Enter.",
    };
    $("task-help").textContent = help[task.task_type];
    renderResponses();
    show("screen-task");
  }

  function renderResponses() {
    const container = $("responses");
    container.replaceChildren();
    if (task.task_type === "pairwise") {
      container.className = "side-by-side";
      ["A", "B"].forEach((name, index) => {
        const card = responseCard(index, name);
        card.classList.toggle("selected", state.choice === name);
        card.addEventListener("click", () => choose(name));
        container.append(card);
      });
      for (const button of document.querySelectorAll("#pairwise-controls .choice")) {
        button.classList.toggle("selected", button.dataset.choice === state.choice);
      }
    } else if (task.task_type === "rank") {
      container.className = "rank-list";
      state.order.forEach((responseIndex, position) => {
        const card = responseCard(responseIndex, "Response " + (responseIndex + 1));
        const badge = document.createElement("span");
        badge.className = "rank-badge";
        badge.textContent = "#" + (position + 1);
        card.prepend(badge);
        card.draggable = true;
        card.dataset.position = String(position);
        card.classList.toggle("selected", position === state.selected);
        card.addEventListener("click", () => { state.selected = position; renderResponses(); });
        card.addEventListener("dragstart", (event) => {
          event.dataTransfer.setData("text/plain", String(position));
        });
        card.addEventListener("dragover", (event) => event.preventDefault());
        card.addEventListener("drop", (event) => {
          event.preventDefault();
          const from = Number(event.dataTransfer.getData("text/plain"));
          moveCard(from, position);
        });
        container.append(card);
      });
    } else {
      container.className = "side-by-side";
      for (let index = 0; index < task.response_count; index++) {
        const card = responseCard(index, "Response " + (index + 1));
        card.classList.toggle("selected", index === state.current);
        const scale = document.createElement("div");
        scale.className = "scale";
        for (let value = 1; value <= task.rating_scale; value++) {
          const button = document.createElement("button");
          button.type = "button";
          button.textContent = String(value);
          button.className = state.ratings[index] === value ? "selected" : "";
          button.addEventListener("click", (event) => {
            event.stopPropagation();
            rate(index, value);
          });
          scale.append(button);
        }
        card.append(scale);
        card.addEventListener("click", () => { state.current = index; renderResponses(); });
        container.append(card);
      }
    }
  }

  // ------------------------------------------------------------ answering

  function choose(choice) {
    state.choice = choice;
    renderResponses();
  }

  function moveCard(from, to) {
    const [moved] = state.order.splice(from, 1);
    state.order.splice(to, 0, moved);
    state.selected = to;
    renderResponses();
  }

  function pickNext(responseIndex) {
    // Keyboard ranking: the pressed response goes to the next place from the top.
    if (state.picked >= state.order.length) state.picked = 0;
    const from = state.order.indexOf(responseIndex);
    if (from < state.picked) return; // already placed
    moveCard(from, state.picked);
    state.picked += 1;
  }

  function rate(index, value) {
    state.ratings[index] = value;
    state.current = Math.min(index + 1, task.response_count - 1);
    renderResponses();
  }

  function bestIndex() {
    if (task.task_type === "pairwise") return state.choice === "B" ? 1 : 0;
    if (task.task_type === "rank") return state.order[0];
    let best = 0;
    state.ratings.forEach((value, index) => { if ((value || 0) > (state.ratings[best] || 0)) best = index; });
    return best;
  }

  function startEdit() {
    if (!task || !task.allow_edit) return;
    $("edit-label").hidden = false;
    const area = $("edited-response");
    if (!area.value) area.value = plainText(task.responses[bestIndex()]);
    area.focus();
  }

  function answerBody() {
    if (task.task_type === "pairwise") {
      if (!state.choice) return setError("Choose A, B, tie or both bad first.");
      return { choice: state.choice };
    }
    if (task.task_type === "rank") {
      const ranks = new Array(task.response_count);
      state.order.forEach((responseIndex, position) => { ranks[responseIndex] = position + 1; });
      return { ranks: ranks };
    }
    if (state.ratings.some((value) => value === null)) return setError("Rate every answer first.");
    return { ratings: state.ratings.slice() };
  }

  async function submit() {
    if (!task || busy) return;
    const body = answerBody();
    if (!body) return;
    if (task.ask_rationale) body.rationale = $("rationale").value;
    const edited = $("edited-response").value;
    if (task.allow_edit && !$("edit-label").hidden && edited.trim()) {
      body.edited_response = edited;
      body.edited_index = bestIndex();
    }
    busy = true;
    setError("");
    try {
      const result = await api("/api/assignments/" + task.assignment_id + "/label", body);
      if (result.status !== 200 && result.status !== 409) {
        setError((result.data && result.data.detail) || "Error " + result.status);
        return;
      }
    } finally {
      busy = false;
    }
    await loadNext();
  }

  async function skipTask() {
    if (!task || busy) return;
    busy = true;
    try {
      await api("/api/assignments/" + task.assignment_id + "/skip");
    } finally {
      busy = false;
    }
    await loadNext();
  }

  async function revealTask() {
    if (!task || busy) return;
    busy = true;
    try {
      const result = await api("/api/assignments/" + task.assignment_id + "/reveal");
      handleTaskResponse(result.status, result.data);
    } finally {
      busy = false;
    }
  }

  async function flagTask() {
    if (!task) return;
    const category = $("flag-category").value;
    const result = await api("/api/assignments/" + task.assignment_id + "/flag", { category: category });
    if (result.status === 200) {
      setError("");
      $("progress").textContent = "Flagged as " + result.data.categories.join(", ") + ". Thank you.";
    } else {
      setError((result.data && result.data.detail) || "Error " + result.status);
    }
  }

  // ------------------------------------------------------------ keys and buttons

  function onKey(event) {
    const tag = event.target && event.target.tagName;
    if (tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT") return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (!$("screen-warning").hidden) {
      if (key === "r") revealTask();
      else if (key === "s") skipTask();
      return;
    }
    if (!$("screen-task").hidden && task) {
      if (key === "Enter") { event.preventDefault(); submit(); return; }
      if (key === "s") { skipTask(); return; }
      if (key === "e") { event.preventDefault(); startEdit(); return; }
      if (task.task_type === "pairwise") {
        const choice = { "1": "A", "2": "B", t: "tie", b: "both_bad" }[key];
        if (choice) choose(choice);
      } else if (task.task_type === "rank") {
        if (/^[1-9]$/.test(key) && Number(key) <= task.response_count) pickNext(Number(key) - 1);
        else if (key === "0") { state.picked = 0; renderResponses(); }
        else if (key === "ArrowUp" && state.selected > 0) { event.preventDefault(); moveCard(state.selected, state.selected - 1); }
        else if (key === "ArrowDown" && state.selected < state.order.length - 1) {
          event.preventDefault();
          moveCard(state.selected, state.selected + 1);
        }
      } else if (/^[1-9]$/.test(key) && Number(key) <= task.rating_scale) {
        rate(state.current, Number(key));
      }
    }
  }

  for (const category of config.flag_categories) {
    const option = document.createElement("option");
    option.value = category;
    option.textContent = category;
    $("flag-category").append(option);
  }
  for (const button of document.querySelectorAll("#pairwise-controls .choice")) {
    button.addEventListener("click", () => choose(button.dataset.choice));
  }
  $("submit-button").addEventListener("click", submit);
  $("skip-button").addEventListener("click", skipTask);
  $("warning-skip-button").addEventListener("click", skipTask);
  $("reveal-button").addEventListener("click", revealTask);
  $("break-retry").addEventListener("click", loadNext);
  $("edit-start").addEventListener("click", startEdit);
  $("flag-button").addEventListener("click", flagTask);
  document.addEventListener("keydown", onKey);
  loadNext();
})();
