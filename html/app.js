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

  // The delta feed of /events/machines from fleet version `since` (the version the page was
  // rendered at): `apply` gets each machines-delta. A machines-reset means the page's version
  // can no longer be brought up to date (the client fell behind, or the server restarted):
  // the page is fetched again, `reload` takes what it needs from it and returns its version,
  // and the feed starts again from there (null: stop). `status` hears of interruptions.
  function follow(since, apply, reload, status) {
    var es = new EventSource('/events/machines?since=' + encodeURIComponent(since));
    es.addEventListener('machines-delta', function (ev) {
      var d;
      try { d = JSON.parse(ev.data); } catch (e) { return; }
      apply(d);
    });
    es.addEventListener('machines-reset', function () {
      // Closed so that the EventSource does not reconnect from its stale version by itself.
      es.close();
      if (status) { status('Reloading the table.'); }
      fetch(window.location.href, { credentials: 'same-origin' })
        .then(function (r) {
          if (!r.ok) { throw new Error('HTTP ' + r.status); }
          return r.text();
        })
        .then(function (html) {
          var v = reload(new DOMParser().parseFromString(html, 'text/html'));
          if (v !== null) { follow(v, apply, reload, status); }
        })
        .catch(function () {
          // The old version gets another reset, and with it another try.
          window.setTimeout(function () { follow(since, apply, reload, status); }, 3000);
        });
    });
    es.addEventListener('error', function () {
      if (status) { status('Live updates interrupted; reconnecting.'); }
    });
  }

  // One machine's page: keep its flash progress current.
  var live = document.getElementById('live-progress');
  var showProgress = function (p) {
    if (!p) { live.textContent = '-'; return; }
    live.textContent = p.total_bytes
      ? p.phase + ' ' + Math.floor(100 * Math.min(p.written_bytes, p.total_bytes) / p.total_bytes) + '%'
      : p.phase + ' ' + p.written_bytes + ' bytes';
  };
  if (live && window.EventSource) {
    follow(live.dataset.version, function (d) {
      d.changed.forEach(function (m) {
        if (m.mac === live.dataset.mac) { showProgress(m.flash_progress); }
      });
      if (d.removed.indexOf(live.dataset.mac) >= 0) { live.textContent = '-'; }
    }, function (doc) {
      var fresh = doc.getElementById('live-progress');
      if (!fresh) { return null; }
      live.textContent = fresh.textContent;
      return fresh.dataset.version;
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

  // The machines page shows one page of the filtered fleet, rendered by the server at the
  // fleet version in the table's data-version. The delta feed from there patches it in place:
  // a changed row on the page is replaced (ticks kept), a removed one goes, a new one that
  // sorts into the page's MAC range is inserted, and changes that belong to other pages are
  // counted in a notice with a link to load the page again. No event rebuilds the table.
  var table = document.getElementById('machines');
  if (!table || !window.EventSource) { return; }
  var body = table.tBodies[0];
  var state = document.getElementById('live-state');
  var notice = document.getElementById('live-outside');
  var names = {};
  try { names = JSON.parse(document.getElementById('image-names').textContent); } catch (e) { names = {}; }
  var params = new URLSearchParams(window.location.search);
  var q = (params.get('q') || '').toLowerCase();
  var label = params.get('label') || '';
  var status = params.get('status') || '';
  var counted = state ? state.textContent : '';
  var outside = {};

  function el(tag, text, cls) {
    var n = document.createElement(tag);
    if (text) { n.textContent = text; }
    if (cls) { n.className = cls; }
    return n;
  }
  // As bulk.rs's Filter::keep, which chose the page's rows on the server.
  function keep(m) {
    if (label && m.labels.indexOf(label) < 0) { return false; }
    if (status === 'discovered' && m.bty_image_ref) { return false; }
    if (status === 'assigned' && !m.bty_image_ref) { return false; }
    if (!q) { return true; }
    var hay = [m.mac, m.last_seen_ip || '', m.boot_mode, names[m.bty_image_ref] || '', m.labels.join(' ')];
    return hay.join(' ').toLowerCase().indexOf(q) >= 0;
  }
  function rowId(mac) { return 'm-' + mac.replace(/:/g, ''); }
  // Ticked rows stay ticked when a live update replaces them or a reset reloads the page.
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
  // The same row as machines.rs's machine_row.
  function row(m) {
    var tr = document.createElement('tr');
    tr.id = rowId(m.mac);
    tr.dataset.mac = m.mac;
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
      if (p.total_bytes) { bar.max = p.total_bytes; bar.value = Math.min(p.written_bytes, p.total_bytes); }
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
  function macRows() { return body.querySelectorAll('tr[data-mac]'); }
  // Whether `mac` sorts into this page: the server orders by MAC, so between the first and the
  // last row, open-ended on the first and the last page.
  function onThisPage(mac) {
    var rows = macRows();
    if (!rows.length) { return !!(table.dataset.firstPage && table.dataset.lastPage); }
    return (table.dataset.firstPage || mac >= rows[0].dataset.mac) &&
      (table.dataset.lastPage || mac <= rows[rows.length - 1].dataset.mac);
  }
  function insert(tr) {
    var before = null;
    macRows().forEach(function (r) { if (!before && r.dataset.mac > tr.dataset.mac) { before = r; } });
    body.insertBefore(tr, before);
  }
  function show() {
    var n = Object.keys(outside).length;
    if (notice) {
      notice.hidden = n === 0;
      notice.replaceChildren();
      if (n) {
        notice.appendChild(document.createTextNode(n + ' machine(s) changed outside this page: '));
        var a = el('a', 'refresh');
        a.href = window.location.href;
        notice.appendChild(a);
      }
    }
    if (state) { state.textContent = counted + ', live'; }
  }
  function apply(d) {
    d.changed.forEach(function (m) {
      var tr = document.getElementById(rowId(m.mac));
      if (tr && keep(m)) {
        tr.replaceWith(row(m));
      } else if (tr) {
        tr.remove();
        outside[m.mac] = true;
      } else if (keep(m)) {
        if (onThisPage(m.mac)) { insert(row(m)); } else { outside[m.mac] = true; }
      }
    });
    d.removed.forEach(function (mac) {
      var tr = document.getElementById(rowId(mac));
      if (tr) { tr.remove(); }
    });
    table.dataset.version = String(d.version);
    show();
  }
  // After a reset: the page as the server renders it now, with the user's ticks kept.
  function reload(doc) {
    var fresh = doc.getElementById('machines');
    if (!fresh) { return null; }
    var rows = Array.prototype.slice.call(fresh.tBodies[0].rows);
    body.replaceChildren.apply(body, rows.map(function (r) { return document.adoptNode(r); }));
    body.querySelectorAll('input[name=mac]').forEach(function (c) { c.checked = !!ticked[c.value]; });
    table.dataset.firstPage = fresh.dataset.firstPage;
    table.dataset.lastPage = fresh.dataset.lastPage;
    table.dataset.version = fresh.dataset.version;
    var freshState = doc.getElementById('live-state');
    if (freshState) { counted = freshState.textContent; }
    outside = {};
    show();
    return fresh.dataset.version;
  }
  follow(table.dataset.version, apply, reload, function (text) {
    if (state) { state.textContent = text; }
  });
})();
