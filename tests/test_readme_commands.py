"""Every command the README shows runs as written, in a fresh shell from the checkout's root, or is
skipped here for a stated reason (it needs data, a cluster, a server, or minutes another test spends)."""

from __future__ import annotations

import os
import re
import subprocess
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
VENV = Path(os.environ.get("REIDRAY_VENV", "~/.cache/reidray/venv")).expanduser()

# (words in the command, why it is not run here)
SKIPPED = [
    ("/data/reid", "needs the real datasets under /data/reid"),
    (".ci/run", "the test suite itself"),
    ("serve", "starts a server until Ctrl-C; tests/test_serve.py drives it over HTTP"),
    ("curl", "needs a running server; tests/test_serve.py makes these requests"),
    ("ray job submit", "needs a Ray cluster; tests/test_job_submit.py submits to a real head"),
    ("reidray.run all", "the main job (minutes); tests/test_flow.py runs it through the same command"),
    ("reidray.run embed", "embeds the default grid (minutes); tests/test_flow.py covers the stage"),
    ("reidray.run score", "needs the main job's output; tests/test_flow.py scores stored cells"),
    ("reidray.run report", "needs the main job's output; tests/test_report.py writes reports"),
    ("reidray.run ranks", "needs the main job's output; tests/test_ranklists.py runs it on a stored cell"),
    ("--download", "fetches weights from the model hubs, which this machine cannot reach; tests/test_models_fetch.py "
                   "covers the download offline"),
    ("export ", "sets a variable in the reader's own shell for the commands after it"),
]


def readme_commands() -> list[str]:
    """Each command line of the README's bash blocks, comments dropped."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        lines += [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]
    return lines


def skip_reason(command: str) -> str | None:
    return next((why for words, why in SKIPPED if words in command), None)


def _environment_is_this_checkout() -> bool:
    """What .ci/env checks before reusing the environment; otherwise it would reinstall it."""
    stamp = VENV / ".reidray-installed"
    if not stamp.is_file() or stamp.read_bytes() != (ROOT / "pyproject.toml").read_bytes():
        return False
    done = subprocess.run([str(VENV / "bin" / "python"), "-c", "import reidray; print(reidray.__path__[0])"],
                          capture_output=True, text=True, cwd="/")
    return done.returncode == 0 and Path(done.stdout.strip()).resolve() == (ROOT / "reidray").resolve()


def test_every_readme_command_is_run_or_skipped_for_a_reason():
    commands = readme_commands()
    assert any("reidray.run models" in c for c in commands)
    for command in commands:
        assert command.startswith(("bash .ci/env", "curl", "ray job submit")) or skip_reason(command), command


@pytest.mark.parametrize("command", [c for c in readme_commands() if not skip_reason(c)])
def test_a_readme_command_runs_as_written_in_a_fresh_shell(command):
    if not _environment_is_this_checkout():
        pytest.skip(".ci/env would (re)install the environment for this checkout first; run `bash .ci/env true`")
    fresh = {"HOME": os.environ["HOME"], "PATH": "/usr/local/bin:/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
             "REIDRAY_DOWNLOAD": "0", "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=fresh, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_the_licence_is_an_spdx_string_setuptools_accepts_without_warning():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
