// bty-web: the only script. Pages work without it; it adds the live machines table and the live
// job rows of the Backups and Netboot pages (server-sent events), and a confirmation before
// destructive forms. Data goes into the page as text nodes,
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

  // The Backups and Netboot pages: their job rows follow `jobs-update` events (state, progress,
  // times, error; the Cancel form goes when the job ends), and a job that starts while the page
  // is open gets a row. Rows are found by id and cells by position, as pages.rs writes them.
  var jobTables = Array.prototype.slice.call(document.querySelectorAll('table[data-jobs]'));
  if (jobTables.length && window.EventSource) {
    var csrfField = document.querySelector('input[name=csrf]');
    var node = function (tag, text, cls) {
      var n = document.createElement(tag);
      if (text) { n.textContent = text; }
      if (cls) { n.className = cls; }
      return n;
    };
    // As units::bytes on the server, so a row reads the same before and after an update.
    var bytes = function (n) {
      if (n < 1024) { return n + ' B'; }
      var units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
      var v = n / 1024;
      var u = 0;
      while (v >= 1023.95 && u + 1 < units.length) { v /= 1024; u += 1; }
      return v.toFixed(1) + ' ' + units[u];
    };
    var ended = function (j) { return ['done', 'failed', 'cancelled'].indexOf(j.state) >= 0; };
    var newRow = function (t, j) {
      var tr = node('tr');
      tr.id = 'job-' + j.id;
      tr.appendChild(node('td', String(j.id)));
      for (var i = 0; i < 5; i += 1) { tr.appendChild(node('td')); }
      tr.cells[2].appendChild(node('span', '', 'job-bytes'));
      var cell = node('td', ended(j) ? '-' : '');
      if (!ended(j)) {
        var f = node('form', '', 'inline');
        f.method = 'post';
        f.action = t.dataset.cancel.replace('{id}', String(j.id));
        var h = node('input');
        h.type = 'hidden';
        h.name = 'csrf';
        h.value = csrfField ? csrfField.value : '';
        f.appendChild(h);
        var b = node('button', 'Cancel', 'danger');
        b.type = 'submit';
        b.setAttribute('aria-label', 'Cancel ' + j.kind + ' job ' + j.id);
        f.appendChild(b);
        cell.appendChild(f);
      }
      tr.appendChild(cell);
      return tr;
    };
    var fill = function (tr, j) {
      var c = tr.cells;
      if (c.length < 7) { return; }
      var total = j.total_bytes > 0 ? j.total_bytes : 0;
      c[1].textContent = j.state;
      var bar = c[2].querySelector('progress');
      if (total || !ended(j)) {
        if (!bar) {
          bar = node('progress');
          bar.setAttribute('aria-label', 'progress of job ' + j.id);
          c[2].insertBefore(document.createTextNode(' '), c[2].firstChild);
          c[2].insertBefore(bar, c[2].firstChild);
        }
        if (total) { bar.max = total; bar.value = Math.min(j.progress_bytes, total); }
      } else if (bar) {
        bar.remove();
      }
      var text = c[2].querySelector('.job-bytes');
      if (text) {
        text.textContent = total
          ? bytes(j.progress_bytes) + ' of ' + bytes(total) + ' (' + Math.floor(100 * Math.min(j.progress_bytes, total) / total) + '%)'
          : bytes(j.progress_bytes);
      }
      c[3].textContent = j.started_at || '-';
      c[4].textContent = j.finished_at || '-';
      c[5].textContent = j.error || '';
      if (ended(j) && c[6].querySelector('form')) { c[6].textContent = '-'; }
    };
    new EventSource('/events/jobs').addEventListener('jobs-update', function (ev) {
      var all;
      try { all = JSON.parse(ev.data); } catch (e) { return; }
      jobTables.forEach(function (t) {
        var body = t.tBodies[0];
        var newest = 0;
        Array.prototype.forEach.call(body.rows, function (r) {
          var n = parseInt(r.id.replace('job-', ''), 10);
          if (n > newest) { newest = n; }
        });
        // Oldest first, so that each new row goes on top of the one before it.
        all.filter(function (j) { return j.kind === t.dataset.jobs; }).reverse().forEach(function (j) {
          var tr = document.getElementById('job-' + j.id);
          if (!tr) {
            // Older than the rows the page lists: it was left out on purpose.
            if (j.id <= newest) { return; }
            tr = newRow(t, j);
            body.insertBefore(tr, body.firstChild);
            newest = j.id;
            var empty = body.querySelector('.jobs-empty');
            if (empty) { empty.remove(); }
          }
          fill(tr, j);
        });
      });
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
