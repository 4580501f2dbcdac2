// The search page: plain JavaScript, no dependencies, every request to this same service (relative URLs).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("search"), q = $("q"), file = $("file"), drop = $("drop"), dropLabel = $("drop-label");
  const clearFile = $("clear-file"), status = $("status"), results = $("results"), key = $("key");
  const datasetSelect = $("dataset"), noMatch = $("no-match"), showAnyway = $("show-anyway");
  let chosen = null;  // the File to search with, if any
  const thumbs = [];  // object URLs to release on the next search

  key.value = sessionStorage.getItem("mmr-api-key") || "";
  key.addEventListener("change", () => { sessionStorage.setItem("mmr-api-key", key.value); init(); });

  const headers = () => (key.value ? { "X-API-Key": key.value } : {});
  const dataset = () => encodeURIComponent(datasetSelect.value || "");

  async function call(path, options = {}) {
    const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      if (response.status === 401 || response.status === 403) { document.querySelector("details").open = true; }
      throw new Error(`${response.status}: ${detail}`);
    }
    return response;
  }

  function say(text, error = false) {
    status.textContent = text;
    status.classList.toggle("error", error);
  }

  async function showServing() {
    try {
      const info = await (await call(`datasets/${dataset()}/info`)).json();
      $("serving").textContent = `${datasetSelect.value}: collection ${info.collection} · model ${info.model} ` +
        `v${info.model_version} · data ${String(info.data_version).slice(0, 12)} · ${info.rows} items`;
    } catch (e) { $("serving").textContent = `not serving: ${e.message}`; }
  }

  async function init() {
    try {
      const list = await (await call("datasets")).json();
      const current = datasetSelect.value;
      datasetSelect.replaceChildren(...list.map((d) => new Option(d.name, d.name, d.default, d.default)));
      if (current && list.some((d) => d.name === current)) datasetSelect.value = current;
      await showServing();
    } catch (e) { $("serving").textContent = ""; say(e.message, true); }
  }
  datasetSelect.addEventListener("change", showServing);

  function choose(f) {
    chosen = f || null;
    drop.classList.toggle("has-file", !!chosen);
    clearFile.hidden = !chosen;
    dropLabel.textContent = chosen ? `Query file: ${chosen.name} (${Math.ceil(chosen.size / 1024)} KiB)`
      : "Drop an image or audio file here, or press Enter to choose one";
  }
  drop.addEventListener("click", (e) => { if (e.target !== clearFile) file.click(); });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); }
  });
  file.addEventListener("change", () => { choose(file.files[0]); if (chosen) form.requestSubmit(); });
  clearFile.addEventListener("click", () => { file.value = ""; choose(null); drop.focus(); });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) { choose(e.dataTransfer.files[0]); form.requestSubmit(); }
  });

  function labels() {
    return $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  }

  function card(hit) {
    const li = document.createElement("li");
    li.className = "card";
    li.dataset.id = hit.id;
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    const caption = (hit.text || "").split(" ||| ")[0] || hit.id;
    if (hit.modality === "image") {
      const img = document.createElement("img");
      img.alt = caption;
      img.loading = "lazy";
      thumb.append(img);
      call(`datasets/${dataset()}/items/${encodeURIComponent(hit.id)}/thumbnail`)
        .then((r) => r.blob()).then((b) => { const url = URL.createObjectURL(b); thumbs.push(url); img.src = url; })
        .catch(() => { thumb.textContent = "no preview"; });
    } else {
      thumb.textContent = { audio: "♪", video: "▶" }[hit.modality] || "¶";
      thumb.setAttribute("aria-hidden", "true");
    }
    const body = document.createElement("div");
    body.className = "body";
    const title = document.createElement("p");
    title.className = "caption";
    title.tabIndex = 0;
    title.textContent = `${hit.rank}. ${caption}`;
    const meta = document.createElement("dl");
    meta.className = "meta";
    const rows = [["label", hit.label || "–"], ["score", hit.score.toFixed(4)], ["modality", hit.modality],
      ["id", hit.id], ["collection", hit.collection], ["model", `v${hit.model_version}`],
      ["data", String(hit.data_version).slice(0, 12)]];
    if (hit.confidence !== null && hit.confidence !== undefined) {  // the collection's score calibration
      rows.splice(2, 0, ["confidence", hit.confidence.toFixed(3)]);
    }
    if (hit.best_time_s !== null && hit.best_time_s !== undefined) {  // video: where in the clip the query matched
      rows.splice(2, 0, ["best at", `${hit.best_time_s.toFixed(1)} s`]);
    }
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = v;
      dd.className = k;
      meta.append(dt, dd);
    }
    body.append(title, meta);
    li.append(thumb, body);
    return li;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = q.value.trim();
    if (!text && !chosen) { say("Type a query or choose a file.", true); q.focus(); return; }
    const k = Math.max(1, Math.min(100, parseInt($("k").value, 10) || 12));
    const modality = $("modality").value || null;
    const mode = $("mode").value || null;  // text searches: vector | keyword | hybrid; empty: the service's default
    let request;
    if (chosen) {
      const body = new FormData();
      body.append("file", chosen, chosen.name);
      if (text) body.append("text", text);
      body.append("k", String(k));
      if (modality) body.append("modality", modality);
      for (const label of labels()) body.append("labels", label);
      request = call(`datasets/${dataset()}/search/upload`, { method: "POST", body });
    } else {
      request = call(`datasets/${dataset()}/search`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text, k, modality, labels: labels(), mode }),
      });
    }
    say("Searching…");
    noMatch.hidden = true;
    $("go").disabled = true;
    try {
      const response = await request;
      const hits = await response.json();
      const flagged = response.headers.get("X-No-Good-Match") === "true";  // the best hit is unlikely relevant
      thumbs.splice(0).forEach((url) => URL.revokeObjectURL(url));
      noMatch.hidden = !flagged;
      results.replaceChildren(...(flagged ? [] : hits.map(card)));
      showAnyway.onclick = () => { noMatch.hidden = true; results.replaceChildren(...hits.map(card)); };
      const what = (chosen ? ` for ${chosen.name}` : "") + (text ? ` for “${text}”` : "");
      say(flagged ? `No good match${what}` : `${hits.length} result${hits.length === 1 ? "" : "s"}${what}`);
    } catch (err) {
      say(err.message, true);
    } finally {
      $("go").disabled = false;
    }
  });

  init();
})();
