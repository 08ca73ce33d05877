"""Load: 20 annotators at once over real HTTP, on SQLite and on a real PostgreSQL server (rule 16).

600 items with overlap 2 and 30% of the tasks skipped must end with exactly 1,200 label rows: none
lost, none duplicated, no item over its overlap, none left short while annotators are told "no more
items", nobody on an item twice, and the items' counters and the dashboard equal to the rows. Then
the same with the server killed (SIGKILL) three times mid-load: every acknowledged label is there,
and the work still ends exact. See load_helpers.py for the server process and the annotators.
"""

from __future__ import annotations

import time

import pytest
from load_helpers import (
    LoadLog,
    ServerProcess,
    check_exact,
    dashboard_progress,
    database_state,
    run_annotators,
    seed,
)

ANNOTATORS = 20
ITEMS = 600
OVERLAP = 2
SKIP_RATE = 0.3


@pytest.mark.slow
def test_20_concurrent_annotators_with_skips_end_with_exactly_the_expected_labels(any_db_app, any_db_url):
    seed(any_db_app, ANNOTATORS, ITEMS, OVERLAP)
    server = ServerProcess(any_db_url)
    server.start()
    log = LoadLog()
    try:
        start = time.perf_counter()
        for thread in run_annotators(server.port, ANNOTATORS, SKIP_RATE, log):
            thread.join(timeout=600)
        seconds = time.perf_counter() - start
        server_cpu_seconds = server.cpu_seconds()
        progress = dashboard_progress(server.port)
    finally:
        server.stop()

    assert not log.errors, log.errors[:5]
    state = database_state(any_db_url)
    check_exact(state, ITEMS, OVERLAP)
    assert sorted(log.label_ids) == sorted(label_id for label_id, *_ in state["labels"])
    assert sum(log.per_annotator.values()) == ITEMS * OVERLAP and len(log.per_annotator) == ANNOTATORS
    assert state["statuses"]["skipped"] == log.skips > 0.2 * ITEMS * OVERLAP
    assert progress == {"items": ITEMS, "complete_items": ITEMS, "gold_items": 0, "labels": ITEMS * OVERLAP,
                        "labels_needed": ITEMS * OVERLAP, "skips": log.skips, "percent_complete": 100.0,
                        "rejected_labels": 0}
    requests = 2 * (len(log.label_ids) + log.skips) + log.waits + ANNOTATORS
    print(f"load ({any_db_url.split(':', 1)[0]}): {ANNOTATORS} annotators, {len(log.label_ids)} labels and "
          f"{log.skips} skips ({log.waits} waits for items others held) in {seconds:.1f} s "
          f"({requests / seconds:.0f} requests/s); per annotator "
          f"{min(log.per_annotator.values())}..{max(log.per_annotator.values())} labels; server CPU "
          f"{server_cpu_seconds:.1f} s ({1000 * server_cpu_seconds / requests:.1f} ms per request)")


KILL_ITEMS = 150
KILLS = 3


@pytest.mark.slow
def test_a_server_killed_mid_load_loses_no_acknowledged_label(any_db_app, any_db_url):
    seed(any_db_app, ANNOTATORS, KILL_ITEMS, OVERLAP)
    server = ServerProcess(any_db_url)
    server.start()
    log = LoadLog()
    try:
        threads = run_annotators(server.port, ANNOTATORS, SKIP_RATE, log, reconnect=True)
        for kill in range(1, KILLS + 1):
            while len(log.label_ids) < kill * KILL_ITEMS * OVERLAP // (KILLS + 1) and not log.errors:
                time.sleep(0.01)
            server.kill()
            acknowledged = list(log.label_ids)
            present = {label_id for label_id, *_ in database_state(any_db_url)["labels"]}
            assert set(acknowledged) <= present, f"kill {kill}: acknowledged labels lost"
            server.start()
        for thread in threads:
            thread.join(timeout=600)
    finally:
        server.stop()

    assert not log.errors, log.errors[:5]
    state = database_state(any_db_url)
    assert set(log.label_ids) <= {label_id for label_id, *_ in state["labels"]}
    check_exact(state, KILL_ITEMS, OVERLAP)  # resent requests neither lost nor doubled anything
    print(f"kill -9 ({any_db_url.split(':', 1)[0]}): {KILLS} kills, {len(log.label_ids)} labels acknowledged, "
          f"{log.echoes} resent requests answered 409 (their first try had been committed)")
