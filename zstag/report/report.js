// The review page: one page of cards in the DOM at a time, everything else kept as data.
// Every label and file name reaches the DOM through textContent or an attribute, never as markup.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("zstag-data").textContent);
  const PAGE = 60;
  const labels = D.labels;
  const lower = labels.map((name) => name.toLowerCase());
  const index = new Map(labels.map((name, i) => [name, i]));
  const unseen = new Set(D.unseen);
  const $ = (id) => document.getElementById(id);
  const state = { query: "", threshold: D.min, page: 0, shown: [] };
  const fmt = (score) => (Math.abs(score) < 1 ? score.toPrecision(2) : score.toFixed(2));

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Image rows: [name, href, thumb, label indices, scores (descending), truth label indices or null].
  function filter() {
    const query = state.query.trim();
    const t = state.threshold;
    const exact = index.get(query);
    const shown = [];
    if (exact !== undefined) {
      D.images.forEach((row, i) => {
        const at = row[3].indexOf(exact);
        if (at >= 0 && row[4][at] >= t) shown.push([row[4][at], i]);
      });
      shown.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
      return shown.map((pair) => pair[1]);
    }
    const q = query.toLowerCase();
    if (!q && t <= D.min) return D.images.map((_, i) => i);
    const wanted = new Uint8Array(labels.length);
    lower.forEach((name, j) => { wanted[j] = name.includes(q) ? 1 : 0; });
    D.images.forEach((row, i) => {
      const tags = row[3], scores = row[4];
      for (let k = 0; k < tags.length && scores[k] >= t; k++) {
        if (wanted[tags[k]]) { shown.push(i); return; }
      }
    });
    return shown;
  }

  function tagButton(j, score, cls) {
    const button = el("button", "tag " + cls + (unseen.has(j) ? " unseen" : ""), labels[j]);
    button.type = "button";
    button.dataset.label = labels[j];
    if (score !== null) button.appendChild(el("span", "score", fmt(score)));
    button.addEventListener("click", () => setQuery(labels[j]));
    return button;
  }

  function card(row) {
    const [name, href, thumb, tags, scores, truth] = row;
    const figure = el("figure", "card");
    const link = el("a");
    if (href) { link.href = href; link.target = "_blank"; link.rel = "noopener"; }
    if (thumb) {
      const img = el("img");
      img.loading = "lazy"; img.width = 160; img.height = 160; img.alt = name; img.src = thumb;
      link.appendChild(img);
    } else {
      link.appendChild(el("div", "nothumb", "unreadable"));
    }
    figure.appendChild(link);
    const caption = el("figcaption", null, name.split("/").pop());
    caption.title = name;
    figure.appendChild(caption);
    const list = el("ul", "tags");
    const truthSet = truth ? new Set(truth) : null;
    const predicted = new Set();
    for (let k = 0; k < tags.length && scores[k] >= state.threshold; k++) {
      predicted.add(tags[k]);
      const cls = truthSet ? (truthSet.has(tags[k]) ? "ok" : "bad") : "";
      list.appendChild(el("li")).appendChild(tagButton(tags[k], scores[k], cls));
    }
    if (truthSet) {
      truth.filter((j) => !predicted.has(j)).forEach((j) => list.appendChild(el("li")).appendChild(tagButton(j, null, "miss")));
    }
    figure.appendChild(list);
    return figure;
  }

  function render() {
    const pages = Math.max(1, Math.ceil(state.shown.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * PAGE;
    const cards = state.shown.slice(start, start + PAGE).map((i) => card(D.images[i]));
    $("grid").replaceChildren(...cards);
    $("status").textContent = `${state.shown.length} of ${D.images.length} images · page ${state.page + 1} of ${pages}`;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  function update() {
    state.shown = filter();
    state.page = 0;
    render();
  }

  function setQuery(label) {
    $("query").value = label;
    state.query = label;
    update();
    window.scrollTo(0, 0);
  }

  function setupControls() {
    const options = labels.map((name) => { const o = el("option"); o.value = name; return o; });
    $("labels").replaceChildren(...options);
    $("query").addEventListener("input", (e) => { state.query = e.target.value; update(); });
    const slider = $("threshold");
    slider.min = D.min; slider.max = D.max; slider.value = D.min;
    slider.step = D.max > D.min ? (D.max - D.min) / 100 : 1;
    const show = () => { $("threshold-value").textContent = fmt(Number(slider.value)); };
    slider.addEventListener("input", () => { state.threshold = Number(slider.value); show(); update(); });
    show();
    $("prev").addEventListener("click", () => { state.page--; render(); });
    $("next").addEventListener("click", () => { state.page++; render(); });
  }

  const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(2));

  function summary(report) {
    const table = $("summary");
    const settings = ["zs", "gzs"].filter((s) => report[s]);
    if (!settings.length) return;
    const ks = Object.keys(report[settings[0]].at_k);
    const head = el("tr");
    ["", "mAP", "miAP"].concat(...ks.map((k) => ["P@" + k, "R@" + k, "F1@" + k])).forEach((h) => head.appendChild(el("th", null, h)));
    table.appendChild(head);
    settings.forEach((s) => {
      const r = report[s], tr = el("tr");
      [s.toUpperCase(), pct(r.mAP), pct(r.miAP)].concat(...ks.map((k) => [pct(r.at_k[k].P), pct(r.at_k[k].R), pct(r.at_k[k].F1)]))
        .forEach((v) => tr.appendChild(el("td", null, v)));
      table.appendChild(tr);
    });
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function curves(pr, report) {
    const W = 360, H = 260, L = 40, B = 30, T = 10, R = 10, pw = W - L - R, ph = H - T - B;
    const x = (r) => L + r * pw, y = (p) => T + (1 - p) * ph;
    const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "precision-recall curves" });
    for (let i = 0; i <= 10; i += 2) {
      const v = i / 10;
      root.appendChild(svg("line", { x1: x(v), x2: x(v), y1: y(0), y2: y(1), stroke: "#e5e5e5" }));
      root.appendChild(svg("line", { x1: x(0), x2: x(1), y1: y(v), y2: y(v), stroke: "#e5e5e5" }));
      root.appendChild(svg("text", { x: x(v), y: H - B + 14, "text-anchor": "middle" }, v.toFixed(1)));
      root.appendChild(svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(1)));
    }
    root.appendChild(svg("text", { x: L + pw / 2, y: H - 2, "text-anchor": "middle" }, "recall"));
    const colours = { gzs: "#1f77b4", zs: "#d62728" };
    ["gzs", "zs"].filter((s) => pr[s] && pr[s].length).forEach((s, row) => {
      const points = pr[s].map(([r, p]) => `${x(r).toFixed(1)},${y(p).toFixed(1)}`).join(" ");
      root.appendChild(svg("polyline", { points, fill: "none", stroke: colours[s], "stroke-width": 2, class: "pr-" + s }));
      const legend = `${s.toUpperCase()} mAP ${pct(report[s] && report[s].mAP)}`;
      root.appendChild(svg("text", { x: x(1) - 4, y: T + 14 + 14 * row, "text-anchor": "end", fill: colours[s] }, legend));
    });
    $("curves").appendChild(root);
  }

  function apTable(ev) {
    const rows = labels.map((name, j) => ({ j, label: name, kind: unseen.has(j) ? "unseen" : "seen", positives: ev.positives[j], ap: ev.ap[j] }));
    const body = document.querySelector("#ap tbody");
    let key = "ap", dir = -1;
    function draw() {
      rows.sort((a, b) => {
        const u = a[key], v = b[key];
        if (u === v) return a.j - b.j;
        if (u === null) return 1;
        if (v === null) return -1;
        return (u < v ? -1 : 1) * dir;
      });
      body.replaceChildren(...rows.map((r) => {
        const tr = el("tr");
        const name = tr.appendChild(el("td", "label", r.label));
        name.addEventListener("click", () => setQuery(r.label));
        tr.appendChild(el("td", null, r.kind));
        tr.appendChild(el("td", null, String(r.positives)));
        tr.appendChild(el("td", null, pct(r.ap)));
        return tr;
      }));
      document.querySelectorAll("#ap th").forEach((th) => {
        th.className = th.dataset.key === key ? (dir > 0 ? "asc" : "desc") : "";
      });
    }
    document.querySelectorAll("#ap th").forEach((th) => th.addEventListener("click", () => {
      dir = th.dataset.key === key ? -dir : (th.dataset.key === "label" || th.dataset.key === "kind" ? 1 : -1);
      key = th.dataset.key;
      draw();
    }));
    draw();
  }

  setupControls();
  if (D.eval) {
    $("evaluation").hidden = false;
    $("legend").hidden = false;
    summary(D.eval.report);
    curves(D.eval.pr, D.eval.report);
    apTable(D.eval);
  } else if (unseen.size) {
    $("legend").hidden = false;
    document.querySelectorAll("#legend .ok, #legend .bad, #legend .miss").forEach((n) => { n.hidden = true; });
  }
  update();
})();
