"""The Containerfile, checked without a container engine.

No image is built here (there is no engine on the test machines). Instead: the build stage's
own inputs, copied as its COPY lines say, build the wheel; every COPY source exists and is not
hidden by .containerignore; every `--from=` names an earlier stage; and the final stage runs
`relay serve` as a non-root user, with git, EXPOSE and a HEALTHCHECK on /healthz, and with no
compiler. The image and the Helm chart agree on the user, the port and the directories.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
IGNORE_FILE = ROOT / ".containerignore"
CHART_VALUES = ROOT / "deploy" / "helm" / "relay" / "values.yaml"
BUILD_TOOLS = {
    "gcc",
    "g++",
    "cc",
    "clang",
    "make",
    "build-essential",
    "cmake",
    "python3-dev",
    "libpq-dev",
    "libffi-dev",
    "libssl-dev",
    "pkg-config",
    "cargo",
    "rustc",
}


@dataclass
class Instruction:
    keyword: str
    args: str

    def flags(self) -> dict[str, str]:
        return dict(
            token[2:].split("=", 1)
            for token in self.args.split()
            if token.startswith("--") and "=" in token
        )

    def operands(self) -> list[str]:
        """Arguments without --flags; the JSON (exec) form is understood."""
        text = self.args.strip()
        while text.startswith("--"):
            text = text.split(None, 1)[1] if " " in text else ""
        if text.startswith("["):
            return [str(item) for item in json.loads(text)]
        return shlex.split(text)


@dataclass
class Stage:
    index: int
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def run_text(self) -> str:
        return "\n".join(i.args for i in self.all("RUN"))


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Logical instructions (continuations joined, comments dropped), grouped by stage."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Containerfile ends inside a continued line"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(len(stages), words[0], name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, value = args.partition("=")
            global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(CONTAINERFILE.read_text())[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def context_copies(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY/ADD from the build context (no --from)."""
    copies = []
    for instruction in stage.all("COPY") + stage.all("ADD"):
        if "from" in instruction.flags():
            continue
        *sources, dest = instruction.operands()
        copies.append((sources, dest))
    return copies


def ignore_patterns() -> list[str]:
    lines = IGNORE_FILE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    path = path.strip("/").removeprefix("./")
    parts = Path(path).parts
    for pattern in patterns:
        pattern = pattern.strip("/").removeprefix("**/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            return True
        if any(fnmatch.fnmatchcase(part, pattern) for part in parts) and "/" not in pattern:
            return True
    return False


def installed_apt_packages(stage: Stage) -> set[str]:
    packages: set[str] = set()
    for command in re.split(r"&&|;|\|\|", stage.run_text()):
        words = command.split()
        if "apt-get" in words and "install" in words:
            after = words[words.index("install") + 1 :]
            packages.update(w for w in after if not w.startswith("-"))
    return packages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for token in shlex.split(instruction.args):
            key, sep, value = token.partition("=")
            if sep:
                env[key] = value
    return env


# --- structure -----------------------------------------------------------------------------


def test_is_multi_stage_from_a_slim_python_base(stages: list[Stage]) -> None:
    global_args, _ = parse(CONTAINERFILE.read_text())
    assert len(stages) >= 2
    for stage in stages:
        base = stage.base
        for key, value in global_args.items():
            base = base.replace("${" + key + "}", value).replace("$" + key, value)
        assert re.search(r"python:3\.1[1-9][^ ]*-slim", base), f"stage {stage.index}: {base}"


def test_stages_named_in_from_exist_and_come_earlier(stages: list[Stage]) -> None:
    names: dict[str, int] = {}
    found = 0
    for stage in stages:
        for instruction in stage.instructions:
            refs = []
            if "from" in instruction.flags():
                refs.append(instruction.flags()["from"])
            refs += re.findall(r"--mount=[^ ]*\bfrom=([^, ]+)", instruction.args)
            for ref in refs:
                found += 1
                earlier = names.get(ref, int(ref) if ref.isdigit() else None)
                assert earlier is not None and earlier < stage.index, (
                    f"stage {stage.index}: --from={ref} names no earlier stage"
                )
        if stage.name:
            names[stage.name] = stage.index
    assert found, "the final stage should copy its result from a build stage"


def test_every_copy_source_exists_and_is_not_ignored(stages: list[Stage]) -> None:
    patterns = ignore_patterns()
    checked = 0
    for stage in stages:
        for sources, _ in context_copies(stage):
            for source in sources:
                matches = list(ROOT.glob(source))
                assert matches, f"COPY {source}: nothing in the repository"
                assert not is_ignored(source, patterns), f"COPY {source} is in .containerignore"
                checked += 1
    assert checked


def test_containerignore_keeps_local_state_out() -> None:
    patterns = ignore_patterns()
    for path in (".venv", ".git", "relay-data", "tests", "relay/__pycache__", "relay.egg-info"):
        assert is_ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "relay/cli.py", "sql/0001_events.sql"):
        assert not is_ignored(path, patterns), path


# --- the build stage builds the wheel ------------------------------------------------------


@pytest.mark.slow
def test_the_build_stage_inputs_build_a_complete_wheel(stages: list[Stage], tmp_path: Path) -> None:
    """Copy exactly what the build stage COPYs, and build the wheel from that alone."""
    build = next(s for s in stages if "pip wheel" in s.run_text())
    workdir = build.all("WORKDIR")[-1].args.strip()
    context = tmp_path / "context"
    for sources, dest in context_copies(build):
        target = (
            context / Path(workdir.lstrip("/")) / dest
            if not dest.startswith("/")
            else (context / dest.lstrip("/"))
        )
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(
                    origin,
                    target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    dirs_exist_ok=True,
                )
            else:
                into = target / origin.name if dest.endswith("/") else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into)
    source_dir = context / Path(workdir.lstrip("/"))
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(source_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    built = list(wheels.glob("relay-*.whl"))
    assert len(built) == 1, built
    # The Containerfile installs the wheel by this glob.
    assert "/wheels/relay-*.whl" in build.run_text()

    names = set(zipfile.ZipFile(built[0]).namelist())
    for sql in (ROOT / "sql").glob("*.sql"):
        assert f"relay/migrations/{sql.name}" in names, sql.name
    for module in (ROOT / "relay").rglob("*.py"):
        assert str(module.relative_to(ROOT)) in names, module
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(built[0]).read(entry_points).decode()
    assert re.search(r"^relay = relay\.cli:main$", text, re.MULTILINE)


# --- the final stage -----------------------------------------------------------------------


def test_final_stage_runs_relay_serve_as_non_root(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    user = users[-1].args.split(":")[0].strip()
    assert user not in ("root", "0"), user
    assert user.isdigit(), "a numeric UID lets Kubernetes verify runAsNonRoot"
    command: list[str] = []
    for keyword in ("ENTRYPOINT", "CMD"):
        found = final.all(keyword)
        assert found, f"no {keyword}"
        assert found[-1].args.strip().startswith("["), f"{keyword} should use the exec form"
        command += found[-1].operands()
    assert "relay" in command
    assert command[command.index("relay") + 1] == "serve", command


def test_final_stage_exposes_the_port_and_checks_healthz(final: Stage) -> None:
    env = env_of(final)
    exposed = [p.split("/")[0] for i in final.all("EXPOSE") for p in i.args.split()]
    assert env["RELAY_PORT"] in exposed
    assert env["RELAY_BIND"] == "0.0.0.0"
    health = final.all("HEALTHCHECK")
    assert health and "/healthz" in health[-1].args
    assert "CMD" in health[-1].args


def test_final_stage_has_git_and_writable_directories(final: Stage) -> None:
    assert "git" in installed_apt_packages(final)
    env = env_of(final)
    run = final.run_text()
    for key in ("RELAY_DATA_DIR", "RELAY_GIT_SCRATCH_DIR"):
        directory = env[key]
        assert directory.startswith("/"), key
        assert directory in run, f"{key} ({directory}) is not created in the final stage"
    assert re.search(r"chown\b[^&]*\brelay:relay /var/lib/relay", run)


def test_final_stage_has_no_build_tools_or_caches(final: Stage) -> None:
    packages = installed_apt_packages(final)
    assert not packages & BUILD_TOOLS, packages & BUILD_TOOLS
    run = final.run_text()
    assert "pip install" not in run and "pip wheel" not in run, "install in the build stage"
    if "apt-get install" in run:
        assert "--no-install-recommends" in run
        assert "rm -rf /var/lib/apt/lists/*" in run
    copied = [i for i in final.all("COPY") if "from" not in i.flags()]
    assert not copied, "the final stage takes nothing from the build context"


def test_build_stage_keeps_no_pip_cache(stages: list[Stage]) -> None:
    for stage in stages[:-1]:
        if "pip " in stage.run_text():
            env = env_of(stage)
            assert env.get("PIP_NO_CACHE_DIR") == "1" or "--no-cache-dir" in stage.run_text()


# --- the image and the chart agree ---------------------------------------------------------


def test_image_and_chart_agree(final: Stage) -> None:
    helm = pytest.importorskip("helm_python")
    values = helm.values_from_yaml(CHART_VALUES.read_text())
    env = env_of(final)
    uid, _, gid = final.all("USER")[-1].args.strip().partition(":")
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid or uid)
    assert values["containerPort"] == int(env["RELAY_PORT"])
    assert values["dataDir"]["mountPath"] == env["RELAY_DATA_DIR"]
    assert values["gitScratch"]["mountPath"] == env["RELAY_GIT_SCRATCH_DIR"]


def test_the_image_serves_with_one_worker_unless_told_otherwise(final: Stage) -> None:
    from relay.config import load_settings

    env = env_of(final)
    assert env["RELAY_WORKERS"] == "1"
    assert load_settings({**env, "RELAY_WORKERS": "auto"}).workers >= 1
