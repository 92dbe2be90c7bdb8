// promptcut, in neuroglancer's page: no half-rebuilt frames after a state the server pushed.
//
// neuroglancer's Python client applies every state the server pushes (after each edit) by
// discarding all layers and building them again from the new state. Each new layer finds its
// loaded chunks again, but attaches them to the data panels only after its data source has
// resolved, asynchronously: on a busy machine that took 200-700 ms (measured per animation
// frame in headless Chromium), one layer after another. A frame drawn in between shows the
// EM without the segmentation, or nothing: every unchanged segment blinks.
//
// Worse, the panels let go of the old layers' chunk sources before the new layers have
// taken them up again when that takes longer than a timer tick, and the chunks then load
// anew, coarse scale first (seen: the whole panel blocky for a frame).
//
// So, after a pushed state:
// - the old layers' render layers and the chunk sources the panels draw from are held until
//   the new layers have taken them up (neuroglancer shares a chunk source between layers
//   with the same source while any holds it), and
// - frames are held (the canvas keeps showing the last one) until every visible layer is
//   ready again and the panels have taken up its render layers, for at most HOLD_LIMIT_MS,
//   so that a layer whose source never loads cannot freeze the view.
(function () {
  'use strict';
  var HOLD_LIMIT_MS = 1500;
  var KEEP_AFTER_MS = 1000;  // chunk sources held on after drawing resumes

  function sliceViewsOf(display) {
    var found = new Set();
    display.panels.forEach(function (panel) {
      if (panel.sliceView) found.add(panel.sliceView);
      if (panel.sliceViews) panel.sliceViews.forEach(function (_, view) { found.add(view); });
    });
    return found;
  }

  function holdSources(viewer) {
    var held = [];
    function hold(counted) {
      if (counted && typeof counted.addRef === 'function' && !counted.wasDisposed) {
        counted.addRef();
        held.push(counted);
      }
    }
    sliceViewsOf(viewer.display).forEach(function (view) {
      if (!view.visibleLayers) return;
      view.visibleLayers.forEach(function (info) {
        (info.allSources || []).forEach(function (scales) {
          scales.forEach(function (transformed) { hold(transformed.source); });
        });
      });
    });
    viewer.layerManager.managedLayers.forEach(function (managed) {
      if (managed.layer) managed.layer.renderLayers.forEach(hold);
    });
    return held;
  }

  function release(held) {
    held.forEach(function (counted) { counted.dispose(); });
  }

  function layersReady(viewer) {
    var layers = viewer.layerManager.managedLayers;
    for (var i = 0; i < layers.length; ++i) {
      var managed = layers[i];
      if (managed.archived || !managed.visible) continue;
      if (!managed.isReady()) return false;
    }
    return true;
  }

  function holdFramesAfterPushes(viewer) {
    var display = viewer.display;
    var state = viewer.state;
    var draw = display.draw;
    var restoreState = state.restoreState;
    var pushedAt = null;  // performance.now() of the pushed state being rebuilt
    var panelsCaughtUp = false;  // the panels' own (debounced) layer update has run since
    var catchUpQueued = false;

    var held = [];  // what the layers of earlier states drew from, until the new ones do
    var releaseTimer = null;

    function releaseLater(delay) {
      clearTimeout(releaseTimer);
      releaseTimer = setTimeout(function () {
        var done = held;
        held = [];
        release(done);
      }, delay);
    }

    state.restoreState = function () {
      pushedAt = performance.now();
      panelsCaughtUp = false;
      catchUpQueued = false;
      held = held.concat(holdSources(viewer));
      releaseLater(HOLD_LIMIT_MS + KEEP_AFTER_MS);
      return restoreState.apply(this, arguments);
    };

    display.draw = function () {
      if (pushedAt !== null) {
        var waited = performance.now() - pushedAt;
        if (waited < HOLD_LIMIT_MS && !(panelsCaughtUp && layersReady(viewer))) {
          if (!panelsCaughtUp && layersReady(viewer)) {
            // The panels pick up new render layers in a zero-delay timeout of their own,
            // queued when the layers became ready: one of ours after it has seen them run.
            if (!catchUpQueued) {
              catchUpQueued = true;
              setTimeout(function () { panelsCaughtUp = true; display.scheduleRedraw(); }, 0);
            }
          } else {
            setTimeout(display.scheduleRedraw, 16);
          }
          return;
        }
        pushedAt = null;
        releaseLater(KEEP_AFTER_MS);
      }
      return draw.apply(this, arguments);
    };
  }

  function whenViewerExists() {
    var viewer = window.viewer;
    if (viewer && viewer.display && viewer.state && viewer.layerManager) {
      holdFramesAfterPushes(viewer);
    } else {
      setTimeout(whenViewerExists, 20);
    }
  }
  whenViewerExists();
})();
