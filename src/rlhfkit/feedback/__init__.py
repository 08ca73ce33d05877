"""The human feedback app: people compare, rank and rate model answers; rlhfkit trains on the result.

Layout:

* ``db.py``: the tables (SQLAlchemy 2), engines, sessions and the Alembic migration entry point;
* ``importing.py``: projects from ``rlhfkit generate`` JSONL (or pair/HH records), checked whole;
* ``lexicon.py``: the built-in sensitive-content lexicon (content warnings);
* ``assignment.py``: which item an annotator gets next (overlap, gold items, opt-outs), in one
  serialised transaction;
* ``welfare.py``: breaks and daily caps, as pure functions of the annotator's work intervals;
* ``labels.py``: checking and storing labels, skips, reveals and flags;
* ``agreement.py``: pairwise agreement, Cohen's and Fleiss' kappa, Krippendorff's alpha (pure);
* ``stats.py``: the dashboard numbers (progress, per-annotator counts, gold accuracy, exposure);
* ``export.py``: preference pairs, rankings, SFT demonstrations, KTO records and raw labels;
* ``semi_ai.py``: a judge labels everything, a share goes to people, the two are merged;
* ``auth.py``: passwords (argon2), sessions and CSRF tokens, invitations;
* ``services.py``: what the routes call, one function per action (each route parses, calls one, commits);
* ``routes/``: one FastAPI router per area (``accounts.py``, ``annotate.py``, ``admin.py``) and their
  dependencies (``deps.py``: database session, clock, signed-in user, admin, templates);
* ``web.py``, ``templates/``, ``static/``: a thin ``create_app`` (engine, state, middleware, error
  handlers, routers), server-rendered pages, plain JavaScript;
* ``cli.py``: ``rlhfkit label init|import|export|stats|serve|semi-ai``.
"""
