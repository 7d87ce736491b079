"""Members, owners, notes and retention (issue 20) against a REAL valkey and REAL workers:
two members from a tokens file each see their own and the team's analyses, admission counts
them apart, only the owner cancels or deletes, a label written by one is seen by the other;
on a token-less server made-up tokens are one admission client; retention prunes the oldest."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Stack, token_request, wait_status
from tests.waits import wait_for

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-fedcba9876543210xyz"
A = {"X-API-Token": ALICE}
B = {"Authorization": f"Bearer {BOB}"}


def tokens_file(tmp: Path) -> Path:
    p = tmp / "members.txt"
    p.write_text(f"# the team\nalice: {ALICE}\n\nbob:{BOB}\n")
    p.chmod(0o600)
    return p


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Any]]:
    """One valkey + one worker; an API whose members are alice and bob."""
    tmp = tmp_path_factory.mktemp("team")
    s = Stack(tmp)
    try:
        s.start(n_workers=1)
        client = s.make_client(tokens_file=tokens_file(tmp))
        yield s, client
        client.close()
    finally:
        s.stop()


@pytest.fixture()
def idle(tmp_path: Path) -> Iterator[Stack]:
    """A valkey and no worker: what is submitted stays queued (admission and cancel tests)."""
    s = Stack(tmp_path)
    try:
        s.start(n_workers=0)
        yield s
    finally:
        s.stop()


def submit(client: Any, headers: dict[str, str], stack: Stack, seed: int, **over: Any) -> Any:
    return client.post(
        "/api/analyses", json=token_request(stack.tiny, seed=seed, **over), headers=headers
    )


def listed(client: Any, headers: dict[str, str], scope: str) -> dict[str, Any]:
    r = client.get(f"/api/analyses?scope={scope}&per_page=200", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_each_member_sees_their_own_and_the_teams(team: tuple[Stack, Any]) -> None:
    stack, client = team
    ra, rb = submit(client, A, stack, 101), submit(client, B, stack, 102)
    assert ra.status_code == rb.status_code == 202, (ra.text, rb.text)
    a, b = ra.json()["id"], rb.json()["id"]
    assert client.get(f"/api/analyses/{a}").json()["owner"] == "alice"
    assert client.get(f"/api/analyses/{b}").json()["owner"] == "bob"

    mine_a, mine_b = listed(client, A, "mine"), listed(client, B, "mine")
    assert mine_a["member"] == "alice" and mine_b["member"] == "bob"
    ids_a = {i["id"] for i in mine_a["items"]}
    ids_b = {i["id"] for i in mine_b["items"]}
    assert a in ids_a and b not in ids_a and mine_a["total"] == len(ids_a)
    assert b in ids_b and a not in ids_b
    assert all(i["owner"] == "alice" for i in mine_a["items"])
    for h in (A, B):
        everyone = {i["id"]: i["owner"] for i in listed(client, h, "team")["items"]}
        assert everyone[a] == "alice" and everyone[b] == "bob"
    # listing needs a member's token; a wrong one is refused
    assert client.get("/api/analyses").status_code == 401
    assert client.get("/api/analyses", headers={"X-API-Token": "x" * 30}).status_code == 401
    assert client.get("/api/whoami", headers=B).json()["member"] == "bob"
    # the same request from bob is alice's analysis (results are shared), still hers
    again = submit(client, B, stack, 101)
    assert again.json() == {**again.json(), "id": a, "existing": True}
    assert a not in {i["id"] for i in listed(client, B, "mine")["items"]}


def test_a_label_written_by_one_member_is_seen_by_the_other(team: tuple[Stack, Any]) -> None:
    stack, client = team
    aid = submit(client, A, stack, 103).json()["id"]
    wait_status(client, aid, ("done",))
    url = f"/api/analyses/{aid}/notes"
    put = client.put(
        f"{url}/1.2", json={"label": " name mover ", "text": "copies names"}, headers=A
    )
    assert put.status_code == 200, put.text
    note = put.json()
    assert note["label"] == "name mover" and note["author"] == "alice" and note["key"] == "1.2"
    # bob reads it with the analysis and on its own route (reading by link needs no token)
    seen = client.get(f"/api/analyses/{aid}").json()["notes"]["1.2"]
    assert seen["label"] == "name mover" and seen["text"] == "copies names"
    assert client.get(url).json()["notes"]["1.2"]["author"] == "alice"
    # only its author changes or deletes it; anyone adds a note where there is none
    no = client.put(f"{url}/1.2", json={"label": "mine now"}, headers=B)
    assert no.status_code == 403 and "alice" in no.json()["message"]
    assert client.delete(f"{url}/1.2", headers=B).status_code == 403
    assert client.put(f"{url}/0.0", json={"label": "prev token"}, headers=B).status_code == 200
    edited = client.put(f"{url}/1.2", json={"label": "name mover", "text": "v2"}, headers=A)
    assert edited.json()["created_at"] == note["created_at"] < edited.json()["updated_at"]
    notes = client.get(url).json()["notes"]
    assert notes["1.2"]["text"] == "v2" and notes["0.0"]["author"] == "bob"
    assert client.delete(f"{url}/0.0", headers=B).status_code == 204
    assert "0.0" not in client.get(url).json()["notes"]
    assert client.delete(f"{url}/0.0", headers=B).status_code == 404
    # bad input: 4xx with a message, nothing stored
    bad = [
        ("1.2", {"label": "x" * 41}, 422),
        ("1.2", {"label": "   "}, 422),
        ("1.2", {"label": "two\nlines"}, 422),
        ("1.2", {"label": "ok", "text": "t" * 2001}, 422),
        ("1.2", {"label": "ok", "colour": "red"}, 422),
        ("1.2", {"label": 5}, 422),
        ("head", {"label": "ok"}, 422),
        ("99.0", {"label": "ok"}, 404),
    ]
    for key, body, status in bad:
        r = client.put(f"{url}/{key}", json=body, headers=A)
        assert r.status_code == status, (key, body, r.text)
        assert r.json()["message"]
    assert client.put(f"{url}/1.2", json={"label": "x"}).status_code == 401
    assert client.get(url).json()["notes"]["1.2"]["text"] == "v2"


def test_only_the_owner_cancels_or_deletes(idle: Stack, tmp_path: Path) -> None:
    client = idle.make_client(tokens_file=tokens_file(tmp_path))
    aid = submit(client, A, idle, 201).json()["id"]
    r = client.post(f"/api/analyses/{aid}/cancel", headers=B)
    assert r.status_code == 403 and "alice" in r.json()["message"]
    assert client.get(f"/api/analyses/{aid}").json()["status"] == "queued"
    assert client.delete(f"/api/analyses/{aid}", headers=B).status_code == 403
    # the owner: a queued analysis is cancelled first, then deleted
    gone = client.delete(f"/api/analyses/{aid}", headers=A)
    assert gone.status_code == 409 and "cancel" in gone.json()["message"]
    assert client.post(f"/api/analyses/{aid}/cancel", headers=A).json()["status"] == "cancelled"
    assert client.delete(f"/api/analyses/{aid}", headers=A).status_code == 204
    assert client.get(f"/api/analyses/{aid}").status_code == 404
    assert aid not in {i["id"] for i in listed(client, A, "team")["items"]}
    assert aid not in {i["id"] for i in listed(client, A, "mine")["items"]}
    # the same request again is a new analysis (its dedup pointer went with it)
    again = submit(client, A, idle, 201).json()
    assert again["id"] != aid and again["existing"] is False
    client.close()


def test_admission_counts_members_apart(idle: Stack, tmp_path: Path) -> None:
    client = idle.make_client(tokens_file=tokens_file(tmp_path), max_client_jobs=2)
    assert [submit(client, A, idle, s).status_code for s in (301, 302)] == [202, 202]
    full = submit(client, A, idle, 303)
    assert full.status_code == 429 and full.headers.get("Retry-After")
    assert [submit(client, B, idle, s).status_code for s in (304, 305)] == [202, 202]
    assert submit(client, B, idle, 306).status_code == 429
    client.close()


def test_tokenless_made_up_tokens_are_one_client(idle: Stack) -> None:
    client = idle.make_client(max_client_jobs=2)
    codes = [
        submit(client, {"X-API-Token": f"made-up-{s}-xxxxxxxxxxxxxxxx"}, idle, s).status_code
        for s in (401, 402, 403)
    ]
    assert codes == [202, 202, 429]
    assert submit(client, {}, idle, 404).status_code == 429  # no token: the same client
    # everything is the one local member's, who may cancel and delete it
    items = listed(client, {}, "mine")["items"]
    assert len(items) == 2 and {i["owner"] for i in items} == {"local"}
    assert client.get("/api/config").json()["auth_required"] is False
    client.close()


def test_retention_prunes_the_oldest_never_a_running_one(idle: Stack) -> None:
    import redis

    from patchaudit.store import ActivationCache, AnalysisStore, JobStatus
    from patchaudit.store.retention import prune

    conn = redis.Redis.from_url(idle.redis.url)
    store = AnalysisStore(conn)
    cache = ActivationCache(conn, idle.data_dir / "cache", 10**9)
    ids = []
    for s in range(5):
        aid, _ = store.create_or_get({"retention": s}, owner="alice")
        store.set_result(aid, {"cost": {}}, cache_key=None)
        ids.append(aid)
        time.sleep(0.01)
    store.set_status(ids[0], JobStatus.RUNNING)  # the oldest is still running
    cache_file = cache.path("ab" * 32)
    cache_file.write_bytes(b"x" * 10)
    conn.hset(f"pa:analysis:{ids[1]}", "cache_key", "ab" * 32)
    conn.hset("pa:cache:sizes", "ab" * 32, 10)
    store.set_note(ids[1], "0.0", {"label": "gone with it"})
    assert prune(store, cache, max_age_days=None, max_analyses=None) == []
    assert prune(store, cache, max_age_days=None, max_analyses=3) == ids[1:3]
    assert store.count() == 3 and store.get(ids[0]) is not None
    assert store.get(ids[1]) is None and not conn.exists(f"pa:notes:{ids[1]}")
    assert not cache_file.exists() and conn.hget("pa:cache:sizes", "ab" * 32) is None
    newest_first = [r["id"] for r in store.list_summaries(0, 10, owner="alice")]
    assert newest_first == [ids[4], ids[3], ids[0]]
    # by age: everything older than a day, as seen two days on; the running one stays
    later = time.time() + 2 * 86400
    assert prune(store, cache, max_age_days=1, max_analyses=None, now=later) == ids[3:]
    assert store.count() == 1 and store.count("alice") == 1
    conn.close()


def test_workers_prune_by_the_retention_setting(tmp_path: Path) -> None:
    s = Stack(tmp_path, PATCHAUDIT_RETENTION_MAX_ANALYSES="2")
    try:
        s.start(n_workers=1)
        ids = []
        for seed in (501, 502, 503):
            r = s.client.post("/api/analyses", json=token_request(s.tiny, seed=seed))
            ids.append(r.json()["id"])
            wait_status(s.client, ids[-1], ("done",))

        def pruned() -> bool:
            return s.client.get(f"/api/analyses/{ids[0]}").status_code == 404

        wait_for(pruned, 40, "the oldest analysis to be pruned", interval=0.5)
        assert [s.client.get(f"/api/analyses/{i}").status_code for i in ids[1:]] == [200, 200]
    finally:
        s.stop()


def test_serve_refuses_a_bad_tokens_file_naming_the_line_not_the_token(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.integration.conftest import BACKEND, ROOT

    bad = tmp_path / "members.txt"
    bad.write_text(f"alice: {ALICE}\nbob {BOB}\n")
    r = subprocess.run(
        [sys.executable, "-m", "patchaudit", "serve", "--tokens-file", str(bad)]
        + ["--data-dir", str(tmp_path / "data"), "--port", "0"],
        cwd=ROOT,
        env={"PYTHONPATH": str(BACKEND), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "line 2: expected 'name: token'" in r.stderr
    assert ALICE not in r.stderr + r.stdout and BOB not in r.stderr + r.stdout
