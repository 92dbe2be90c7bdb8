"""The OpenAPI 3 description of the HTTP API (served at /api/v1/openapi.json)."""

from __future__ import annotations

POINT = {
    "type": "object", "required": ["x", "y", "z"], "additionalProperties": False,
    "properties": {"x": {"type": "number"}, "y": {"type": "number"}, "z": {"type": "number"},
                   "unit": {"type": "string", "enum": ["voxel", "nm"], "default": "voxel"}},
    "description": "a point; voxel coordinates unless unit is nm",
}
POINTS = {"type": "array", "items": {"$ref": "#/components/schemas/Point"}, "minItems": 1}
USER = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$", "default": "proofreader",
        "description": "whose edit (undo and redo are per user)"}
EDIT_ANSWER = {
    "type": "object",
    "properties": {"operation": {"type": "integer"}, "type": {"type": "string"},
                   "user": {"type": "string"},
                   "segments": {"type": "array", "items": {"type": "integer"},
                                "description": "segments that exist after the edit and changed"},
                   "removed": {"type": "array", "items": {"type": "integer"}},
                   "message": {"type": "string"}, "milliseconds": {"type": "number"},
                   "supervoxels_created": {"type": "array", "items": {"type": "integer"}},
                   "supervoxels_retired": {"type": "array", "items": {"type": "integer"}}},
}
ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}

EDITS = {
    "merge": ("Merge the segments under two points", {
        "first": {"$ref": "#/components/schemas/Point"},
        "second": {"$ref": "#/components/schemas/Point"}}, ["first", "second"]),
    "split": ("Minimum-cut split of one segment between sources and sinks", {
        "sources": POINTS, "sinks": POINTS}, ["sources", "sinks"]),
    "prompt_cut": ("Prompt cut: reshape the positively prompted segments", {
        "positives": POINTS, "negatives": {**POINTS, "minItems": 0}}, ["positives"]),
    "split_supervoxel": ("Divide the supervoxel under the first source at voxel level", {
        "sources": POINTS, "sinks": POINTS}, ["sources", "sinks"]),
    "review": ("Mark a segment reviewed (done), or no longer (logged, undoable)", {
        "segment": {"type": "integer"}, "reviewed": {"type": "boolean", "default": True}},
        ["segment"]),
    "undo": ("Undo the user's last edit", {}, []),
    "redo": ("Redo the user's last undone edit", {}, []),
}


def _responses(ok: dict) -> dict:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {"200": {"description": "done", "content": {"application/json": {"schema": ok}}},
            "400": {"description": "bad input; nothing changed", **error},
            "401": {"description": "no or wrong token", **error},
            "409": {"description": "the segment is held by another user's edit", **error}}


def _query(name: str, kind: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": {"type": kind}}


def openapi() -> dict:
    paths = {}
    for name, (summary, properties, required) in EDITS.items():
        extra = {"preview": {"type": "boolean", "default": False,
                             "description": "work the edit out and answer what it would do "
                                            "(sides and their sizes); nothing is logged"}} \
            if name in ("merge", "split", "prompt_cut", "split_supervoxel") else {}
        body = {"type": "object", "properties": {"user": USER, **properties, **extra},
                "required": required}
        paths[f"/api/v1/{name}"] = {"post": {
            "summary": summary,
            "requestBody": {"content": {"application/json": {"schema": body}}},
            "responses": _responses({"$ref": "#/components/schemas/EditAnswer"})}}
    obj = {"type": "object"}
    paths.update({
        "/api/v1/export": {"post": {"summary": "Export the corrected segmentation",
                                    "responses": _responses(obj)}},
        "/api/v1/operations": {"get": {
            "summary": "Operation history: id, user, time, type, inputs, changed segments",
            "parameters": [_query("after", "integer"), _query("limit", "integer")],
            "responses": _responses(obj)}},
        "/api/v1/segment_at": {"get": {
            "summary": "The segment at a point",
            "parameters": [_query(a, "number", True) for a in "xyz"] +
            [_query("unit", "string")], "responses": _responses(obj)}},
        "/api/v1/segments/{segment}": {"get": {
            "summary": "A segment's size, supervoxel count and bounding box",
            "parameters": [{"name": "segment", "in": "path", "required": True,
                            "schema": {"type": "integer"}}], "responses": _responses(obj)}},
        "/api/v1/segments/{segment}/members": {"get": {
            "summary": "A segment's supervoxel ids",
            "parameters": [{"name": "segment", "in": "path", "required": True,
                            "schema": {"type": "integer"}}], "responses": _responses(obj)}},
        "/api/v1/segments": {"get": {
            "summary": "The largest segments and every reviewed one: size, supervoxels, last "
                       "edit, review mark",
            "parameters": [_query("limit", "integer")], "responses": _responses(obj)}},
        "/api/v1/show": {"post": {
            "summary": "Centre a user's viewer on a segment and show it in 3D",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["segment"],
                "properties": {"user": USER, "segment": {"type": "integer"}}}}}},
            "responses": _responses(obj)}},
        "/api/v1/question": {"get": {
            "summary": "Focused proofreading: the user's open question, or the most valuable "
                       "one nobody else holds (two touching segments, the chance they are one "
                       "neuron, a voxel of each at the contact); null when none is left",
            "parameters": [_query("user", "string")], "responses": _responses(obj)}},
        "/api/v1/answer": {"post": {
            "summary": "Answer the open question: yes merges the two segments, no keeps them "
                       "apart for good (logged, undoable); answers the edit and the next "
                       "question",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["answer"],
                "properties": {"user": USER, "answer": {"type": "string",
                                                        "enum": ["yes", "no"]}}}}}},
            "responses": _responses(obj)}},
        "/api/v1/skip": {"post": {
            "summary": "Put the open question aside and get the next one",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "properties": {"user": USER}}}}},
            "responses": _responses(obj)}},
        "/api/v1/back": {"post": {
            "summary": "The previous question again, its answer undone",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "properties": {"user": USER}}}}},
            "responses": _responses(obj)}},
        "/api/v1/info": {"get": {"summary": "Project, layers, keys and viewer URL",
                                 "responses": _responses(obj)}},
        "/api/v1/viewer": {"get": {"summary": "A user's own viewer URL",
                                   "parameters": [_query("user", "string")],
                                   "responses": _responses(obj)}},
        "/api/v1/reports": {"get": {"summary": "Outcomes of a user's key actions",
                                    "parameters": [_query("user", "string"),
                                                   _query("after", "integer")],
                                    "responses": _responses(obj)}},
    })
    return {
        "openapi": "3.0.3",
        "info": {"title": "promptcut proofreading API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {"Point": POINT, "EditAnswer": EDIT_ANSWER, "Error": ERROR},
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "security": [{"token": []}],
    }
