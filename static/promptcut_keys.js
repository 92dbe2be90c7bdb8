// promptcut, in neuroglancer's page: neuroglancer rebuilds its data panels whenever the server
// changes the viewer state (promptcut does after prompts and edits), and a key pressed while
// the focused panel is being replaced lands on <body>, outside neuroglancer's key handling,
// and is lost. Such keys are handed to the viewer instead.
(function () {
  'use strict';
  document.addEventListener('keydown', function (event) {
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
