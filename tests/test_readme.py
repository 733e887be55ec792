"""The README's first Python example runs as written, offline."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    sel = scope["session"].selections[0]
    assert sel.num_tokens == 576 and sel.kept.numel() == 64
    assert scope["out"].shape[1] == scope["inputs"]["input_ids"].shape[1] + 8
