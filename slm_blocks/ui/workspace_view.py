"""The workspace bar above the tabs: whose work the page shows and how long it is kept, and "Delete my
workspace". Its load event binds the page to its workspace (workspace.py says which) before any other load
event reads the session, so every tab opens on the learner's own runs, live ones included."""

from __future__ import annotations

import html
import logging

import gradio as gr

from .workspace import LOCAL, anonymous_key, browser_key, new_secret, user_key, valid_secret

log = logging.getLogger("slm_blocks.app")


def _ttl_words(seconds: int) -> str:
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{max(1, round(seconds / 60))} min"


class WorkspaceActions:
    def __init__(self, store):
        self.store = store

    def _key(self, secret, profile) -> tuple[str, str | None]:
        """(workspace key, the secret the browser keeps): local mode's one workspace, the signed-in visitor's,
        or the anonymous one of the browser's secret (a new secret when it has none, or a malformed one)."""
        if self.store.limits.mode == "local":
            return LOCAL, secret if valid_secret(secret) else None
        if not valid_secret(secret):
            secret = new_secret()
        username = getattr(profile, "username", None)
        if isinstance(username, str) and username:
            return user_key(username), secret
        return anonymous_key(secret), secret

    def line(self, session, profile=None) -> str:
        limits, n = self.store.limits, len(session.runs) + len(session.imports)
        count = f"{n} run{'s' if n != 1 else ''} and imported models" if session.imports else \
            f"{len(session.runs)} run{'s' if len(session.runs) != 1 else ''}"
        if session.id == LOCAL:
            return f"🗂️ **Your workspace** on this machine: {count}, kept across restarts."
        username = getattr(profile, "username", None)
        if username:
            return (f"🗂️ **{html.escape(username)}'s workspace**: {count}, on every device where you sign in. "
                    "Trainings go on when the page is closed.")
        ttl = limits.workspace_ttl_s
        kept = f"Unused for {_ttl_words(ttl)}, it is deleted" if ttl > 0 else "It is kept until you delete it"
        return (f"🗂️ **Your workspace** is kept in this browser: {count}; trainings go on when the page is closed "
                f"or reloaded. {kept}; sign in with Hugging Face (Share tab) to keep your work on any device.")

    def _adoptable(self, secret, profile) -> int:
        """Runs of this browser's anonymous workspace a signed-in visitor could move into theirs."""
        if not (getattr(profile, "username", None) and valid_secret(secret)):
            return 0
        from .workspace import folder, scan_runs

        return len(scan_runs(folder(self.store.limits.data_dir, anonymous_key(secret)) / "runs"))

    def bind(self, secret, request: gr.Request, profile: gr.OAuthProfile | None = None):
        key, secret = self._key(secret, profile)
        session = self.store.bind(getattr(request, "session_hash", None), key)
        n = self._adoptable(secret, profile) if self.store.limits.mode == "shared" else 0
        return secret, self.line(session, profile), gr.update(
            visible=n > 0, value=f"Move the {n} run{'s' if n != 1 else ''} this browser trained before you signed in "
                                 "into your workspace")

    def adopt(self, secret, request: gr.Request, profile: gr.OAuthProfile | None = None):
        """Move the runs of this browser's anonymous workspace into the signed-in visitor's, then delete it."""
        if not self._adoptable(secret, profile):
            return gr.skip(), gr.update(visible=False)
        anon = self.store.open(anonymous_key(secret))
        if any(r.job is not None and not r.job.finished for r in anon.runs.values()):
            return "⚠️ A run of this browser's workspace is still training: stop it (or let it finish) first.",                 gr.skip()
        sid = getattr(request, "session_hash", None)
        mine = self.store.bind(sid, user_key(profile.username))
        from .state import SessionRun
        from .workspace import scan_runs

        moved = []
        with mine.lock:
            for name, run_dir in scan_runs(anon.root / "runs").items():  # what its folder holds
                new = mine.new_run_name(name)
                target = mine.root / "runs" / new
                target.parent.mkdir(parents=True, exist_ok=True)
                run_dir.rename(target)
                mine.runs[new] = SessionRun(new, target)
                moved.append(new)
        self.store.delete_workspace(anon.id)
        return self.line(mine, profile) + f" Moved in: {', '.join(html.escape(n) for n in moved)}.",             gr.update(visible=False)

    def current(self, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        """The bar's line as the workspace stands now (it counts the runs)."""
        return self.line(self.store.get(getattr(request, "session_hash", None)), profile)

    def delete(self, sure, secret, request: gr.Request, profile: gr.OAuthProfile | None = None):
        """Delete every run, upload, import and export of the page's workspace, then start an empty one."""
        if sure is not True:
            return gr.skip(), gr.skip(), "Tick the box first: deleting a workspace cannot be undone.", False
        sid = getattr(request, "session_hash", None)
        key = self.store.resolve(sid)
        try:
            self.store.delete_workspace(key)
        except Exception:
            log.exception("deleting a workspace failed")
            return gr.skip(), gr.skip(), "⚠️ The workspace could not be deleted just now; try again.", False
        if key.startswith("ws.anon-"):
            secret = new_secret()  # a fresh anonymous workspace: the old secret names nothing any more
        key, secret = self._key(secret, profile)
        session = self.store.bind(sid, key)
        return secret, self.line(session, profile), "🗑️ Deleted: this is an empty workspace.", False


def create(demo: gr.Blocks, store, ctx):
    """Lay out the bar; returns the page's load event, for the other load events to follow."""
    actions = WorkspaceActions(store)
    secret = gr.BrowserState(None, storage_key="slm-blocks-workspace", secret=browser_key(store.limits.data_dir))
    with gr.Row(elem_id="workspace-bar", equal_height=True):
        with gr.Column(scale=3):
            line = gr.Markdown(elem_id="workspace-line")
            adopt = gr.Button(visible=False, size="sm", elem_id="workspace-adopt")
        with gr.Column(scale=0, min_width=320):
            with gr.Accordion("Delete my workspace", open=False, elem_id="workspace-delete"):
                sure = gr.Checkbox(False, label="Delete every run, upload, import and export here")
                delete = gr.Button("Delete my workspace", variant="stop", size="sm")
                deleted = gr.Markdown()
    loaded = demo.load(actions.bind, [secret], [secret, line, adopt], api_visibility="private",
                       show_progress="hidden")
    ctx.runs.change(actions.current, None, line, api_visibility="private", show_progress="hidden")
    adopt.click(actions.adopt, [secret], [line, adopt], api_visibility="private") \
        .then(ctx.refresh_runs, None, [ctx.runs, ctx.selected], api_visibility="private", show_progress="hidden")
    delete.click(actions.delete, [sure, secret], [secret, line, deleted, sure], api_visibility="private") \
        .then(ctx.refresh_runs, None, [ctx.runs, ctx.selected], api_visibility="private", show_progress="hidden")
    return loaded
