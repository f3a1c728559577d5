"""Local Sphinx extension for the book build (loaded via ``sphinx.local_extensions``).

1. Execution stall fix. While myst-nb executes a notebook, nbclient mirrors every ipywidgets
   ``Output`` widget; its ``OutputWidget.sync_state`` sends a comm message on the shell socket
   while the client is awaiting a reply there, and about one run in five the cell then hangs for
   the whole timeout (nbclient issue #312). The book only needs the widget *state*, which is
   embedded anyway, so the sync is made a no-op.

2. Thebe removal. Jupyter Book 1.x always loads ``sphinx_thebe``, which injects
   ``const THEBE_JS_URL = "https://unpkg.com/..."`` into every page -- twice, so the browser
   reports "Identifier 'THEBE_JS_URL' has already been declared" -- plus a script that would pull
   thebe from a CDN. The book has no thebe/Binder button, so sphinx_thebe's event handlers are
   disconnected and its assets dropped: no page error and no CDN reference.
"""

from __future__ import annotations

from sphinx.application import Sphinx


def _patch_nbclient() -> None:
    from nbclient.output_widget import OutputWidget

    OutputWidget.sync_state = lambda self: None


def _drop_thebe(app: Sphinx) -> None:
    for listeners in app.events.listeners.values():
        for listener in list(listeners):
            if getattr(listener.handler, "__module__", "").startswith("sphinx_thebe"):
                app.disconnect(listener.id)
    # the stylesheet sphinx_thebe registered in its setup(); its static path is no longer added
    app.registry.css_files[:] = [
        entry for entry in app.registry.css_files if "sphinx-thebe" not in str(entry[0])
    ]


def setup(app: Sphinx) -> dict:
    _patch_nbclient()
    if "sphinx_thebe" in app.extensions:
        _drop_thebe(app)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
