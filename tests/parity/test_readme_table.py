"""The README parity table and each method's `parity` setting (`bench list methods --details`) agree."""
from __future__ import annotations

from pathlib import Path

from bench.registry import METHODS

README = Path(__file__).resolve().parents[2] / "README.md"


def table_rows() -> dict[str, list[str]]:
    text = README.read_text(encoding="utf-8").split("### Parity with the official code", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.replace("\\|", "¦").strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_clip_method_has_a_row_and_its_setting_says_the_same():
    rows = table_rows()
    assert set(rows) == {"musc", "aprilgan", "winclip", "anomalyclip", "vcpclip", "adaclip"}
    for name, cells in rows.items():
        kwargs = {"checkpoint": "untrained"} if name in {"aprilgan", "anomalyclip", "vcpclip", "adaclip"} else {}
        parity = METHODS.create(name, **kwargs).info.settings["parity"]
        assert parity == f"compared with {cells[1]}; max |Δ| maps {cells[2]}; image scores {cells[3]}", name
