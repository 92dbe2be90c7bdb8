// promptcut, in neuroglancer's page.
//
// 1. Keys that land outside the viewer: neuroglancer rebuilds its data panels whenever the
//    server changes the viewer state (promptcut does after prompts and edits), and a key
//    pressed while the focused panel is being replaced lands on <body>, outside neuroglancer's
//    key handling, and is lost. Such keys are handed to the viewer instead.
// 2. Shift+H shows promptcut's keys as a readable overlay (neuroglancer's own help panel, H,
//    does not list Shift+letter keys); Esc or Shift+H again closes it. The table comes from
//    promptcut_keys.json next to this page, which only holders of the viewer URL can read.
(function () {
  'use strict';
  var OVERLAY = 'promptcut-key-overlay';

  function closeOverlay() {
    var shown = document.getElementById(OVERLAY);
    if (shown) shown.remove();
    return !!shown;
  }

  function showOverlay() {
    fetch('promptcut_keys.json').then(function (r) { return r.json(); }).then(function (keys) {
      closeOverlay();
      var box = document.createElement('div');
      box.id = OVERLAY;
      box.setAttribute('role', 'dialog');
      box.style.cssText = 'position:fixed;top:48px;right:24px;z-index:1000;max-height:80vh;' +
        'overflow:auto;background:rgba(16,16,16,0.94);color:#eee;font:14px/1.45 sans-serif;' +
        'padding:14px 18px;border:1px solid #888;border-radius:6px;max-width:520px';
      var title = document.createElement('div');
      title.textContent = 'promptcut keys (Esc or Shift+H closes this)';
      title.style.cssText = 'font-weight:bold;margin-bottom:8px';
      box.appendChild(title);
      var table = document.createElement('table');
      keys.forEach(function (k) {
        var row = table.insertRow();
        var key = row.insertCell();
        key.textContent = k.key;
        key.style.cssText = 'font-family:monospace;color:#ffd75e;padding-right:14px;' +
          'vertical-align:top;white-space:nowrap';
        row.insertCell().textContent = k.action;
      });
      box.appendChild(table);
      document.body.appendChild(box);
    });
  }

  document.addEventListener('keydown', function (event) {
    if (event.key === 'Escape' && closeOverlay()) return;
    if (event.shiftKey && event.code === 'KeyH' && !event.ctrlKey && !event.altKey) {
      if (!closeOverlay()) showOverlay();  // and the key goes on to the server's action
    }
    if (event.target !== document.body && event.target !== document.documentElement) return;
    var viewer = document.querySelector('.neuroglancer-viewer');
    if (!viewer) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    viewer.dispatchEvent(new KeyboardEvent('keydown', {
      key: event.key, code: event.code, location: event.location, repeat: event.repeat,
      shiftKey: event.shiftKey, ctrlKey: event.ctrlKey, altKey: event.altKey,
      metaKey: event.metaKey, bubbles: true, cancelable: true,
    }));
  }, true);
})();
