"""The tokens file (``PATCHAUDIT_TOKENS_FILE``, one ``name: token`` per line) and who a token
names (issue 20): parse errors name the line and never the token, the single API token stays
one member, a token-less server is one local member, tokens never show in the settings'
repr or the worker environment's logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchaudit.api.deps import check_token, member_of, require_owner
from patchaudit.api.errors import ApiError
from patchaudit.settings import LOCAL_MEMBER, Settings, read_tokens_file, settings_from_cli

ALICE = "alice-unit-token-0123456789abcd"
BOB = "bob-unit-token-0123456789abcdefg"


def write(tmp: Path, text: str) -> Path:
    p = tmp / "members.txt"
    p.write_text(text)
    return p


def test_tokens_file_members(tmp_path: Path) -> None:
    path = write(tmp_path, f"# team\n\nalice: {ALICE}\n  bob :{BOB}  \n")
    assert read_tokens_file(path) == {"alice": ALICE, "bob": BOB}
    s = Settings(tokens_file=path, api_token="o" * 20, redis_url="redis://x")
    assert s.members == {"operator": "o" * 20, "alice": ALICE, "bob": BOB}
    assert s.auth_required and s.token == "o" * 20
    for shown in (repr(s), str(s), str(s.model_dump(exclude={"api_token"}))):
        assert ALICE not in shown and BOB not in shown
    # a tokens file alone is enough to bind beyond loopback
    assert Settings(tokens_file=path, host="0.0.0.0").auth_required
    assert not Settings().auth_required and Settings().members == {}


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("alice\n", "line 1: expected 'name: token'"),
        (f"alice: {ALICE}\nalice: {BOB}\n", "line 2: this name appears twice"),
        ("alice: short\n", "shorter than 16"),
        (f"alice: {ALICE}\nbob: {ALICE}\n", "same as another member's"),
        (f"al ice: {ALICE}\n", "a name is letters"),
        (f"{ALICE}: alice\n", "line 1: the token is shorter"),  # swapped: the token not echoed
        (f"local: {ALICE}\n", "not 'local'"),
        (f"bob: {BOB} {BOB}\n", "holds spaces"),
    ],
)
def test_tokens_file_errors_name_the_line_never_the_token(
    tmp_path: Path, text: str, said: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match="tokens file") as e:
        settings_from_cli(tokens_file=path)
    assert said in str(e.value)
    assert ALICE not in str(e.value) and BOB not in str(e.value)


def test_missing_file_and_clashes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the tokens file"):
        settings_from_cli(tokens_file=tmp_path / "absent")
    path = write(tmp_path, f"operator: {ALICE}\n")
    with pytest.raises(ValueError, match="also a member"):
        settings_from_cli(tokens_file=path, api_token=BOB)
    path = write(tmp_path, f"alice: {ALICE}\n")
    with pytest.raises(ValueError, match="also a member's token"):
        settings_from_cli(tokens_file=path, api_token=ALICE)


def test_who_a_token_names(tmp_path: Path) -> None:
    s = Settings(tokens_file=write(tmp_path, f"alice: {ALICE}\nbob: {BOB}\n"))
    assert member_of(s, ALICE) == "alice" and member_of(s, BOB) == "bob"
    assert member_of(s, ALICE[:-1]) is None and member_of(s, ALICE + "x") is None
    assert member_of(s, None) is None and member_of(s, "") is None
    assert check_token(s, BOB) == "bob"
    for bad in (None, "nope", ALICE.upper()):
        with pytest.raises(ApiError) as e:
            check_token(s, bad)
        assert e.value.status_code == 401
    # a token-less server: every caller is the one local member, whatever they send
    open_ = Settings()
    assert check_token(open_, None) == check_token(open_, "made-up") == LOCAL_MEMBER


def test_only_the_owner(tmp_path: Path) -> None:
    s = Settings(tokens_file=write(tmp_path, f"alice: {ALICE}\nbob: {BOB}\n"))
    require_owner(s, "alice", "alice", "cancel")
    require_owner(s, None, "bob", "cancel")  # made before members: any member
    require_owner(s, LOCAL_MEMBER, "bob", "delete")
    with pytest.raises(ApiError) as e:
        require_owner(s, "alice", "bob", "delete")
    assert e.value.status_code == 403 and "alice" in str(e.value.detail)
    require_owner(Settings(), "alice", LOCAL_MEMBER, "cancel")  # token-less: anyone
