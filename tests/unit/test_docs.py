"""Documentation cannot rot: every README code block and every example is run."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


def run_python(source_or_path: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    args = [str(source_or_path)] if isinstance(source_or_path, Path) else ["-c", source_or_path]
    env = {k: v for k, v in os.environ.items() if k != "EVENTBOOK_BROKER"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_readme_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    python = [code for lang, code in blocks if lang == "python"]
    text = [code for lang, code in blocks if lang == "text"]
    assert len(python) == 1
    assert len(text) == 1
    result = run_python(python[0], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text[0]


def test_choreography_example_makes_the_seeds_intended_calls(tmp_path: Path) -> None:
    result = run_python(ROOT / "examples" / "choreography.py", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "SignUp",
        "Service Name: BankService, Customer Name: SELO",
        "Service Name: MailService, To: rochan87@gmail.com",
        "Service Name: PostService, Address: Seoul, Korea",
        "Service Name: welcome_log, Customer Name: SELO",
        "Update",
        "Service Name: MailService, To: rochan87@gmail.com",
    ]


def test_orchestration_example_calls_each_service_in_turn(tmp_path: Path) -> None:
    result = run_python(ROOT / "examples" / "orchestration.py", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Service Name: BankService, Customer Name: SELO",
        "Service Name: MailService, To: rochan87@gmail.com",
        "Service Name: PostService, Address: Seoul, Korea",
        "Signed up SELO with account ACC-0001",
    ]


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_python_blocks_compile(page: Path) -> None:
    for lang, code in BLOCK.findall(page.read_text()):
        if lang == "python":
            compile(code, str(page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_every_example_is_tested() -> None:
    tested = {"choreography.py", "orchestration.py"}
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == tested
