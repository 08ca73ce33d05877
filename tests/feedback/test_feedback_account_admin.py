"""Account management and the login's edges (issue 21, "missing for teams"): disabled accounts, ending
sessions, one-use password-reset links, the Secure cookie behind TLS, and the Origin check on login."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient
from feedback_helpers import PASSWORD, LiveServer, add_user, api_client, upload_project
from sqlalchemy import select

from rlhfkit.feedback import account_admin, auth
from rlhfkit.feedback.db import Item, LoginSession, PasswordReset, User

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def admin(app):
    add_user(app, "admin", "admin")
    return api_client(app, "admin")


def log_in(client, username: str, password: str = PASSWORD, **headers):
    return client.post("/api/login", json={"username": username, "password": password}, headers=headers)


def user_id(app, username: str) -> int:
    with app.state.sessions() as session:
        return session.scalar(select(User.id).where(User.username == username))


def live_sessions(app, username: str) -> int:
    with app.state.sessions() as session:
        return len(session.scalars(select(LoginSession).where(LoginSession.user_id == user_id(app, username))).all())


# ---------------------------------------------------------------- disable, enable, end sessions


def test_a_disabled_account_cannot_log_in_and_its_sessions_stop_at_once(app, admin, clock):
    ann_id = add_user(app, "ann")
    upload_project(admin, "p", [{"prompt": "Hi?", "responses": ["Hello.", "Go away."]}], members=["ann"])
    ann = api_client(app, "ann")
    task = ann.post("/api/projects/1/next").json()["task"]
    assert task is not None
    disabled = admin.post(f"/api/admin/users/{ann_id}/disable")
    assert disabled.status_code == 200 and "1 session(s) ended" in disabled.json()["message"]
    assert ann.post("/api/projects/1/next").status_code == 401  # the very next request
    assert ann.get("/", follow_redirects=False).status_code == 303
    refused = log_in(TestClient(app), "ann")
    assert refused.status_code == 401 and "disabled" in refused.json()["detail"]
    wrong = log_in(TestClient(app), "ann", "not the password")
    assert wrong.status_code == 401 and "disabled" not in wrong.json()["detail"]  # said only to the owner
    page = TestClient(app).post("/login", data={"username": "ann", "password": PASSWORD})
    assert page.status_code == 401 and "disabled" in page.text
    with app.state.sessions() as session:
        assert session.get(Item, 1).claimed_count == 0  # the open item went back to the pool
        token, _ = auth.start_session(session, session.get(User, ann_id), clock())  # a login racing the disable
        session.commit()
    assert TestClient(app, cookies={"rlhfkit_session": token}).get("/api/session").status_code == 401
    rows = {row["username"]: row for row in admin.get("/api/admin/users").json()["accounts"]}
    assert rows["ann"]["disabled"] is True and rows["admin"]["disabled"] is False

    own = admin.post(f"/api/admin/users/{user_id(app, 'admin')}/disable")
    assert own.status_code == 409 and own.json()["error"] == "own_account"
    assert admin.post(f"/api/admin/users/{ann_id}/enable").status_code == 200
    assert log_in(TestClient(app), "ann").status_code == 200
    assert admin.post(f"/api/admin/users/{ann_id}/explode").status_code == 404
    assert admin.post("/api/admin/users/99999999999/disable").status_code == 404
    assert api_client(app, "ann").post(f"/api/admin/users/{ann_id}/enable").status_code == 403


def test_an_admin_ends_every_session_of_a_user_and_the_forms_do_it_too(app, admin):
    ann_id = add_user(app, "ann")
    browsers = [api_client(app, "ann"), api_client(app, "ann")]
    assert live_sessions(app, "ann") == 2
    ended = admin.post(f"/api/admin/users/{ann_id}/end-sessions").json()
    assert ended["message"] == "2 session(s) of 'ann' ended."
    assert all(browser.get("/api/session").status_code == 401 for browser in browsers)
    assert api_client(app, "ann").get("/api/session").status_code == 200  # may log in again

    csrf = admin.headers["X-CSRF-Token"]
    page = admin.post(f"/admin/users/{ann_id}/end-sessions", data={"csrf_token": csrf})
    assert page.status_code == 200 and "1 session(s) of &#39;ann&#39; ended" in page.text
    assert admin.post(f"/admin/users/{ann_id}/disable", data={}).status_code == 403  # no CSRF token
    own = admin.post(f"/admin/users/{user_id(app, 'admin')}/disable", data={"csrf_token": csrf})
    assert own.status_code == 409 and "your own account" in own.text
    assert admin.post(f"/admin/users/{ann_id}/disable", data={"csrf_token": csrf}).status_code == 200
    assert "disabled" in admin.get("/admin").text
    assert admin.get("/api/session").status_code == 200  # the admin's own session is untouched


# ---------------------------------------------------------------- password-reset links


def reset_path(admin, user: int) -> str:
    url = admin.post(f"/api/admin/users/{user}/reset-link").json()["url"]
    assert url.startswith("http://testserver/reset/")
    return "/" + url.split("/", 3)[3]


def test_a_reset_link_is_random_stored_hashed_used_once_and_applies_the_password_rules(app, admin):
    ann_id = add_user(app, "ann")
    old_session = api_client(app, "ann")
    path = reset_path(admin, ann_id)
    token = path.rsplit("/", 1)[1]
    with app.state.sessions() as session:
        [stored] = session.scalars(select(PasswordReset.token_hash)).all()
    assert len(token) >= 40 and token not in stored and stored == auth.token_hash(token)
    visitor = TestClient(app)
    page = visitor.get(path)
    assert page.status_code == 200 and 'id="reset-username">ann<' in page.text
    for weak, problem in (("short", "at least 8"), ("ann", "at least 8"), ("Password1", "common"),
                          ("aaaaaaaaaaa", "different characters")):
        response = visitor.post(path, data={"password": weak})
        assert response.status_code == 422 and "password:" in response.text and problem in response.text, weak
    done = visitor.post(path, data={"password": NEW_PASSWORD})
    assert done.status_code == 200 and "Password changed" in done.text
    assert old_session.get("/api/session").status_code == 401  # a reset ends the sessions
    assert log_in(TestClient(app), "ann").status_code == 401
    assert log_in(TestClient(app), "ann", NEW_PASSWORD).status_code == 200
    again = TestClient(app).post(path, data={"password": "another good passphrase"})
    assert again.status_code == 404 and "not valid" in again.text
    assert TestClient(app).get(path).status_code == 404
    assert TestClient(app).get("/reset/made-up-token").status_code == 404


def test_a_reset_link_expires_and_a_newer_one_replaces_it(app, admin, clock):
    ann_id = add_user(app, "ann")
    old = reset_path(admin, ann_id)
    new = reset_path(admin, ann_id)
    assert TestClient(app).get(old).status_code == 404 and TestClient(app).get(new).status_code == 200
    clock.advance(hours=account_admin.RESET_HOURS, seconds=1)
    assert TestClient(app).post(new, data={"password": NEW_PASSWORD}).status_code == 404
    page = admin.post(f"/admin/users/{ann_id}/reset-link", data={"csrf_token": admin.headers["X-CSRF-Token"]})
    assert page.status_code == 200 and 'id="reset-url">http://testserver/reset/' in page.text


def test_a_reset_link_used_twice_at_the_same_moment_works_once(any_db_app):
    """The first use is being saved when the second arrives: the second finds the link used up (on
    PostgreSQL it read the link as unused, and the conditional UPDATE stops it)."""
    ann_id = add_user(any_db_app, "ann")
    now = any_db_app.state.clock()
    with any_db_app.state.sessions() as session:
        token = account_admin.create_reset_link(session, None, session.get(User, ann_id), now)
        session.commit()
    outcome: dict = {}

    def second_use() -> None:
        with any_db_app.state.sessions() as session:
            try:
                account_admin.use_reset(session, token, "second-hash", now)
                session.commit()
                outcome["result"] = "used"
            except auth.AuthError as error:
                session.rollback()
                outcome["error"] = str(error)

    with any_db_app.state.sessions() as first:
        account_admin.use_reset(first, token, "first-hash", now)
        thread = threading.Thread(target=second_use)
        thread.start()
        time.sleep(0.3)  # the second use runs into the first (SQLite: the locked database)
        first.commit()
    thread.join(timeout=30)
    assert "not valid" in outcome["error"]
    with any_db_app.state.sessions() as session:
        assert session.get(User, ann_id).password_hash == "first-hash"


def test_the_cli_disables_enables_ends_sessions_and_prints_reset_links(tmp_path, capsys):
    from rlhfkit.cli import main
    from rlhfkit.feedback.web import create_app

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    main(["label", "init", "--db", db, "--admin", "boss", "--password", "long password"])
    app = create_app(db)
    try:
        api_client(app, "boss", "long password")
        main(["label", "account", "--db", db, "--end-sessions", "BOSS"])
        assert "1 session(s) of 'boss' ended" in capsys.readouterr().err
        main(["label", "account", "--db", db, "--reset-link", "boss", "--base-url", "https://labels.example/"])
        link = capsys.readouterr().out.strip()
        assert link.startswith("https://labels.example/reset/")
        assert TestClient(app).get("/reset/" + link.rsplit("/", 1)[1]).status_code == 200
        main(["label", "account", "--db", db, "--disable", "boss"])
        assert log_in(TestClient(app), "boss", "long password").status_code == 401
        main(["label", "account", "--db", db, "--enable", "boss"])
        assert log_in(TestClient(app), "boss", "long password").status_code == 200
        with pytest.raises(SystemExit) as exit_info:
            main(["label", "account", "--db", db, "--disable", "ghost"])
        assert exit_info.value.code == 2 and "field '--disable'" in capsys.readouterr().err
    finally:
        app.state.engine.dispose()


# ---------------------------------------------------------------- Secure cookies


def cookie_of(response) -> str:
    return response.headers["set-cookie"].lower()


def make_app(db_url, clock, **options):
    from rlhfkit.feedback.web import create_app

    return create_app(db_url, clock=clock, **options)


def test_the_session_cookie_is_secure_over_https_by_default_and_as_told(db_url, clock):
    automatic = make_app(db_url, clock)
    add_user(automatic, "ann")
    assert "secure" not in cookie_of(log_in(TestClient(automatic), "ann"))  # plain HTTP (a laptop)
    assert "secure" in cookie_of(log_in(TestClient(automatic, base_url="https://labels.example"), "ann"))
    proxied = log_in(TestClient(automatic), "ann", **{"X-Forwarded-Proto": "https"})
    assert "secure" not in cookie_of(proxied)  # no proxy is trusted unless the operator says so
    forms = TestClient(automatic, base_url="https://labels.example")
    form = forms.post("/login", data={"username": "ann", "password": PASSWORD}, follow_redirects=False)
    assert form.status_code == 303 and "secure" in cookie_of(form) and "httponly" in cookie_of(form)

    always, never = make_app(db_url, clock, secure_cookies=True), make_app(db_url, clock, secure_cookies=False)
    assert "secure" in cookie_of(log_in(TestClient(always), "ann"))
    assert "secure" not in cookie_of(log_in(TestClient(never, base_url="https://labels.example"), "ann"))

    behind = make_app(db_url, clock, trusted_proxies="testclient")  # TestClient's own address
    assert "secure" in cookie_of(log_in(TestClient(behind), "ann", **{"X-Forwarded-Proto": "https"}))
    assert "secure" not in cookie_of(log_in(TestClient(behind), "ann", **{"X-Forwarded-Proto": "http"}))
    elsewhere = TestClient(behind, client=("203.0.113.5", 4000))  # not the proxy: its header is ignored
    assert "secure" not in cookie_of(log_in(elsewhere, "ann", **{"X-Forwarded-Proto": "https"}))
    for application in (automatic, always, never, behind):
        application.state.engine.dispose()


def test_serve_passes_the_cookie_and_proxy_switches_on(db_url, monkeypatch):
    import uvicorn

    from rlhfkit.cli import main

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append((app, options)))
    main(["label", "serve", "--db", db_url])
    main(["label", "serve", "--db", db_url, "--secure-cookies"])
    main(["label", "serve", "--db", db_url, "--no-secure-cookies", "--behind-proxy", "--forwarded-allow-ips",
          "testclient,10.0.0.0/8"])
    assert [app.state.secure_cookies for app, _ in served] == [None, True, False]
    assert all(options["proxy_headers"] is False for _, options in served)  # the app decides, not uvicorn
    add_user(served[0][0], "ann")
    plain, proxied = served[0][0], served[2][0]
    for attempt in range(30):  # behind the proxy, the throttle counts the client the proxy names
        log_in(TestClient(proxied), f"guess{attempt}", "wrong", **{"X-Forwarded-For": "198.51.100.7"})
    assert log_in(TestClient(proxied), "ann", **{"X-Forwarded-For": "198.51.100.7"}).status_code == 429
    assert log_in(TestClient(proxied), "ann", **{"X-Forwarded-For": "198.51.100.8"}).status_code == 200
    assert "secure" in cookie_of(log_in(TestClient(served[1][0]), "ann"))
    for attempt in range(30):  # not behind a proxy: the header is the client's word, and ignored
        log_in(TestClient(plain), f"guess{attempt}", "wrong", **{"X-Forwarded-For": "198.51.100.7"})
    assert log_in(TestClient(plain), "ann", **{"X-Forwarded-For": "198.51.100.8"}).status_code == 429
    for app, _ in served:
        app.state.engine.dispose()


# ---------------------------------------------------------------- the Origin of logins


def test_a_login_from_another_site_is_refused(app):
    add_user(app, "ann")
    client = TestClient(app)
    for origin in ("https://evil.example", "null", "http://testserver.evil.example", "http://testserver:8080",
                   "javascript:alert(1)", "http://[::1"):
        form = client.post("/login", data={"username": "ann", "password": PASSWORD}, headers={"Origin": origin},
                           follow_redirects=False)
        assert form.status_code == 403 and "another site" in form.text and "set-cookie" not in form.headers, origin
        api = log_in(client, "ann", Origin=origin)
        assert api.status_code == 403 and api.json()["error"] == "forbidden", origin
    assert live_sessions(app, "ann") == 0
    assert log_in(client, "ann", Origin="http://testserver").status_code == 200
    assert log_in(client, "ann", Origin="HTTP://TestServer:80").status_code == 200
    assert log_in(client, "ann").status_code == 200  # no Origin header (not a browser): allowed
    secure = TestClient(app, base_url="https://labels.example")
    assert log_in(secure, "ann", Origin="https://labels.example").status_code == 200
    assert log_in(secure, "ann", Origin="https://labels.example:8443").status_code == 403  # another port
    for path in ("/invite/some-token", "/reset/some-token"):
        refused = client.post(path, data={"username": "x", "password": NEW_PASSWORD},
                              headers={"Origin": "https://evil.example"})
        assert refused.status_code == 403, path


def test_a_browser_login_posted_from_another_site_is_refused_and_from_this_one_works(app, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    add_user(app, "ann")
    with LiveServer(app) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox",
                                                                             "--disable-gpu"])
        try:
            page = browser.new_page()
            attack = (f'<form method="post" action="{server.url}/login"><input name="username" value="ann">'
                      f'<input name="password" value="{PASSWORD}"><button id="go">go</button></form>')
            page.route("http://evil.example/", lambda route: route.fulfill(content_type="text/html", body=attack))
            page.goto("http://evil.example/")
            with page.expect_response(f"{server.url}/login") as answer:
                page.click("#go")
            assert answer.value.status == 403
            assert live_sessions(app, "ann") == 0
            page.goto(server.url + "/login")
            page.fill("input[name=username]", "ann")
            page.fill("input[name=password]", PASSWORD)
            page.click("#login-button")
            page.wait_for_url(server.url + "/")
            assert live_sessions(app, "ann") == 1
        finally:
            browser.close()
