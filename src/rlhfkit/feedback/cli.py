"""``rlhfkit label``: run the feedback app and move data in and out of its database.

::

    rlhfkit label init   --db sqlite:///feedback.db --admin alice          # schema + first admin
    rlhfkit label import --db ... --project NAME --task pairwise samples.jsonl
    rlhfkit label invite --db ... --role annotator --base-url http://host:8000
    rlhfkit label member --db ... --project NAME --add bob carol [--role reviewer] | --remove bob | (list)
    rlhfkit label account --db ... --disable bob | --enable bob | --end-sessions bob | --reset-link bob
    rlhfkit label serve  --db ... --port 8000 [--behind-proxy] [--secure-cookies | --no-secure-cookies]
    rlhfkit label stats  --db ... --project NAME
    rlhfkit label export --db ... --project NAME --output DIR            # preferences, rankings, sft, kto, labels
    rlhfkit label semi-ai send     --db ... --project NAME --judge SPEC --data FILE --output DIR
    rlhfkit label semi-ai progress --db ... --project NAME --output DIR
    rlhfkit label semi-ai merge    --db ... --project NAME --output DIR  # merged.jsonl, agreement.json
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

DEFAULT_DB = "sqlite:///feedback.db"
PASSWORD_ENV = "RLHFKIT_ADMIN_PASSWORD"
TASK_TYPES = ("pairwise", "rank", "rating")  # as rlhfkit.feedback.db.TASK_TYPES; not imported, to start fast
MEMBER_ROLES = ("annotator", "reviewer")  # as rlhfkit.feedback.db.MEMBER_ROLES


def add_label_parser(commands) -> None:
    """Add ``label`` and its subcommands to the top-level subparsers."""
    label = commands.add_parser("label", help="The human feedback app: init, import, invite, member, account, "
                                              "serve, stats, export, semi-ai.",
                                description="The human feedback app and its database.")
    actions = label.add_subparsers(dest="label_command", metavar="ACTION", required=True)
    add_init_action(actions)
    add_import_action(actions)
    add_invite_action(actions)
    add_member_action(actions)
    add_account_action(actions)
    add_serve_action(actions)
    add_stats_action(actions)
    add_export_action(actions)
    add_semi_ai_action(actions)


def add_action(parent, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand of ``parent`` with the ``--db`` option every action takes."""
    parser = parent.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--db", default=DEFAULT_DB,
                        help="Database URL: sqlite:///FILE (default feedback.db) or postgresql://...")
    return parser


def add_init_action(actions) -> None:
    init = add_action(actions, "init", "Create (or upgrade) the database and the first admin account.")
    init.add_argument("--admin", required=True, help="The admin's username.")
    init.add_argument("--password", help=f"The admin's password (default: ${PASSWORD_ENV}, else asked).")


def add_import_action(actions) -> None:
    imp = add_action(actions, "import",
                     "Add items to a project (created if new) from {prompt, responses} JSONL.")
    imp.add_argument("file", help="JSONL from 'rlhfkit generate' ({prompt, responses}), or pair/HH records.")
    imp.add_argument("--project", required=True, help="Project name.")
    imp.add_argument("--task", default="pairwise", choices=TASK_TYPES, help="Task type of a new project.")
    imp.add_argument("--overlap", type=int, default=1, help="Annotators per item.")
    imp.add_argument("--gold-rate", type=float, default=0.0, help="Share of gold items in each annotator's work.")
    imp.add_argument("--guidelines", help="A Markdown file shown beside every task.")
    imp.add_argument("--rationale", action="store_true", help="Ask annotators for a rationale.")
    imp.add_argument("--edit", action="store_true", help="Let annotators edit the best answer (SFT data).")
    imp.add_argument("--rating-scale", type=int, default=5, help="Points of the rating scale (rating tasks).")
    imp.add_argument("--no-lexicon", action="store_true", help="Do not flag sensitive items with the lexicon.")
    imp.add_argument("--shuffle", action="store_true",
                     help="Show each annotator the answers in a random order (position-bias control).")


def add_invite_action(actions) -> None:
    invite = add_action(actions, "invite", "Print a one-use invitation link.")
    invite.add_argument("--role", default="annotator", choices=("annotator", "admin"))
    invite.add_argument("--by", help="The inviting admin (default: the first admin).")
    invite.add_argument("--base-url", default="http://127.0.0.1:8000", help="Where the app is served.")


def add_member_action(actions) -> None:
    member = add_action(actions, "member", "Add annotators or reviewers to a project, remove them, or list them "
                                           "(annotators see only the projects they are members of).")
    member.add_argument("--project", required=True, help="Project name.")
    member.add_argument("--add", nargs="+", metavar="USER", default=[], help="Make these accounts members.")
    member.add_argument("--role", default="annotator", choices=MEMBER_ROLES,
                        help="The role of those added (a reviewer also corrects and rejects others' labels).")
    member.add_argument("--remove", nargs="+", metavar="USER", default=[],
                        help="Take these accounts out (their open items go back to the pool).")


def add_account_action(actions) -> None:
    account = add_action(actions, "account", "Disable or enable an account, end its sessions, or print a one-use "
                                             "password-reset link.")
    what = account.add_mutually_exclusive_group(required=True)
    what.add_argument("--disable", metavar="USER", help="It cannot log in; its sessions end at once.")
    what.add_argument("--enable", metavar="USER", help="Undo --disable.")
    what.add_argument("--end-sessions", metavar="USER", help="Sign the account out everywhere.")
    what.add_argument("--reset-link", metavar="USER", help="Print a link that sets a new password (once, 24 h).")
    account.add_argument("--base-url", default="http://127.0.0.1:8000", help="Where the app is served.")


def add_serve_action(actions) -> None:
    serve = add_action(actions, "serve", "Serve the app (migrates the database first).")
    serve.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--secure-cookies", action=argparse.BooleanOptionalAction, default=None,
                       help="Mark the session cookie Secure (HTTPS only) always, or never; by default it is Secure "
                            "on requests that came over HTTPS (see --behind-proxy).")
    serve.add_argument("--behind-proxy", action="store_true",
                       help="Served behind a reverse proxy that ends TLS: believe its X-Forwarded-Proto and "
                            "X-Forwarded-For (from --forwarded-allow-ips only), so that cookies are Secure and "
                            "the login throttle sees the real client address.")
    serve.add_argument("--forwarded-allow-ips", default="127.0.0.1",
                       help="With --behind-proxy: the proxy addresses or networks to believe, comma-separated, or "
                            "'*' (default: 127.0.0.1).")


def add_stats_action(actions) -> None:
    stats = add_action(actions, "stats", "Print a project's progress, annotators and agreement.")
    stats.add_argument("--project", required=True)
    stats.add_argument("--json", action="store_true", help="Print JSON instead of tables.")


def add_export_action(actions) -> None:
    export = add_action(actions, "export", "Write a project's training files (see the README) into a folder.")
    export.add_argument("--project", required=True)
    export.add_argument("--output", required=True, help="Output folder.")
    export.add_argument("--exclude", action="append", metavar="ANNOTATOR",
                        help="Leave this annotator's labels out of the training files (repeatable), e.g. one "
                             "whose gold accuracy shows careless work; labels.jsonl keeps them.")
    export.add_argument("--per-label", action="store_true",
                        help="One record per label (annotator as source) instead of aggregating annotators.")


def add_semi_ai_action(actions) -> None:
    """``semi-ai`` and its steps: send, progress, merge."""
    semi = actions.add_parser("semi-ai", help="A judge labels everything, people review a share, then merge.",
                              description="Semi-automatic labelling: 'send' judges every record and pushes a "
                                          "share (least confident first, plus a random sample) to a project; "
                                          "'progress' counts the sent items people labelled; 'merge' writes "
                                          "the merged dataset (human labels win) and the agreement report.")
    steps = semi.add_subparsers(dest="semi_ai_command", metavar="STEP", required=True)
    add_semi_ai_send_step(steps)
    add_semi_ai_step(steps, "progress", "Print how many sent items have at least one human label.")
    add_semi_ai_step(steps, "merge",
                     "Write merged.jsonl (human labels win) and agreement.json; print the agreement.")


def add_semi_ai_step(steps, name: str, help_text: str) -> argparse.ArgumentParser:
    """A ``semi-ai`` step with the options every step takes: --db, --project and --output."""
    parser = add_action(steps, name, help_text)
    parser.add_argument("--project", required=True, help="Project name (created by 'send' if new).")
    parser.add_argument("--output", required=True,
                        help="Folder of judge.jsonl, selection.jsonl, merged.jsonl and agreement.json.")
    return parser


def add_semi_ai_send_step(steps) -> None:
    send = add_semi_ai_step(steps, "send",
                            "Judge every record; push the chosen share into the project (idempotent).")
    send.add_argument("--judge", required=True,
                      help="As 'rlhfkit judge --judge': a causal-LM folder or hub id, an OpenAI-compatible URL "
                           "(or 'openai'), a reward-model folder, or a Python function 'module:function'.")
    send.add_argument("--data", required=True, help="Records {prompt, responses: [...]} (2 answers: pairwise "
                                                    "items; K > 2: rank items).")
    send.add_argument("--human-share", type=float, default=0.2, help="Share of the items sent to people.")
    send.add_argument("--random-fraction", type=float, default=0.25,
                      help="Part of that share drawn at random (the rest: the least confident items).")
    send.add_argument("--seed", type=int, default=0, help="Seed of the random sample (and of sampled principles).")
    send.add_argument("--swap", action=argparse.BooleanOptionalAction, default=True,
                      help="Judge both orders of every pair; orders that disagree make a tie.")
    send.add_argument("--constitution", help="Constitution YAML (default: the built-in one).")
    send.add_argument("--principles", default="all", choices=("all", "sample"),
                      help="Ask about all principles, or sample one per comparison.")
    send.add_argument("--judge-model", help="HTTP judges: the model name to ask for.")
    send.add_argument("--device", default="auto", help="Model judges: auto, cpu, cuda, cuda:N or mps.")
    send.add_argument("--dtype", default="auto", help="Model judges: auto, float32, bfloat16, float16.")
    send.add_argument("--batch-size", type=int, default=8, help="Comparisons per forward pass (model judges).")
    send.add_argument("--overlap", type=int, default=1, help="Annotators per item (a new project).")
    send.add_argument("--guidelines", help="A Markdown file shown beside every task (a new project).")
    send.add_argument("--no-lexicon", action="store_true", help="Do not flag sensitive items with the lexicon.")


def open_database(url: str):
    from rlhfkit.feedback.db import make_engine, make_session_factory, migrate

    engine = make_engine(url)
    migrate(engine)
    return make_session_factory(engine)()


def find_project(session, name: str):
    from sqlalchemy import select

    from rlhfkit.data import DataError
    from rlhfkit.feedback.db import Project

    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        names = ", ".join(session.scalars(select(Project.name))) or "none"
        raise DataError(f"no project called {name!r} (projects: {names})")
    return project


def run_init(args, console) -> None:
    from sqlalchemy import select

    from rlhfkit.feedback.auth import create_user
    from rlhfkit.feedback.db import User, utcnow

    password = args.password or os.environ.get(PASSWORD_ENV) or getpass.getpass(f"Password for {args.admin}: ")
    with open_database(args.db) as session:
        if session.scalar(select(User).where(User.username == args.admin)) is not None:
            console.print(f"label init: database ready; {args.admin!r} already exists")
            return
        create_user(session, args.admin, password, "admin", utcnow())
        session.commit()
    console.print(f"label init: database ready at {args.db}; admin {args.admin!r} created")


def run_import(args, console) -> None:
    from pathlib import Path

    from rlhfkit.feedback.importing import ProjectOptions, import_file

    guidelines = Path(args.guidelines).read_text(encoding="utf-8") if args.guidelines else ""
    options = ProjectOptions(args.task, guidelines, args.overlap, args.gold_rate, args.rationale, args.edit,
                             args.rating_scale, args.shuffle)
    with open_database(args.db) as session:
        project, count = import_file(session, args.file, args.project, options, use_lexicon=not args.no_lexicon)
        console.print(f"label import: {count} items added to {project.name!r} ({project.task_type})")


def run_invite(args, console) -> None:
    from sqlalchemy import select

    from rlhfkit.feedback.auth import create_invitation
    from rlhfkit.feedback.db import User, utcnow

    with open_database(args.db) as session:
        query = select(User).where(User.role == "admin").order_by(User.id)
        if args.by:
            query = query.where(User.username == args.by)
        admin = session.scalar(query)
        if admin is None:
            raise ValueError("no admin account to invite from; run 'rlhfkit label init' first")
        token = create_invitation(session, admin, args.role, utcnow())
        session.commit()
    print(f"{args.base_url.rstrip('/')}/invite/{token}")


def run_member(args, console) -> None:
    from rlhfkit.feedback import membership
    from rlhfkit.feedback.assignment import FeedbackError
    from rlhfkit.feedback.db import utcnow

    with open_database(args.db) as session:
        project = find_project(session, args.project)
        try:
            for name in args.add:
                membership.set_member(session, project, membership.user_by_name(session, name, "--add"), args.role,
                                      None, utcnow())
            for name in args.remove:
                membership.remove_member(session, project, membership.user_by_name(session, name, "--remove"),
                                         utcnow())
        except FeedbackError as error:
            raise ValueError(error.message) from error
        session.commit()
        members = membership.project_members(session, project)
    listed = ", ".join(f"{m['username']} ({m['role']})" for m in members) or "none"
    console.print(f"label member: members of {project.name!r}: {listed}", soft_wrap=True)


def run_account(args, console) -> None:
    from rlhfkit.feedback import account_admin, membership
    from rlhfkit.feedback.assignment import FeedbackError
    from rlhfkit.feedback.db import utcnow

    action, name = next((a, getattr(args, a)) for a in ("disable", "enable", "end_sessions", "reset_link")
                        if getattr(args, a) is not None)
    with open_database(args.db) as session:
        try:
            user = membership.user_by_name(session, name, "--" + action.replace("_", "-"))
            if action == "disable":
                ended = account_admin.disable_account(session, None, user, utcnow())
                message = f"{user.username!r} is disabled; {ended} session(s) ended"
            elif action == "enable":
                account_admin.enable_account(session, user)
                message = f"{user.username!r} is enabled"
            elif action == "end_sessions":
                message = f"{account_admin.end_sessions(session, user)} session(s) of {user.username!r} ended"
            else:
                token = account_admin.create_reset_link(session, None, user, utcnow())
                message = f"{args.base_url.rstrip('/')}/reset/{token}"
        except FeedbackError as error:
            raise ValueError(error.message) from error
        session.commit()
    if action == "reset_link":
        print(message)
    else:
        console.print(f"label account: {message}", soft_wrap=True)


def run_stats(args, console) -> None:
    from rich.table import Table

    from rlhfkit.feedback.db import settings_row
    from rlhfkit.feedback.stats import project_report

    with open_database(args.db) as session:
        report = project_report(session, find_project(session, args.project), settings_row(session))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    progress = report["progress"]
    console.print(f"{report['project']} ({report['task_type']}, overlap {report['overlap']}): "
                  f"{progress['complete_items']}/{progress['items']} items complete, {progress['labels']} labels, "
                  f"{progress['gold_items']} gold items, {progress['skips']} skips")
    table = Table(title="Annotators")
    columns = ("annotator", "labels", "skips", "median_seconds", "too_fast", "gold_answered", "gold_accuracy")
    for column in columns:
        table.add_column(column)
    for row in report["annotators"]:
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)
    agreement = Table(title="Agreement")
    agreement.add_column("statistic")
    agreement.add_column("value")
    for name, value in report["agreement"].items():
        agreement.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(agreement)


def run_export(args, console) -> None:
    from rlhfkit.feedback.export import write_exports

    with open_database(args.db) as session:
        written = write_exports(session, find_project(session, args.project), args.output,
                                aggregate=not args.per_label, exclude=frozenset(args.exclude or ()))
    summary = ", ".join(f"{kind}.jsonl ({count})" for kind, count in written.items())
    console.print(f"label export: wrote {summary} to {args.output}")


def run_serve(args, console) -> None:
    import uvicorn

    from rlhfkit.feedback.web import create_app

    proxies = args.forwarded_allow_ips if args.behind_proxy else None
    app = create_app(args.db, secure_cookies=args.secure_cookies, trusted_proxies=proxies)
    console.print(f"label serve: http://{args.host}:{args.port}/ on {args.db}"
                  + (f" (behind a proxy at {proxies})" if proxies else ""))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", proxy_headers=False)  # the app does it


def run_semi_ai(args, console) -> None:
    from pathlib import Path

    from rlhfkit.feedback import semi_ai

    if args.semi_ai_command == "send":
        from rlhfkit.config import JudgeConfig
        from rlhfkit.feedback.importing import ProjectOptions

        semi_ai.check_fractions(args.human_share, args.random_fraction)
        judge = JudgeConfig(judge=args.judge, data=args.data, output=str(Path(args.output) / semi_ai.JUDGE_FILE),
                            swap=args.swap, constitution=args.constitution, principles=args.principles,
                            judge_model=args.judge_model, device=args.device, dtype=args.dtype,
                            batch_size=args.batch_size, seed=args.seed)
        guidelines = Path(args.guidelines).read_text(encoding="utf-8") if args.guidelines else ""
        with open_database(args.db) as session:
            summary = semi_ai.send_for_review(
                session, judge, args.data, args.output, args.project, human_share=args.human_share,
                random_fraction=args.random_fraction, seed=args.seed,
                options=ProjectOptions(guidelines=guidelines, overlap=args.overlap), use_lexicon=not args.no_lexicon)
        console.print(f"label semi-ai send: judged {summary.items} items into {args.output}; {summary.added} added "
                      f"to {summary.project!r} ({summary.task_type}), {summary.sent} sent in all "
                      f"(share: {summary.target})")
        return
    with open_database(args.db) as session:
        if args.semi_ai_command == "progress":
            progress = semi_ai.review_progress(session, args.project, args.output)
            console.print(f"label semi-ai progress: {progress.labelled} of {progress.sent} sent items labelled, "
                          f"{progress.waiting} waiting")
        else:
            semi_ai.print_agreement(semi_ai.merge_reviews(session, args.project, args.output), console)
            console.print(f"label semi-ai merge: wrote {semi_ai.MERGED_FILE} and {semi_ai.AGREEMENT_FILE} "
                          f"to {args.output}")


def run_label(args: argparse.Namespace) -> None:
    """Run one ``rlhfkit label`` action; option and account errors are printed, exit status 2."""
    from rlhfkit.console import console
    from rlhfkit.data import DataError

    runners = {"init": run_init, "import": run_import, "invite": run_invite, "member": run_member,
               "account": run_account, "serve": run_serve, "stats": run_stats, "export": run_export,
               "semi-ai": run_semi_ai}
    try:
        runners[args.label_command](args, console)
    except DataError:
        raise
    except ValueError as error:  # AuthError and option errors
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        sys.exit(2)
