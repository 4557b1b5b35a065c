// bty-web: the only script. Pages work without it; it adds the live machines table (server-sent
// events) and a confirmation before destructive forms. Data goes into the page as text nodes,
// never as markup.
'use strict';
(function () {
  document.querySelectorAll('form[data-confirm]').forEach(function (f) {
    f.addEventListener('submit', function (e) {
      if (!window.confirm(f.dataset.confirm)) { e.preventDefault(); }
    });
  });

  // One machine's page: keep its flash progress current.
  var live = document.getElementById('live-progress');
  if (live && window.EventSource) {
    new EventSource('/events/machines').addEventListener('machines-update', function (ev) {
      var all;
      try { all = JSON.parse(ev.data); } catch (e) { return; }
      var m = all.find(function (x) { return x.mac === live.dataset.mac; });
      var p = m && m.flash_progress;
      if (!p) { live.textContent = '-'; return; }
      live.textContent = p.total_bytes
        ? p.phase + ' ' + Math.floor(100 * Math.min(p.written_bytes, p.total_bytes) / p.total_bytes) + '%'
        : p.phase + ' ' + p.written_bytes + ' bytes';
    });
  }

  var table = document.getElementById('machines');
  if (!table || !window.EventSource) { return; }
  var body = table.tBodies[0];
  var state = document.getElementById('live-state');
  var names = {};
  try { names = JSON.parse(document.getElementById('image-names').textContent); } catch (e) { names = {}; }
  var params = new URLSearchParams(window.location.search);
  var q = (params.get('q') || '').toLowerCase();
  var label = params.get('label') || '';
  var status = params.get('status') || '';

  function el(tag, text, cls) {
    var n = document.createElement(tag);
    if (text) { n.textContent = text; }
    if (cls) { n.className = cls; }
    return n;
  }
  function keep(m) {
    if (label && m.labels.indexOf(label) < 0) { return false; }
    if (status === 'discovered' && m.bty_image_ref) { return false; }
    if (status === 'assigned' && !m.bty_image_ref) { return false; }
    if (!q) { return true; }
    var hay = [m.mac, m.last_seen_ip || '', m.boot_mode, names[m.bty_image_ref] || '', m.labels.join(' ')];
    return hay.join(' ').toLowerCase().indexOf(q) >= 0;
  }
  // Ticked rows stay ticked when a live update rebuilds the table.
  var ticked = {};
  body.addEventListener('change', function (e) {
    if (e.target.name === 'mac') { ticked[e.target.value] = e.target.checked; }
  });
  var selectAll = document.getElementById('select-all');
  if (selectAll) {
    selectAll.hidden = false;
    selectAll.addEventListener('change', function () {
      body.querySelectorAll('input[name=mac]').forEach(function (c) {
        c.checked = selectAll.checked;
        ticked[c.value] = selectAll.checked;
      });
    });
  }
  body.querySelectorAll('input[name=mac]').forEach(function (c) { ticked[c.value] = c.checked; });
  function row(m) {
    var tr = document.createElement('tr');
    tr.id = 'm-' + m.mac.replace(/:/g, '');
    var box = el('input');
    box.type = 'checkbox';
    box.name = 'mac';
    box.value = m.mac;
    box.setAttribute('form', 'bulk');
    box.setAttribute('aria-label', 'select ' + m.mac);
    box.checked = !!ticked[m.mac];
    var td = el('td'); td.appendChild(box); tr.appendChild(td);
    var a = el('a', m.mac, 'mono');
    a.href = '/ui/machines/' + m.mac;
    td = el('td'); td.appendChild(a); tr.appendChild(td);
    td = el('td');
    td.appendChild(m.bty_image_ref ? el('span', 'assigned', 'badge ok') : el('span', 'discovered', 'badge new'));
    if (m.last_status && m.last_status.indexOf('failed') === 0) { td.appendChild(el('span', 'failed', 'badge bad')); }
    tr.appendChild(td);
    td = el('td');
    m.labels.forEach(function (l) { td.appendChild(el('span', l, 'label')); });
    tr.appendChild(td);
    tr.appendChild(el('td', m.boot_mode));
    tr.appendChild(el('td', m.bty_image_ref ? (names[m.bty_image_ref] || m.bty_image_ref.slice(0, 12)) : '-'));
    tr.appendChild(el('td', m.last_seen_at ? m.last_seen_at + (m.last_seen_ip ? ' from ' + m.last_seen_ip : '') : 'never'));
    td = el('td');
    var p = m.flash_progress;
    if (p) {
      var bar = el('progress');
      if (p.total_bytes) { bar.max = p.total_bytes; bar.value = p.written_bytes; }
      bar.setAttribute('aria-label', 'flash progress of ' + m.mac);
      td.appendChild(bar);
      var pct = p.total_bytes ? ' ' + Math.floor(100 * Math.min(p.written_bytes, p.total_bytes) / p.total_bytes) + '%' : '';
      td.appendChild(el('span', ' ' + p.phase + pct));
    } else {
      td.textContent = m.last_flashed_at ? 'done ' + m.last_flashed_at : '-';
    }
    tr.appendChild(td);
    return tr;
  }
  var es = new EventSource('/events/machines');
  es.addEventListener('machines-update', function (ev) {
    var all;
    try { all = JSON.parse(ev.data); } catch (e) { return; }
    var shown = all.filter(keep);
    var frag = document.createDocumentFragment();
    shown.forEach(function (m) { frag.appendChild(row(m)); });
    body.replaceChildren(frag);
    if (state) { state.textContent = shown.length + ' of ' + all.length + ' machines, live'; }
  });
  es.addEventListener('error', function () {
    if (state) { state.textContent = 'Live updates interrupted; reconnecting.'; }
  });
})();
