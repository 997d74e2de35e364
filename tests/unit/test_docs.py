"""docs/configuration.md documents every configuration key."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from crirt.config import Config, RuntimeHandlerConfig

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()


def _missing(model: type[BaseModel]) -> list[str]:
    """Option keys without a table row, and sections (sub-models, handler tables) without a heading."""
    missing = []
    for name, field in model.model_fields.items():
        section = field.annotation if isinstance(field.annotation, type) else None
        if name == "runtimes":
            section = RuntimeHandlerConfig
        if section is not None and issubclass(section, BaseModel):
            if f"## `[{name}" not in DOC:
                missing.append(f"[{name}]")
            missing.extend(_missing(section))
        elif f"| `{name}` |" not in DOC:
            missing.append(name)
    return missing


def test_every_option_is_documented_with_its_default() -> None:
    defaults = Config().model_dump(mode="json")
    missing = _missing(Config)
    assert not missing, f"undocumented options: {missing}"
    assert f"`\"{defaults['address']}\"`" in DOC and f"`{defaults['shutdown_grace_period']}`" in DOC
