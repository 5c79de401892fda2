"""A plugin's options and metrics from its code: ``harness describe PLUGIN`` and the reference in docs/plugins.md.

Everything comes from the plugin's typed ``Config`` (pydantic): each field's key, type (in words, with its bounds),
default and description, and the nested option blocks it uses (``data:`` a DocumentSource, ...), and from its
``declared_metrics()``. A field's description is its ``Field(description=...)``, else the ``#:`` comment lines
right above it in the class body (the project's convention), else a trailing ``# comment`` on its line.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ..config_types import describe_type, model_in
from .plugins import PluginInfo

_FIELD_LINE = re.compile(r"^(\w+)\s*:")


@dataclass
class Option:
    key: str
    type: str
    default: str
    description: str


@dataclass
class OptionBlock:
    """The options of one config class (the plugin's own, or a nested one such as DocumentSource)."""

    name: str
    doc: str
    options: list[Option]


@dataclass
class PluginDoc:
    name: str
    kind: str
    package: str
    description: str
    blocks: list[OptionBlock]
    metrics: list[tuple[str, str, str]] = field(default_factory=list)  # (key, label, how it is computed)
    metrics_note: str = ""


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its ``#:`` comment (lines above the field) or trailing ``# comment``, from the class source of
    ``cls`` and its bases (a subclass's comment wins)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass in (BaseModel, object) or not issubclass(klass, BaseModel):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()[1:]  # the class line
        body_indent = next((len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()), 4)
        pending: list[str] = []
        for line in lines:
            indent, text = len(line) - len(line.lstrip()), line.strip()
            if indent != body_indent or not text:
                pending = [] if indent <= body_indent else pending
                continue
            if text.startswith("#:"):
                pending.append(text[2:].strip())
                continue
            match = _FIELD_LINE.match(text)
            if match and not text.startswith(("def ", "class ", "@")):
                name = match.group(1)
                trailing = text.split("  # ", 1)[1].strip() if "  # " in text else ""
                if pending or trailing:
                    found[name] = " ".join(pending) or trailing
            pending = []
    return found


def _default(info: Any) -> str:
    if info.default_factory is not None:
        try:
            value = info.default_factory()
        except TypeError:
            return "(computed)"
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        dumped = value.model_dump(mode="json", exclude_defaults=True)
        return "{}" if not dumped else str(dumped)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _clean(text: str) -> str:
    return " ".join(text.replace("``", "`").split())


def option_blocks(config_cls: type[BaseModel]) -> list[OptionBlock]:
    """The config's options, then each nested config class it uses (once each, in the order first met)."""
    blocks: list[OptionBlock] = []
    queue: list[tuple[str, type[BaseModel]]] = [("", config_cls)]
    seen: set[type] = set()
    while queue:
        title, cls = queue.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        comments = field_comments(cls)
        options = []
        for name, info in cls.model_fields.items():
            description = info.description or comments.get(name, "")
            nested = model_in(info.annotation)
            if nested is not None and nested not in seen:
                queue.append((nested.__name__, nested))
            options.append(Option(name, describe_type(info.annotation, list(info.metadata)), _default(info),
                                  _clean(description)))
        doc = _clean(inspect.getdoc(cls) or "") if title else ""
        if doc.startswith(("Create a new model", "Usage docs")):  # pydantic's own docstring, inherited
            doc = ""
        blocks.append(OptionBlock(title, doc, options))
    return blocks


def plugin_doc(info: PluginInfo) -> PluginDoc:
    cls = info.cls
    doc = PluginDoc(info.name, info.kind, info.package, _clean(inspect.getdoc(cls) or info.description),
                    option_blocks(cls.Config))
    try:  # declarations may read the config: try it with the defaults (required fields left unset)
        plugin = cls(cls.Config.model_construct())
        specs = plugin.declared_metrics()
    except Exception as exc:  # a plugin whose declarations need real options: say so instead of failing
        doc.metrics_note = f"declared from the config ({type(exc).__name__} with the defaults alone)"
        return doc
    for spec in specs:
        how = spec.aggregation if spec.field is None else f"{spec.aggregation} of `{spec.field}`"
        if spec.kind != "scalar":
            how = f"{spec.kind}" + (f", {how}" if spec.aggregation != "none" else "")
        doc.metrics.append((spec.name, spec.label, how))
    if not specs:
        doc.metrics_note = "none declared"
    return doc


def as_markdown(doc: PluginDoc, heading: str = "##", shared: set[str] | None = None) -> str:
    """The plugin's section; option blocks named in ``shared`` are linked instead of repeated."""
    out = [f"{heading} `{doc.name}` ({doc.kind})", "", doc.description, ""]
    linked = [b.name for b in doc.blocks if b.name in (shared or set())]
    if linked:
        out += ["Nested options: " + ", ".join(f"[`{n}`](#{n.lower()}-options)" for n in linked) + ".", ""]
    for block in doc.blocks:
        if block.name in (shared or set()):
            continue
        if block.name:
            out += [f"{heading}# `{block.name}` options", ""] + ([block.doc, ""] if block.doc else [])
        if not block.options:
            out += ["(no options)", ""]
            continue
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for o in block.options:
            out.append(f"| `{o.key}` | {_cell(o.type)} | `{_cell(o.default)}` | {_cell(o.description)} |")
        out.append("")
    if doc.metrics:
        out += [f"{heading}# Declared metrics", "", "| key | label | computed as |", "|---|---|---|"]
        out += [f"| `{_cell(k)}` | {_cell(label)} | {_cell(how)} |" for k, label, how in doc.metrics]
        out.append("")
    elif doc.metrics_note:
        out += [f"Declared metrics: {doc.metrics_note}.", ""]
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


KIND_ORDER = ("model", "trainer", "metric", "attack")


def reference_markdown(docs: list[PluginDoc]) -> str:
    """docs/plugins.md: every plugin's options and metrics; option blocks used by several plugins once, at the end."""
    docs = sorted(docs, key=lambda d: (KIND_ORDER.index(d.kind) if d.kind in KIND_ORDER else 9, d.name))
    uses: dict[str, int] = {}
    blocks: dict[str, OptionBlock] = {}
    for doc in docs:
        for block in doc.blocks[1:]:
            uses[block.name] = uses.get(block.name, 0) + 1
            blocks.setdefault(block.name, block)
    shared = {name for name, n in uses.items() if n > 1}
    out = ["# Plugin options", "",
           "Generated from the code by `harness describe --all --markdown > docs/plugins.md` (a test keeps it "
           "current): "
           "every built-in plugin's options (key, type, default, description) and the metrics it declares. "
           "`harness describe PLUGIN` prints the same for any installed plugin.", ""]
    for kind in KIND_ORDER:
        names = [d.name for d in docs if d.kind == kind]
        if names:
            out.append(f"- {kind}s: " + ", ".join(f"[`{n}`](#{n}-{kind})" for n in names))
    out.append("")
    for doc in docs:
        out.append(as_markdown(doc, "##", shared))
    if shared:
        out += ["## Shared option blocks", ""]
        for name in sorted(shared):
            block = blocks[name]
            out += [f"### `{name}` options", ""] + ([block.doc, ""] if block.doc else []) + [
                    "| key | type | default | description |", "|---|---|---|---|"]
            out += [f"| `{o.key}` | {_cell(o.type)} | `{_cell(o.default)}` | {_cell(o.description)} |"
                    for o in block.options]
            out.append("")
    return "\n".join(out).rstrip() + "\n"
