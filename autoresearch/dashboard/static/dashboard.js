// autoresearch dashboard: poll the page's JSON; when its version moves, swap in the new page
// body (no reload), then re-apply the table's sort and status filter. No dependencies.
"use strict";

const state = { sortCol: null, sortDir: 1, filter: "" };

function cellValue(row, col) {
  const cell = row.children[col];
  if (!cell) return "";
  return cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent.trim();
}

function applyTable() {
  const table = document.querySelector("table.sortable");
  if (!table) return;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const heads = table.tHead.rows[0].cells;
  Array.from(heads).forEach((th, i) => {
    th.classList.toggle("asc", i === state.sortCol && state.sortDir > 0);
    th.classList.toggle("desc", i === state.sortCol && state.sortDir < 0);
  });
  if (state.sortCol !== null) {
    const numeric = heads[state.sortCol].dataset.type === "num";
    rows.sort((a, b) => {
      let x = cellValue(a, state.sortCol), y = cellValue(b, state.sortCol);
      if (numeric) {
        x = x === "" ? Infinity : parseFloat(x);
        y = y === "" ? Infinity : parseFloat(y);
        return (x - y || 0) * state.sortDir;
      }
      return x.localeCompare(y) * state.sortDir;
    });
    rows.forEach((r) => body.appendChild(r));
  }
  rows.forEach((r) => {
    r.hidden = state.filter !== "" && r.dataset.status !== state.filter;
  });
  const select = document.getElementById("status-filter");
  if (select) {
    if (state.filter && !Array.from(select.options).some((o) => o.value === state.filter)) {
      select.add(new Option(state.filter, state.filter));
    }
    select.value = state.filter;
  }
}

function bind() {
  const table = document.querySelector("table.sortable");
  if (table) {
    Array.from(table.tHead.rows[0].cells).forEach((th, i) => {
      th.addEventListener("click", () => {
        state.sortDir = state.sortCol === i ? -state.sortDir : 1;
        state.sortCol = i;
        applyTable();
      });
    });
  }
  const select = document.getElementById("status-filter");
  if (select) {
    select.addEventListener("change", () => {
      state.filter = select.value;
      applyTable();
    });
  }
  applyTable();
}

async function refresh(main) {
  const response = await fetch(location.pathname, { cache: "no-store" });
  if (!response.ok) return;
  const doc = new DOMParser().parseFromString(await response.text(), "text/html");
  const fresh = doc.getElementById("main");
  if (!fresh) return;
  const open = new Set(Array.from(main.querySelectorAll("details[open] > summary"))
    .map((s) => s.textContent));
  main.innerHTML = fresh.innerHTML;
  main.dataset.version = fresh.dataset.version;
  main.dataset.poll = fresh.dataset.poll;
  main.querySelectorAll("details > summary").forEach((s) => {
    if (open.has(s.textContent)) s.parentElement.open = true;
  });
  document.title = doc.title;
  bind();
}

async function poll() {
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  const url = main && main.dataset.poll;
  if (!url) {
    if (live) live.textContent = "";
    return;
  }
  const interval = parseInt(main.dataset.interval || "2000", 10);
  try {
    const response = await fetch(url, { cache: "no-store" });
    if (response.ok) {
      const data = await response.json();
      if (data.version !== main.dataset.version) await refresh(main);
      if (live) { live.classList.remove("stale"); live.textContent = "● live"; }
    }
  } catch (err) {
    if (live) { live.classList.add("stale"); live.textContent = "● reconnecting"; }
  }
  setTimeout(poll, interval);
}

bind();
setTimeout(poll, parseInt((document.getElementById("main") || {}).dataset?.interval || "2000", 10));
