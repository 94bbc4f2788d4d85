"""The one page of ``didi serve``: every served model side by side, its samples filling in step by step (the states
streamed by ``POST /api/stream``), then its network calls and the time it took. Plain HTML and JavaScript."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>didi serve</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fafafa; }
  h1 { font-size: 1.3rem; margin: 0 0 .8rem; }
  form { display: flex; flex-wrap: wrap; gap: .6rem 1rem; align-items: end; margin-bottom: 1rem; }
  label { display: flex; flex-direction: column; font-size: .8rem; color: #555; }
  input, select { font: inherit; padding: .25rem .4rem; }
  #text { width: 28rem; }
  .models { display: grid; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr)); gap: 1rem; }
  .panel { background: white; border: 1px solid #ddd; border-radius: 8px; padding: .8rem; }
  .panel h2 { font-size: 1rem; margin: 0 0 .4rem; }
  .panel label { flex-direction: row; align-items: center; gap: .5rem; }
  .panel input.nfe { width: 5rem; }
  .status { font-size: .85rem; color: #555; margin: .4rem 0 .5rem; min-height: 1.2em; }
  .panel[data-state=done] .status { color: #0a6b2b; font-weight: 600; }
  .panel[data-state=error] .status { color: #b00020; }
  pre { white-space: pre-wrap; word-break: break-all; background: #f4f4f6; padding: .5rem; border-radius: 4px;
        margin: .3rem 0; font-size: .85rem; min-height: 2.5em; }
</style>
</head>
<body>
<h1>didi serve: masked diffusion, step by step</h1>
<form id="form">
  <label>conditioning <select id="mode"><option value="">none</option><option value="prompt">prompt</option>
    <option value="infill">infill template</option></select></label>
  <label>text <input id="text" placeholder="ROMEO: / To be, or not to be: [MASK:8] question."></label>
  <label>seed <input id="seed" type="number" value="0" style="width:5rem"></label>
  <label>temperature <input id="temperature" type="number" value="1" step="0.05" style="width:5rem"></label>
  <label>top-k <input id="top_k" type="number" min="1" style="width:5rem"></label>
  <label>top-p <input id="top_p" type="number" value="1" step="0.05" style="width:5rem"></label>
  <label>samples <input id="num_samples" type="number" value="1" min="1" max="16" style="width:4rem"></label>
  <button id="generate" type="submit">Generate</button>
</form>
<div class="models" id="models"></div>
<script>
const panels = [];

function field(id) { return document.getElementById(id).value.trim(); }

function request(panel) {
  const body = {model: panel.model.name, seed: Number(field("seed")), temperature: Number(field("temperature")),
                top_p: Number(field("top_p")), num_samples: Number(field("num_samples"))};
  if (field("top_k")) body.top_k = Number(field("top_k"));
  if (panel.nfe) body.nfe = Number(panel.nfe.value);
  if (field("mode")) body[field("mode")] = document.getElementById("text").value;
  return body;
}

function show(panel, rows) {
  panel.rows.replaceChildren(...rows.map(text => {
    const pre = document.createElement("pre");
    pre.textContent = text;
    return pre;
  }));
}

async function run(panel) {
  const el = panel.element;
  el.dataset.state = "queued";
  el.dataset.states = "0";
  panel.status.textContent = "queued";
  const response = await fetch("/api/stream", {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify(request(panel))});
  if (!response.ok) {
    el.dataset.state = "error";
    panel.status.textContent = (await response.json()).error;
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let newline;
    while ((newline = buffer.indexOf("\\n")) >= 0) {
      const event = JSON.parse(buffer.slice(0, newline));
      buffer = buffer.slice(newline + 1);
      if (event.type === "step") {
        el.dataset.state = "running";
        el.dataset.states = String(Number(el.dataset.states) + 1);
        panel.status.textContent = `step ${event.step} / ${event.steps}: ${event.masked} positions still masked`;
        show(panel, event.rows);
      } else if (event.type === "done") {
        show(panel, event.samples.map(s => s.text));
        panel.status.textContent = (event.nfe ? `${event.nfe} steps, ` : "") +
          `${event.network_calls} network calls, ${event.latency_s.toFixed(3)} s`;
        el.dataset.calls = String(event.network_calls);
        el.dataset.state = "done";
      } else {
        el.dataset.state = "error";
        panel.status.textContent = event.error;
      }
    }
  }
}

async function init() {
  const models = (await (await fetch("/api/models")).json()).models;
  for (const model of models) {
    const element = document.createElement("section");
    element.className = "panel";
    element.dataset.model = model.name;
    const title = document.createElement("h2");
    title.textContent = `${model.name} (${model.kind === "didi" ? "DiDi-Instruct student" :
                                          model.kind === "mdlm" ? "MDLM teacher" : "autoregressive"})`;
    element.append(title);
    let nfe = null;
    if (model.nfe) {
      const label = document.createElement("label");
      label.textContent = "steps (NFE budget)";
      nfe = document.createElement("input");
      nfe.type = "number"; nfe.min = "1"; nfe.value = model.nfe; nfe.className = "nfe";
      label.append(nfe);
      element.append(label);
    }
    const status = document.createElement("div");
    status.className = "status";
    const rows = document.createElement("div");
    element.append(status, rows);
    document.getElementById("models").append(element);
    panels.push({model, element, nfe, status, rows});
  }
  document.body.dataset.ready = "true";
}

document.getElementById("form").addEventListener("submit", event => {
  event.preventDefault();
  panels.forEach(run);
});
init();
</script>
</body>
</html>
"""
