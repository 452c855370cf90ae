"""The Colab notebook, run top to bottom as a user would: every code cell in order, in one namespace.

Only what a CPU test machine lacks is swapped: /content paths for a temporary folder, the demo's
`:tiny` size, the local SmolLM2 folder for the hub id, and a shorter generation.
"""

import json
import pathlib
import sys
import types

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "colab" / "rl_sharpen.ipynb"


def code_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_notebook_runs_in_order(tmp_path, smollm2_tokenizer_dir, monkeypatch):
    swaps = [  # (what the notebook says, what the test machine runs); each must still be in the notebook
        ("/content/rl_sharpen", str(REPO)),
        ("/content", str(tmp_path)),
        ('configs/demo.py"', 'configs/demo.py:tiny"'),
        ('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(smollm2_tokenizer_dir)),
        ("max_new_tokens=128", "max_new_tokens=32"),
    ]
    cells = [c for c in code_cells() if "!pip" not in c]
    source = "\n".join(cells)
    for old, _ in swaps:
        assert old in source, f"the notebook no longer contains {old!r}; update this test's swaps"
    try:
        import IPython.display  # noqa: F401
    except ImportError:  # Colab has IPython; a bare test machine may not
        display = types.ModuleType("IPython.display")
        display.Image = lambda filename: filename
        monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
        monkeypatch.setitem(sys.modules, "IPython.display", display)

    namespace = {}
    for i, cell in enumerate(cells):
        for old, new in swaps:
            cell = cell.replace(old, new)
        exec(compile(cell, f"<notebook code cell {i}>", "exec"), namespace)

    results = namespace["results"]
    assert set(results) == {"task_reward", "sharpening", "sharpening_calibrated"}
    assert (tmp_path / "binary_rewards" / "binary_rewards.png").is_file()
    rows = namespace["rows"]
    assert rows and all("memory_nll" in r and "kl_sampler_policy" in r for r in rows)
