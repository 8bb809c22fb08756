"""The scripts' logging: TensorFlow's C++ log kept out of the console, the rest untouched."""

import subprocess
import sys
import textwrap

from helpers import REPO

WRITER = textwrap.dedent("""
    import os, sys
    from unet3d.logs import hide_native_log
    hide_native_log()
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
    os.write(2, b"I0000 00:00:1796478535.095252    4296 port.cc:153] oneDNN custom operations are on.\\n")
    os.write(2, b"I0000 00:00:1796478535.825888    4296 cpu_feature_guard.cc:227] optimized\\n")
    os.write(2, b"To enable the following instructions: AVX2 FMA, rebuild TensorFlow\\n")
    print("a line of the package's log", file=sys.stderr, flush=True)
    os.write(2, b"W0000 00:00:1796478591.954947    7693 dataset.cc:997] not optimized\\n")
    os.write(2, b"\\t [[{{node MultiDeviceIteratorGetNextFromShard}}]]\\n")
    os.write(2, b"Traceback (most recent call last):\\n")
    os.write(2, b"  File \\"train.py\\", line 3, in main\\n")
    raise SystemExit("error: the last line")
""")


def test_native_log_lines_are_hidden_and_the_rest_kept():
    result = subprocess.run([sys.executable, "-c", WRITER], capture_output=True, text=True,
                            cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "a line of the package's log", "Traceback (most recent call last):",
        '  File "train.py", line 3, in main', "error: the last line"]
