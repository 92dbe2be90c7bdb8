"""`promptcut serve`: import what the config needs, start the server, serve until Ctrl-C."""

from __future__ import annotations

import threading
import webbrowser

from promptcut.config import Config
from promptcut.setup_project import prepare_project
from server.app import ServerSession, access_for


def run_server(config: Config, open_browser: bool = False) -> None:
    settings = config.serve_settings()
    access = access_for(settings)  # an unsafe address is refused before anything is imported
    project = prepare_project(config)
    session = ServerSession(settings, project, access)
    session.start()
    print(f"promptcut: {config.name} ({config.dataset.name})")
    print(f"  viewer:       {session.viewer_url}")
    print(f"  landing page: {session.landing_url}")
    print(f"  API:          {session.base_url}/api/v1/ (send 'Authorization: Bearer "
          f"{session.access.token}')")
    print("  press Ctrl-C to stop", flush=True)
    if open_browser:
        webbrowser.open(session.viewer_url)
    stop = threading.Event()
    try:
        while not stop.wait(3600):
            pass
    finally:
        session.stop()
