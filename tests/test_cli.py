"""The `securitynet` command."""

from __future__ import annotations

import json
import os
import sys

from pytest_securitynet.cli import main


def test_list_filters_and_show(capsys):
    assert main(["catalog", "list", "--dataset", "cifar10", "--tag", "akamaster"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("akamaster" in line for line in lines)
    assert main(["catalog", "show", "demo-digits-cnn"]) == 0
    assert json.loads(capsys.readouterr().out)["builder"] == "demo_cnn"


def test_errors_exit_2_with_a_message(capsys, tmp_path):
    assert main(["catalog", "show", "no-such-model"]) == 2
    assert "unknown model id 'no-such-model'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nid = "x"\n')
    assert main(["catalog", "validate", "--catalog", str(bad)]) == 2
    assert f"{bad}: model 'x'" in capsys.readouterr().err


def test_a_closed_pipe_stops_the_listing_quietly(monkeypatch, capsys):
    """`securitynet catalog list | head -1`: the reader is gone; exit 141 with no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", buffering=1) as closed_pipe:
        monkeypatch.setattr(sys, "stdout", closed_pipe)
        assert main(["catalog", "list"]) == 141
        monkeypatch.undo()
    assert capsys.readouterr().err == ""
