"""The small page for people at `/`: HTML, its script and its style as separate resources.

They are separate so that the Content-Security-Policy can forbid inline script and style
(`script-src 'self'`): a value that slipped into the page could not run.
"""

from __future__ import annotations

PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>residency-timeline</title>
<link rel="stylesheet" href="/static/page.css"><script src="/static/page.js" defer></script>
</head>
<body><h1>居留證時程 ARC timeline</h1>
<form id="f"><input id="token" placeholder="staff token" type="password" required>
<input id="sid" placeholder="student id" required><input id="asof" type="date">
<button>Show</button></form><div id="out"></div>
</body></html>
"""

PAGE_CSS = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}
input{margin:0 .5rem .5rem 0}pre{background:#f6f6f6;padding:1rem;overflow:auto}
.overdue{color:#b00}.open{color:#a60}.done{color:#080}
"""

PAGE_JS = """'use strict';
const esc = (x) => String(x ?? '—').replace(/[&<>"']/g,
  (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
document.getElementById('f').addEventListener('submit', async (e) => {
  e.preventDefault();
  const sid = encodeURIComponent(document.getElementById('sid').value);
  const asof = document.getElementById('asof').value;
  const r = await fetch('/v1/students/' + sid + (asof ? '?as_of=' + asof : ''),
    {headers: {Authorization: 'Bearer ' + document.getElementById('token').value}});
  const v = await r.json(); const out = document.getElementById('out');
  if (!r.ok) { out.textContent = v.error; return; }
  const rows = v.tasks.map(t => `<tr class="${esc(t.status)}"><td>${esc(t.kind)}</td>
    <td>${esc(t.status)}</td><td>${esc(t.due_on)}</td><td>${esc(t.where)}</td>
    <td>${esc(t.rule)}</td></tr>`).join('');
  const fines = v.fines.map(f => `<tr><td>${esc(f.kind)}</td><td>${esc(f.status)}</td>
    <td>${esc(f.accrued_on)}</td><td>${esc(f.amount_min_ntd)}–${esc(f.amount_max_ntd)}</td>
    <td>${esc(f.rule)}</td></tr>`).join('');
  out.innerHTML = `<h2>${esc(v.student_id)}: ${esc(v.status)} (as of ${esc(v.as_of)})</h2>
    <table><tr><th>task</th><th>status</th><th>due</th><th>where</th><th>rule</th></tr>${rows}</table>
    <table><tr><th>fine</th><th>status</th><th>accrued</th><th>NTD</th><th>rule</th></tr>${fines}</table>`;
});
"""
