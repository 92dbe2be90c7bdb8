"""The neuroglancer viewer: layers, dimensions, camera and the one place where axes flip.

promptcut works in z, y, x (NumPy) order; neuroglancer shows x, y, z. ``to_viewer`` and
``from_viewer`` are the only conversions between the two.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import neuroglancer
import neuroglancer.server
import neuroglancer.static

from segmentation.errors import InputError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
KEY_RELAY = "promptcut_keys.js"
STEADY_FRAMES = "steady_frames.js"  # no half-rebuilt frames after a pushed state
PAGE_SCRIPTS = (KEY_RELAY, STEADY_FRAMES)
KEY_TABLE = "promptcut_keys.json"

IMAGE_LAYER = "image"
SEGMENTATION_LAYER = "segments"  # what it shows: the supervoxels with the membership applied
# After a supervoxel division the new voxels load in a second layer, drawn with no opacity,
# while the old ones stay on screen; once loaded, that layer is given the opacity and the old
# one goes. The drawn layer's source never changes: neuroglancer draws a layer whose source
# URL changed blank for a frame or more (seen in headless Chromium on a busy machine), and so
# it does when a layer is deleted: the old one is archived (hidden, out of the layer bar) until
# the next division reuses it. So the segmentation layer's name alternates between these two
# with each new set of voxels.
SEGMENTATION_LAYERS = (SEGMENTATION_LAYER, "segments (divided)")


class Viewer(neuroglancer.Viewer):
    """neuroglancer's viewer, noting when the server changed its state.

    When the server pushes a state, the browser rebuilds its data panels and forgets where the
    mouse is until it moves (seen with neuroglancer 2.41: after any server-side change, even of
    the position alone, a key pressed without moving the mouse arrives with no coordinates).
    The key handlers then fall back on the last pointer (see ActionRouter).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pushed_at = 0.0  # time.monotonic() of the last server-side state change

    @contextlib.contextmanager
    def txn(self, *args, **kwargs):
        with super().txn(*args, **kwargs) as state:
            yield state
        self.pushed_at = time.monotonic()


class ClientWithPageScripts(neuroglancer.static.StaticContentSource):
    """neuroglancer's own client, with promptcut's scripts in its page.
    static/promptcut_keys.js: keys pressed while the browser rebuilds its panels after a
    server-side state change would otherwise land on <body> and be lost (seen: 2 of 6 keys
    pressed right after a state change, in headless Chromium), and Shift+H shows promptcut's
    keys as an overlay, read from ``promptcut_keys.json`` (``keys()``: key and action of
    each). static/steady_frames.js: no frame drawn while the layers of a pushed state are
    being rebuilt (unchanged segments would blink)."""

    def __init__(self, keys: Callable[[], list[dict]]):
        self.client = neuroglancer.static.get_default_static_content_source()
        self.keys = keys

    def get(self, name: str, query: str):
        if name in PAGE_SCRIPTS:
            return (STATIC_DIR / name).read_bytes(), "application/javascript"
        if name == KEY_TABLE:
            return json.dumps(self.keys()).encode(), "application/json"
        data, kind = self.client.get(name, query)
        if name in ("", "index.html"):
            tags = "".join(f'<script src="{script}"></script>' for script in PAGE_SCRIPTS)
            data = data.replace(b"</head>", f"{tags}</head>".encode(), 1)
        return data, kind


def use_page_scripts(keys: Callable[[], list[dict]]) -> None:
    """Serve neuroglancer's client with promptcut's scripts (a process-wide neuroglancer
    setting)."""
    neuroglancer.set_static_content_source(source=ClientWithPageScripts(keys))


def guard_neuroglancer(max_body: int, check_hosts: Callable[[Any], None]) -> None:
    """neuroglancer's own server (process-wide, started with the first viewer): cap the bodies
    it buffers (1 GiB by default, for screenshots promptcut never takes; its state-sync and
    action posts are small JSON) and have ``check_hosts`` guard its application."""
    server = neuroglancer.server.global_server
    if server is None or getattr(server, "http_server", None) is None:
        return
    server.http_server.max_buffer_size = max_body  # for connections opened from now on
    check_hosts(server.app)


def to_viewer(zyx: Sequence[float]) -> list[float]:
    """z, y, x to neuroglancer's x, y, z."""
    return [float(v) for v in zyx[::-1]]


def from_viewer(xyz: Sequence[float]) -> tuple[int, int, int]:
    """A neuroglancer x, y, z position to the z, y, x voxel that contains it."""
    x, y, z = (int(math.floor(v)) for v in xyz[:3])
    return z, y, x


@dataclass(frozen=True)
class Pointer:
    """What was under the mouse when a key was pressed, in promptcut's z, y, x order."""

    voxel: Optional[tuple[int, int, int]]
    selected: dict[str, Optional[int]]

    @classmethod
    def from_action_state(cls, state: Any) -> "Pointer":
        coords = state.mouse_voxel_coordinates
        voxel = from_viewer(coords) if coords is not None and len(coords) >= 3 else None
        selected: dict[str, Optional[int]] = {}
        for name, layer_value in (state.selected_values or {}).items():
            selected[name] = _segment_value(getattr(layer_value, "value", None))
        return cls(voxel, selected)


def require_voxel(pointer: Pointer) -> tuple[int, int, int]:
    """The voxel under the mouse, or a clear refusal when the key came from elsewhere."""
    if pointer.voxel is None:
        raise InputError("move the mouse over the volume first")
    return pointer.voxel


def _segment_value(value: Any) -> Optional[int]:
    """Neuroglancer reports a plain id or, with equivalences, a (key, value) map entry."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    for attribute in ("value", "key"):
        inner = getattr(value, attribute, None)
        if isinstance(inner, int):
            return inner
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass
class Camera:
    position: Sequence[float]  # voxel, z, y, x
    cross_section_scale: float
    projection_scale: float
    layout: str


def default_camera(shape: Sequence[int], layout: str, position: Optional[Sequence[float]],
                   cross_section_scale: Optional[float]) -> Camera:
    """Centre of the volume, zoomed so that a cross-section fills a panel of about 500 pixels."""
    centre = position if position is not None else [s // 2 for s in shape]
    scale = cross_section_scale or max(max(shape[1:]) / 500.0, 0.05)
    return Camera(centre, scale, projection_scale=2.0 * max(shape), layout=layout)


def configure(viewer: neuroglancer.Viewer, voxel_size: Sequence[float], sources: dict[str, str],
              camera: Camera, show_layer_panel: bool, visible: Sequence[int] = ()) -> None:
    """Build the whole viewer state in one transaction; ``visible`` ids are shown in 3D."""
    with viewer.txn() as s:
        s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                    scales=to_viewer(voxel_size))
        if IMAGE_LAYER in sources:
            s.layers[IMAGE_LAYER] = neuroglancer.ImageLayer(source=sources[IMAGE_LAYER])
        segmentation = None
        if SEGMENTATION_LAYER in sources:  # under the name it is drawn by now (no blank)
            segmentation = segmentation_name(s) or SEGMENTATION_LAYER
            for name in SEGMENTATION_LAYERS:
                if name != segmentation and name in s.layers:
                    del s.layers[name]
            layer = neuroglancer.SegmentationLayer(source=sources[SEGMENTATION_LAYER],
                                                   selected_alpha=0.5, not_selected_alpha=0.3)
            layer.segments = {int(v) for v in visible}
            s.layers[segmentation] = layer
        s.position = [v + 0.5 for v in to_viewer(camera.position)]  # voxel centres
        s.cross_section_scale = camera.cross_section_scale
        s.projection_scale = camera.projection_scale
        s.layout = camera.layout
        s.show_slices = True
        s.selected_layer.visible = show_layer_panel
        if segmentation is not None:
            s.selected_layer.layer = segmentation


def _loading(layer: Any) -> bool:
    """A segmentation layer whose voxels load out of sight (no opacity at all)."""
    return not (layer.selected_alpha or layer.not_selected_alpha or layer.object_alpha)


def segmentation_name(state: Any) -> Optional[str]:
    """The name of the segmentation layer drawn now (None: the proofreader removed it)."""
    for name in SEGMENTATION_LAYERS:
        if name in state.layers and not state.layers[name].archived and \
                not _loading(state.layers[name]):
            return name
    return None


def voxels_loading(state: Any) -> bool:
    """Whether new voxels are loading out of sight."""
    return any(name in state.layers and not state.layers[name].archived and
               _loading(state.layers[name]) for name in SEGMENTATION_LAYERS)


def segmentation_layer(state: Any) -> Any:
    """The segmentation layer drawn now (None: the proofreader removed it)."""
    name = segmentation_name(state)
    return state.layers[name] if name is not None else None


def draw_membership(state: Any, groups: list[list[int]], shown: set[int]) -> None:
    """The segmentation layer's equivalence groups and the ids shown in 3D (none if the
    proofreader removed the layer from their view); new voxels loading get the same, so
    that the meshes they load are the ones to show."""
    for name in SEGMENTATION_LAYERS:
        if name in state.layers:
            layer = state.layers[name]
            layer.equivalences = groups
            layer.segments = shown


def load_voxels(state: Any, url: str) -> None:
    """Start loading the segmentation from a new URL out of sight (chunks and the shown
    meshes) in the other segmentation layer, just above the drawn one, which stays drawn;
    ``show_loaded_voxels`` then swaps them."""
    drawn = segmentation_name(state)
    if drawn is None:
        return
    spare = next(n for n in SEGMENTATION_LAYERS if n != drawn)
    if spare in state.layers and str(state.layers[spare].source[0].url) == url:
        return  # already loading
    current = state.layers[drawn]
    layer = neuroglancer.SegmentationLayer(source=url, selected_alpha=0, not_selected_alpha=0,
                                           object_alpha=0)
    layer.equivalences = current.equivalences
    layer.segments = current.segments
    names = [managed.name for managed in state.layers]
    above = names[names.index(drawn) + 1:]
    state.layers[spare] = layer
    for name in above:  # the layers drawn over the segmentation (prompts) stay over it
        if name != spare:
            moved = state.layers[name]
            del state.layers[name]
            state.layers[name] = moved


def show_loaded_voxels(state: Any, url: str) -> None:
    """Draw the segmentation from ``url``, whose chunks the browser has loaded in the other
    segmentation layer: that layer takes over the drawn one's opacity, colours and selection,
    and the drawn one is archived. Without a loading layer (the proofreader removed it), the drawn
    layer's source is changed."""
    drawn = segmentation_name(state)
    loading = next((n for n in SEGMENTATION_LAYERS if n != drawn and n in state.layers and
                    str(state.layers[n].source[0].url) == url), None)
    if drawn is None:
        return
    if loading is None:
        if str(state.layers[drawn].source[0].url) != url:
            state.layers[drawn].source = url
        return
    old, new = state.layers[drawn], state.layers[loading]
    for setting in ("selected_alpha", "not_selected_alpha", "object_alpha", "saturation",
                    "segment_colors", "hide_segment_zero", "visible", "segments",
                    "color_seed", "segment_query"):
        setattr(new, setting, getattr(old, setting))
    old.archived = True
    if state.selected_layer.layer == drawn:
        state.selected_layer.layer = loading


def show_status(viewer: neuroglancer.Viewer, key: str, message: Optional[str]) -> None:
    """Set (or clear, with None) one line of the viewer's status bar."""
    with viewer.config_state.txn() as s:
        if message is None:
            s.status_messages.pop(key, None)
        else:
            s.status_messages[key] = message
