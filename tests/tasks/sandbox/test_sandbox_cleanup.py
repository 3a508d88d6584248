"""What a run leaves on disk is removed without recursion, and clean-up that fails is
logged instead of ending the run."""

from __future__ import annotations

import logging
import os
import tempfile

import pytest

from qstar_jax.tasks.sandbox import sandbox
from qstar_jax.tasks.sandbox.sandbox_cleanup import remove_tree
from tests.tasks.sandbox.programs import REMOVE_ODD, grade

DEEP = 1500  # past the recursion limit os.walk and shutil.rmtree hit


def test_a_tree_deeper_than_path_max_with_locked_directories_is_removed(tmp_path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    try:
        for depth in range(2200):  # 2 characters a level: past PATH_MAX (4096)
            os.mkdir("d", dir_fd=fd)
            with open(os.open("f", os.O_CREAT | os.O_WRONLY, dir_fd=fd), "w") as file:
                file.write("x")
            if depth % 500 == 0:
                os.symlink("/", "to-root", dir_fd=fd)  # removed, never followed
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            if depth % 700 == 0:
                os.chmod(fd, 0)  # neither readable nor enterable
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    remove_tree(str(root))
    assert not root.exists() and os.path.isdir("/usr")


def _deep_program(where: str) -> str:
    return (f"import os\nos.chdir({where!r})\nos.mkdir('qstar-deep-test')\n"
            f"os.chdir('qstar-deep-test')\nfor _ in range({DEEP}):\n"
            "    os.mkdir('d')\n    os.chdir('d')\n" + REMOVE_ODD)


def test_a_program_nesting_directories_deep_is_graded_and_leaves_nothing(
        isolation: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where scratch dirs are made
    fds = len(os.listdir("/proc/self/fd"))
    result = grade(_deep_program("."), isolation=isolation)
    assert result.status == "passed", result.detail
    assert list(tmp_path.iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root caller's throwaway uid is cleared "
                                               "from /tmp under limits alone")
def test_a_deep_tree_in_the_shared_tmp_is_removed_under_limits() -> None:
    result = grade(_deep_program("/tmp"), isolation="limits")
    assert result.status == "passed", result.detail
    assert not os.path.exists("/tmp/qstar-deep-test")


def test_clean_up_that_fails_is_logged_and_the_verdict_stands(monkeypatch, caplog,
                                                              tmp_path) -> None:
    def broken(path: str) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the scratch dir left behind
    monkeypatch.setattr(sandbox, "remove_tree", broken)
    fds = len(os.listdir("/proc/self/fd"))
    with caplog.at_level(logging.ERROR, logger="qstar_jax.tasks.sandbox.sandbox"):
        result = grade(REMOVE_ODD)
    assert result.status == "passed"
    assert "removing the scratch directory failed: RecursionError" in caplog.text
    assert len(os.listdir("/proc/self/fd")) == fds
