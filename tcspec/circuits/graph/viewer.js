// The attribution graph viewer (viewer.py inlines it into each graph.html).
// G: the graph JSON (circuit-tracer's schema) plus G.viewer: {n_layers, n_pos, thresholds,
// pages: {layer: "<dashboard page template with {feature}>"}, cards: "<cards.js path>"}.
// State (pins, supernodes, labels, clicked node) is circuit-tracer's qParams; it is kept in
// localStorage per slug, saved into a downloaded copy of the graph JSON, and loaded back.
"use strict";
const G = JSON.parse(document.getElementById("graph-data").textContent);
const V = G.viewer, NS = "http://www.w3.org/2000/svg";
const byId = new Map(G.nodes.map(n => [n.node_id, n]));
const KEY = "tcspec-graph-" + G.metadata.slug;
const $ = id => document.getElementById(id);
let CARDS = {}, hovered = null, drawn = {nodes: [], links: []};
let state = freshState(G);

// ------------------------------------------------------------------------------- state
function freshState(graph) {
  const q = graph.qParams || {};
  const labels = {};
  for (const n of graph.nodes) if (isFeature(n) && n.clerp) labels[featureKey(n)] = n.clerp;
  return {pinned: (q.pinnedIds || []).filter(id => byId.has(id)),
          supernodes: (q.supernodes || []).filter(s => s.length > 1),
          clicked: byId.has(q.clickedId) ? q.clickedId : "", labels};
}
function qParams() {
  return {pinnedIds: state.pinned, supernodes: state.supernodes, linkType: "both",
          clickedId: state.clicked, sg_pos: ""};
}
function store() {
  try { localStorage.setItem(KEY, JSON.stringify(state)); } catch (e) { /* file:// quota */ }
}
function restore() {
  try { const s = JSON.parse(localStorage.getItem(KEY)); if (s && s.pinned) state = s; }
  catch (e) { /* nothing stored */ }
}
function savedGraph() {
  const out = JSON.parse(JSON.stringify(G));
  delete out.viewer;
  out.links = out.links.map(({source, target, weight}) => ({source, target, weight}));
  for (const n of out.nodes) if (isFeature(n)) n.clerp = state.labels[featureKey(n)] || "";
  out.qParams = qParams();
  return out;
}
function download() {
  const blob = new Blob([JSON.stringify(savedGraph())], {type: "application/json"});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = G.metadata.slug + ".json";
  document.body.appendChild(a); a.click(); a.remove();
}
function openFile(file) {
  file.text().then(text => {
    const graph = JSON.parse(text);
    if (!graph.nodes || !graph.qParams) throw new Error("not a graph JSON");
    state = freshState(graph); store(); draw(); showCard();
    $("status").textContent = "loaded " + file.name;
  }).catch(e => { $("status").textContent = "cannot load " + file.name + ": " + e.message; });
}

// ------------------------------------------------------------------------------- nodes
function isFeature(n) { return n.feature_type === "cross layer transcoder"; }
function featureIndex(n) { return n.node_id.split("_")[1]; }
function featureKey(n) { return n.layer + "_" + featureIndex(n); }
function card(n) { return isFeature(n) ? CARDS[featureKey(n)] : undefined; }
function label(n) {
  if (isFeature(n)) {
    const c = card(n);
    return state.labels[featureKey(n)] || (c && c.label) || `L${n.layer} #${featureIndex(n)}`;
  }
  if (n.feature_type === "mlp reconstruction error") return `error L${n.layer}`;
  if (n.feature_type === "embedding") return G.metadata.prompt_tokens[n.ctx_idx];
  return n.clerp;
}
function row(n) {
  if (n.layer === "E") return 0;
  return n.feature_type === "logit" ? V.n_layers + 1 : Number(n.layer) + 1;
}
function kind(n) {
  return isFeature(n) ? "feature" : n.feature_type === "mlp reconstruction error" ? "error"
    : n.feature_type;
}
function visible() {
  const nt = Number($("nt").value), et = Number($("et").value);
  const pinned = new Set(state.pinned);
  const nodes = G.nodes.filter(n => n.feature_type === "embedding" || n.feature_type === "logit"
    || pinned.has(n.node_id) || (n.influence !== null && n.influence <= nt));
  const keep = new Set(nodes.map(n => n.node_id));
  const links = G.links.filter(l => l.score <= et && keep.has(l.source) && keep.has(l.target));
  return {nodes, links};
}
function reach(start, links, forward) {  // every node on a path from/to `start`
  const seen = new Set([start]), todo = [start];
  while (todo.length) {
    const id = todo.pop();
    for (const l of links) {
      const [from, to] = forward ? [l.source, l.target] : [l.target, l.source];
      if (from === id && !seen.has(to)) { seen.add(to); todo.push(to); }
    }
  }
  return seen;
}

// ------------------------------------------------------------------------------- graph
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function layout(nodes) {  // x by position (every position a column), y by layer
  const cells = new Map();
  for (const n of nodes) {
    const key = row(n) + ":" + n.ctx_idx;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(n);
  }
  const colw = new Array(V.n_pos).fill(64);
  for (const [key, list] of cells)
    colw[Number(key.split(":")[1])] = Math.max(colw[Number(key.split(":")[1])],
                                               Math.min(26 * list.length + 20, 520));
  const x0 = [80];
  for (let p = 0; p < V.n_pos; p++) x0.push(x0[p] + colw[p]);
  const rh = 92, rows = V.n_layers + 2, W = x0[V.n_pos] + 30, H = rh * rows + 50;
  const pos = new Map();
  for (const [key, list] of cells) {
    const [r, p] = key.split(":").map(Number);
    list.sort((a, b) => (a.influence ?? 0) - (b.influence ?? 0));
    const step = Math.min(26, (colw[p] - 20) / Math.max(list.length, 1));
    list.forEach((n, i) => pos.set(n.node_id,
      [x0[p] + 12 + i * step, H - 40 - r * rh + (i % 2) * 16]));
  }
  return {pos, x0, W, H, rh, rows};
}
function draw() {
  $("ntv").textContent = Number($("nt").value).toFixed(2);
  $("etv").textContent = Number($("et").value).toFixed(3);
  const svg = $("graph");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  drawn = visible();
  const {nodes, links} = drawn, L = layout(nodes);
  svg.setAttribute("width", L.W); svg.setAttribute("height", L.H);
  for (let r = 0; r < L.rows; r++)
    el("text", {x: 4, y: L.H - 36 - r * L.rh, class: "axis"}, svg).textContent =
      r === 0 ? "Emb" : r === L.rows - 1 ? "Logit" : "L" + (r - 1);
  G.metadata.prompt_tokens.forEach((t, p) => {
    el("text", {x: L.x0[p], y: L.H - 8, class: "axis"}, svg).textContent =
      t.length > 12 ? t.slice(0, 11) + "\u2026" : t;
  });
  const maxw = Math.max(1e-12, ...links.map(l => Math.abs(l.weight)));
  const eg = el("g", {id: "edges"}, svg);
  for (const l of links) {
    const [x1, y1] = L.pos.get(l.source), [x2, y2] = L.pos.get(l.target);
    el("path", {class: "edge", "data-s": l.source, "data-t": l.target,
      stroke: l.weight >= 0 ? "#1f77b4" : "#d62728",
      d: `M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${(y1 + y2) / 2} ${x2},${y2}`,
      "stroke-width": 0.3 + 3 * Math.abs(l.weight) / maxw}, eg);
  }
  const pinned = new Set(state.pinned), ng = el("g", {id: "nodes"}, svg);
  for (const n of nodes) drawNode(n, L.pos.get(n.node_id), ng, pinned);
  $("count").textContent = `${nodes.length} nodes, ${links.length} links`;
  document.title = `Attribution graph: ${nodes.length} nodes`;
  highlight();
  drawSubgraph();
}
function highlight() {  // dim everything off the paths through the hovered (or clicked) node
  const focus = hovered || state.clicked;
  const lit = focus && byId.has(focus)
    ? new Set([...reach(focus, drawn.links, true), ...reach(focus, drawn.links, false)]) : null;
  for (const e of document.querySelectorAll("#nodes .node"))
    e.classList.toggle("dim", !!lit && !lit.has(e.dataset.id));
  for (const e of document.querySelectorAll("#edges .edge"))
    e.classList.toggle("dim", !!lit && !(lit.has(e.dataset.s) && lit.has(e.dataset.t)));
}
function drawNode(n, [x, y], parent, pinned) {
  const cls = "node " + kind(n) + (n.node_id === state.clicked ? " sel" : "")
    + (pinned.has(n.node_id) ? " pinned" : "");
  const g = el("g", {class: cls, "data-id": n.node_id}, parent);
  if (isFeature(n)) el("circle", {cx: x, cy: y, r: 6}, g);
  else el("rect", {x: x - 6, y: y - 6, width: 12, height: 12}, g);
  if (n.feature_type !== "embedding") {
    const text = label(n);
    el("text", {x: x + 4, y: y - 9, class: "label"}, g).textContent =
      text.length > 14 ? text.slice(0, 13) + "\u2026" : text;
  }
  el("title", {}, g).textContent = label(n);
  g.addEventListener("mouseenter", () => { hovered = n.node_id; highlight(); });
  g.addEventListener("mouseleave", () => { hovered = null; highlight(); });
  g.addEventListener("click", ev => {
    if (ev.shiftKey) togglePin(n.node_id);
    else { state.clicked = n.node_id; store(); draw(); showCard(); }
  });
}

// ------------------------------------------------------------------------------- card
function h(tag, text, parent, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function showCard() {
  const box = $("card");
  box.textContent = "";
  const n = byId.get(state.clicked);
  if (!n) { h("p", "Click a node for its card; shift-click pins it.", box); return; }
  h("h3", label(n), box, {id: "card-title"});
  h("div", `${n.feature_type}, layer ${n.layer}, position ${n.ctx_idx}` +
    (n.activation !== null && n.activation !== undefined ? `, activation ${n.activation.toPrecision(4)}` : ""), box);
  const pin = h("button", state.pinned.includes(n.node_id) ? "unpin" : "pin", box, {id: "pin"});
  pin.addEventListener("click", () => togglePin(n.node_id));
  if (isFeature(n)) featureCard(n, box);
  linkTables(n, box);
}
function featureCard(n, box) {
  const name = h("input", null, box, {id: "relabel", value: label(n), size: 30});
  name.addEventListener("change", () => {
    state.labels[featureKey(n)] = name.value; store(); draw(); showCard();
  });
  const url = (V.pages || {})[n.layer];
  if (url) {
    const a = h("a", "feature dashboard", box, {id: "dashboard", target: "_blank"});
    a.href = url.replace("{feature}", featureIndex(n));
  }
  const c = card(n);
  if (!c) { h("p", "(no feature card: cards.js not found)", box); return; }
  h("div", `frequency ${(100 * c.activation_frequency).toPrecision(3)}%, max ${c.act_max.toPrecision(3)}`, box);
  if (c.writes) h("div", "writes to: " + c.writes.map(([b, v]) => `L${b} ${v.toPrecision(3)}`).join(", "), box, {class: "writes"});
  histogram(c.histogram, box);
  if (c.top_logits.length) h("div", "top logits: " + c.top_logits.slice(0, 8).join(" "), box, {class: "logits"});
  if (c.bottom_logits.length) h("div", "bottom logits: " + c.bottom_logits.slice(0, 8).join(" "), box, {class: "logits"});
  const top = (c.examples_quantiles || [])[0];
  if (!top) return;
  h("h4", top.quantile_name, box);
  const list = h("div", null, box, {id: "examples"});
  for (const ex of top.examples.slice(0, 8)) example(ex, c.act_max, list);
}
function example(ex, vmax, parent) {
  const line = h("div", null, parent, {class: "example"});
  ex.tokens.forEach((t, i) => {
    const a = ex.tokens_acts_list[i] || 0;
    const span = h("span", t, line, {title: a.toPrecision(3)});
    span.style.background = `rgba(255,140,0,${Math.min(1, a / (vmax || 1))})`;
    if (i === ex.train_token_ind) span.className = "center";
  });
}
function histogram(values, parent) {
  const W = 240, H = 40, svg = el("svg", {width: W, height: H, class: "hist"}, parent);
  const vmax = Math.max(1e-12, ...values), w = W / Math.max(values.length, 1);
  values.forEach((v, i) => el("rect", {x: i * w, y: H - H * v / vmax, width: w, height: H * v / vmax}, svg));
}
function linkTables(n, box) {
  for (const [title, list, other] of [
      ["incoming", drawn.links.filter(l => l.target === n.node_id), "source"],
      ["outgoing", drawn.links.filter(l => l.source === n.node_id), "target"]]) {
    h("h4", `${title} (${list.length})`, box);
    const table = h("table", null, box);
    list.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
    for (const l of list.slice(0, 30)) {
      const tr = h("tr", null, table);
      h("td", label(byId.get(l[other])), tr);
      h("td", l.weight.toPrecision(4), tr);
    }
  }
}

// ------------------------------------------------------------------------------- subgraph
function togglePin(id) {
  const i = state.pinned.indexOf(id);
  if (i >= 0) {
    state.pinned.splice(i, 1);
    state.supernodes = state.supernodes.map(s => s.filter(x => x !== id)).filter(s => s.length > 2);
  } else state.pinned.push(id);
  store(); draw(); showCard();
}
function groupChecked() {
  const ids = [...document.querySelectorAll("#pins input:checked")].map(e => e.value);
  if (ids.length < 2) { $("status").textContent = "check two or more pinned nodes to group"; return; }
  const name = $("group-name").value.trim() || "group " + (state.supernodes.length + 1);
  state.supernodes = state.supernodes.map(s => [s[0], ...s.slice(1).filter(x => !ids.includes(x))])
    .filter(s => s.length > 2);
  state.supernodes.push([name, ...ids]);
  store(); draw();
}
function drawSubgraph() {
  const box = $("pins");
  box.textContent = "";
  const grouped = new Map();
  state.supernodes.forEach((s, i) => s.slice(1).forEach(id => grouped.set(id, i)));
  state.supernodes.forEach((s, i) => {
    const div = h("div", null, box, {class: "supernode"});
    h("strong", s[0], div);
    h("span", " (" + s.slice(1).map(id => label(byId.get(id))).join(", ") + ") ", div);
    h("button", "ungroup", div).addEventListener("click", () => {
      state.supernodes.splice(i, 1); store(); draw();
    });
  });
  for (const id of state.pinned) {
    if (grouped.has(id)) continue;
    const div = h("label", null, box, {class: "pin"});
    h("input", null, div, {type: "checkbox", value: id});
    h("span", " " + label(byId.get(id)) + " @" + byId.get(id).ctx_idx, div);
  }
  const units = [...state.supernodes.map(s => s.slice(1)), ...state.pinned
    .filter(id => !grouped.has(id)).map(id => [id])];
  $("sg-edges").textContent = subgraphEdges(units);
}
function subgraphEdges(units) {  // edges between pinned units (supernodes summed)
  const lines = [];
  for (const a of units) for (const b of units) {
    if (a === b) continue;
    const w = G.links.filter(l => a.includes(l.source) && b.includes(l.target))
      .reduce((s, l) => s + l.weight, 0);
    if (w !== 0) lines.push(`${unitName(a)} \u2192 ${unitName(b)}: ${w.toPrecision(3)}`);
  }
  return lines.join("\n");
}
function unitName(ids) {
  const s = state.supernodes.find(s => s.length - 1 === ids.length && ids.every(id => s.includes(id)));
  return s ? s[0] : label(byId.get(ids[0]));
}

// ------------------------------------------------------------------------------- start
function start() {
  $("prompt").textContent = G.metadata.prompt_tokens.join("");
  const s = G.metadata.scores;
  $("scores").textContent = `replacement ${s.replacement.toFixed(3)}, completeness ${s.completeness.toFixed(3)}`;
  $("nt").value = V.node_threshold; $("et").value = V.edge_threshold;
  for (const id of ["nt", "et"]) $(id).addEventListener("input", draw);
  $("save").addEventListener("click", download);
  $("open").addEventListener("change", ev => ev.target.files[0] && openFile(ev.target.files[0]));
  $("group").addEventListener("click", groupChecked);
  $("clear").addEventListener("click", () => { state.pinned = []; state.supernodes = []; store(); draw(); });
  restore();
  const q = new URLSearchParams(location.search);
  if (q.has("node") && byId.has(q.get("node"))) state.clicked = q.get("node");
  draw(); showCard();
}
if (V.cards) {
  const script = document.createElement("script");
  script.src = V.cards;
  script.onload = () => { CARDS = window.TCSPEC_CARDS || {}; start(); };
  script.onerror = () => { $("status").textContent = "feature cards not found"; start(); };
  document.head.appendChild(script);
} else start();
