"""Mistakes a new user makes on the command line: one sentence, what to do, exit 2 for usage."""

from __future__ import annotations

import pytest

from tests.helpers import run_main


@pytest.mark.parametrize("args,status,wanted", [
    (("--config.batch_sze=8",), 2, "did you mean --config.batch_size?"),
    (("--config.batch_size=abc",), 2, "--config.batch_size=abc"),
    (("--config.model.dtype=float16",), 1, "model.dtype='float16' is not one of"),
])
def test_config_mistakes_are_one_sentence(tmp_path, args, status, wanted):
  result = run_main("quickstart.py", tmp_path / "run", *args, check=False)
  assert result.returncode == status
  assert wanted in result.stderr and "Traceback" not in result.stderr


def test_a_missing_config_file_is_one_sentence(tmp_path):
  result = run_main("nope.py", tmp_path / "run", check=False)
  assert result.returncode == 2
  assert "nope.py does not exist" in result.stderr and "Traceback" not in result.stderr


def test_a_workdir_that_is_a_file_is_one_sentence(tmp_path):
  (tmp_path / "file").write_text("not a directory")
  result = run_main("quickstart.py", tmp_path / "file", check=False)
  assert result.returncode == 1
  assert "is a file, not a directory" in result.stderr and "Traceback" not in result.stderr
