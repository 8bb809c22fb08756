"""README.md against the repository: what its commands write is ignored by git."""

import re
import shutil
import subprocess

import pytest

from helpers import REPO

#: The flags of README's commands that name what a script writes.
OUTPUT_FLAGS = ("out_dir", "output_dir", "run_dir", "data_file", "output", "work_dir")


def written_by_readme() -> set[str]:
    """The top-level paths README's commands write into the working folder."""
    text = (REPO / "README.md").read_text()
    paths = {match.group(2) for match in re.finditer(
        rf"--({'|'.join(OUTPUT_FLAGS)})[ =]([\w./-]+)", text)}
    paths |= set(re.findall(r'predict_cases\([^)]*"([\w./-]+)"\)', text))
    paths.add("demo")  # brats/demo.py's --work_dir default
    return {path.split("/")[0] for path in paths if not path.startswith("/")}


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs a git checkout")
def test_what_the_readme_commands_write_is_ignored_by_git():
    written = written_by_readme()
    assert {"runs", "data", "predictions", "evaluation", "exported", "demo"} <= written
    for path in sorted(written):  # a folder, or a file (a data store)
        probe = path if "." in path else f"{path}/x"
        result = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO)
        assert result.returncode == 0, f"{probe} (written by README's commands) is not ignored"
