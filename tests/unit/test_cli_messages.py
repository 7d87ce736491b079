"""Issue 20, the new user's list, CLI items: pairs are numbered from 1 (as on the page), a
missing model directory is named as such (not "Repo id must be in the form"), and a hub model
that is not cached fails at once offline (no ~32 s of retries), saying why."""

from __future__ import annotations

import socket
import time

import pytest

from patchaudit import cli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the block ends: connections are refused


def test_missing_directory_is_named(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert cli.main(["audit", "--model", str(missing), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and str(missing) in err
    assert "Repo id" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # one line


@pytest.mark.parametrize("name", ["./models/mine", "~/nowhere/model", "a/b/c"])
def test_paths_that_are_not_hub_ids_are_named_as_directories(name, capsys):
    assert cli.main(["audit", "--model", name, "--n", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_offline_hub_model_fails_fast_with_hf_hub_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    t0 = time.monotonic()
    assert cli.main(["audit", "--model", "gpt2", "--n", "2"]) == 2
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert "'gpt2'" in err and "HF_HUB_OFFLINE" in err and "local Hugging Face cache" in err


def test_no_network_fails_fast_without_hf_hub_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")  # no hub there
    t0 = time.monotonic()
    assert cli.main(["audit", "--model", "gpt2", "--n", "2"]) == 2
    assert time.monotonic() - t0 < 8
    err = capsys.readouterr().err
    assert "no network" in err and "cannot be reached" in err and "'gpt2'" in err


@pytest.mark.bundled
def test_pairs_are_numbered_from_one(tmp_path, capsys):
    """The second pair of a file has a two-token answer: the CLI names it "pair 2"."""
    f = tmp_path / "pairs.tsv"
    f.write_text(
        "When Mary and John went to the store, John gave a drink to\t"
        "When Mary and John went to the store, Mary gave a drink to\t Mary\t John\n"
        "When Mary and John went to the store, John gave a drink to\t"
        "When Mary and John went to the store, Mary gave a drink to\t Mary Mary\t John\n"
    )
    assert cli.main(["audit", "--pairs", str(f), "--methods", "atp"]) == 2
    err = capsys.readouterr().err
    assert "pair 2:" in err and "pair 1:" not in err, err
