"""The web app's routes, one ``APIRouter`` per part of the site, and the dependencies they share.

* ``accounts.py``: logging in and out, invitations, the session, the annotator's opt-outs and welfare;
* ``annotate.py``: the annotator's projects page, the labelling page and its task API;
* ``admin.py``: the admin pages and forms, and the admin API (uploads, stats, exports, settings);
* ``deps.py``: the database session, the signed-in user (with CSRF and role checks), time, pages.

The handlers parse the request, call :mod:`rlhfkit.feedback.services` (or a feedback module), and
commit; :mod:`rlhfkit.feedback.web` puts the routers together into the app.
"""
