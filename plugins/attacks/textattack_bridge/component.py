"""One TextAttack component named in a suite (class name + keyword arguments). Its own module so that the catalogue,
which builds components, and the configs, whose validators ask the catalogue, do not import each other."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator, model_validator

from harness import PluginConfig


class Component(PluginConfig):
    """One TextAttack component: its class name as TextAttack spells it, and keyword arguments (``args``)."""

    name: str
    args: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value  # `RepeatModification` == `{name: ...}`

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not value.isidentifier():
            raise ValueError(f"'{value}' is not a TextAttack class name")
        return value

    def describe(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"
