"""The README's examples in a real Jupyter kernel (nbclient + ipykernel), against the fake
providers: sync calls, top-level `await`, parallel and gather all work there, and parallel
shows the notebook's own progress widget (tqdm.auto), never a text bar on stderr."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from test_readme import PRELUDE, answer_for, python_blocks

SRC = Path(__file__).parent.parent / "src"
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.mark.usefixtures("anthropic_srv", "gemini_srv")
def test_the_readme_runs_in_a_jupyter_kernel_with_the_notebooks_progress_widget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openai_srv: Any):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    sources = [PRELUDE, *(source for _, source in python_blocks()),
               "quiet = parallel(classify, texts, progress=False)"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):  # raises if a cell fails
            answer_for(cell.source, openai_srv)
            client.execute_cell(cell, index)
    cells = notebook.cells
    shown = [cell for cell in cells if "parallel(classify, texts" in cell.source]
    assert len(shown) == 2
    widgets = [sum(WIDGET in out.get("data", {}) for out in cell.outputs) for cell in shown]
    assert widgets == [2, 0]  # the README's parallel and aparallel, by default; progress=False
    stderr = [out.text for cell in cells for out in cell.outputs if out.get("name") == "stderr"]
    assert stderr == []  # no text bar, no warning
    printed = "".join(out.get("text", "") for cell in cells for out in cell.outputs)
    assert "Hello from fake" in printed  # the sync call's answer, printed by the README
