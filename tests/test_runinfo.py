"""Provenance: which commit a run or record names, and when it says "-dirty"."""

import subprocess

import kmim
from kmim.runinfo import git_sha


def test_dirty_means_uncommitted_code_not_new_results_beside_it(tmp_path, monkeypatch):
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    (tmp_path / "kmim").mkdir()
    (tmp_path / "kmim" / "__init__.py").write_text("")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "code")
    monkeypatch.setattr(kmim, "__file__", str(tmp_path / "kmim" / "__init__.py"))
    clean = git_sha()
    assert clean is not None and len(clean) == 40
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "report.md").write_text("a study's new report")  # results written by the run itself
    assert git_sha() == clean
    (tmp_path / "kmim" / "new.py").write_text("x = 1")  # an uncommitted module changes what runs
    assert git_sha() == clean + "-dirty"
