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
    os.write(2, b"E0000 00:00:1796479392.558528   14625 cuda_platform.cc:52] failed call to cuInit: INTERNAL\\n")
    os.write(2, b"E0000 00:00:1796481464.481790   16334 util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512.\\n")
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


FATAL = textwrap.dedent("""
    import os
    from unet3d.logs import hide_native_log
    hide_native_log()
    os.write(2, b"I0000 00:00:1796478535.095252    4296 port.cc:153] oneDNN custom operations are on.\\n")
    os.write(2, b"E0000 00:00:1796479392.558528   14625 bfc_allocator.cc:485] Allocator ran out of memory\\n")
    os.write(2, b"F0000 00:00:1796479392.558529   14625 tensor.cc:12] Check failed: shape\\n")
    os.abort()
""")


def test_errors_and_fatal_lines_pass_even_when_the_process_aborts():
    result = subprocess.run([sys.executable, "-c", FATAL], capture_output=True, text=True,
                            cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert result.returncode < 0  # killed by SIGABRT
    assert result.stderr.splitlines() == [
        "E0000 00:00:1796479392.558528   14625 bfc_allocator.cc:485] Allocator ran out of memory",
        "F0000 00:00:1796479392.558529   14625 tensor.cc:12] Check failed: shape"]


def test_the_tensorflow_log_flag_keeps_every_line():
    script = ("import os\nfrom unet3d import cli\n"
              "def main(argv):\n"
              "    os.write(2, b'I0000 00:00:1796478535.095252    4296 port.cc:153] on\\n')\n"
              "    return 0\n"
              "cli.run(main)\n")
    shown = {}
    for flag in ("--tensorflow_log", "--tensorflow_log=true", "--notensorflow_log", ""):
        result = subprocess.run([sys.executable, "-c", script, *[flag] * bool(flag)],
                                capture_output=True, text=True, cwd=REPO,
                                env={"PYTHONPATH": str(REPO)})
        assert result.returncode == 0, result.stderr
        shown[flag] = "port.cc:153] on" in result.stderr
    assert shown == {"--tensorflow_log": True, "--tensorflow_log=true": True,
                     "--notensorflow_log": False, "": False}
