"""Every command the README shows runs as written, in a fresh shell from the checkout's root, in
the README's order (later commands read what earlier ones wrote), or is skipped here for a stated
reason: it needs the real datasets, a cluster, a running server, the network, or is the suite itself."""

from __future__ import annotations

import os
import re
import subprocess
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
VENV = Path(os.environ.get("REIDRAY_VENV", "~/.cache/reidray/venv")).expanduser()
# A new user's shell after the set-up commands: nothing of this test process's environment (no
# PYTHONPATH, no virtual environment on PATH). No hub is reachable here, and Ray's token auth is
# the same for every Ray command of the test session.
FRESH = {"HOME": os.environ["HOME"], "PATH": "/usr/local/bin:/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
         "REIDRAY_DOWNLOAD": "0", "RAY_AUTH_MODE": "disabled"}

# (words in the command, why it is not run here)
SKIPPED = [
    ("/data/reid", "needs the real datasets under /data/reid"),
    (".ci/run", "the test suite itself"),
    ("reidray.run serve", "serves until Ctrl-C; tests/test_serve.py starts it and tests/test_first_contact.py stops "
                          "it with Ctrl-C"),
    ("curl", "needs the running server (and query.jpg, and clip-vit-b16's weights and a market1501 gallery for "
             "/search/text); tests/test_serve.py makes these requests"),
    ("ray job submit", "needs a Ray cluster; tests/test_multinode.py submits to a real multi-node head"),
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
    """What .ci/env checks, as .ci/env sees it (a fresh shell, from /), before it reuses the
    environment; otherwise it would reinstall the environment for this checkout."""
    stamp = VENV / ".reidray-installed"
    if not stamp.is_file() or stamp.read_bytes() != (ROOT / "pyproject.toml").read_bytes():
        return False
    done = subprocess.run([str(VENV / "bin" / "python"), "-c", "import reidray; print(reidray.__path__[0])"],
                          capture_output=True, text=True, cwd="/", env=FRESH)
    return done.returncode == 0 and Path(done.stdout.strip()).resolve() == (ROOT / "reidray").resolve()


def test_every_readme_command_is_run_or_skipped_for_a_reason():
    commands = readme_commands()
    assert any("reidray.run models" in c for c in commands)
    assert any(c == "bash .ci/env python -m reidray.run all" for c in commands)  # the main job is run
    for command in commands:
        assert command.startswith(("bash .ci/env", "curl", "ray job submit")) or skip_reason(command), command


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_readme_commands_run_as_written_in_fresh_shells():
    """The main job (into the checkout's out/, as a user's would go), the stages on its output, the
    catalogue commands and the own-encoder examples, one fresh shell each, in the README's order."""
    if not _environment_is_this_checkout():
        pytest.skip(".ci/env would (re)install the environment for this checkout first; run `bash .ci/env true`")
    for command in (c for c in readme_commands() if not skip_reason(c)):
        done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=FRESH, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        assert "Traceback" not in done.stdout + done.stderr, command


def test_the_licence_is_an_spdx_string_setuptools_accepts_without_warning():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"


def test_the_install_silences_setuptools_editable_notice_and_nothing_else():
    """.ci/env's editable install runs with a warnings filter: setuptools' boxed notice (what its
    build backend prints for every editable install) is dropped, any other warning still shows."""
    import sys

    setting = re.search(r'PYTHONWARNINGS="([^"]+)" "\$venv/bin/pip" install --quiet -e', (ROOT / ".ci" / "env").read_text())
    assert setting, "the editable install in .ci/env lost its warnings filter"
    notice = ("import warnings\nfrom setuptools.command.editable_wheel import _TopLevelFinder\n"
              "_TopLevelFinder(None, 'reidray').__exit__(None, None, None)\nwarnings.warn('a real problem')\n")
    for env, shown in (({}, True), ({"PYTHONWARNINGS": setting.group(1)}, False)):
        done = subprocess.run([sys.executable, "-c", notice], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "", **env})
        assert done.returncode == 0, done.stderr
        assert ("Editable installation" in done.stderr) is shown, done.stderr
        assert "a real problem" in done.stderr
