"""``harness describe PLUGIN``: a plugin's options (key, type, default, description) and declared metrics."""

from __future__ import annotations

import argparse

from rich.table import Table

from .main import command, console


def _describe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("plugins", nargs="*", metavar="PLUGIN", help="plugin name(s), as `harness list` shows them")
    p.add_argument("--all", action="store_true", help="every plugin of this project (the built-in ones)")
    p.add_argument("--markdown", action="store_true",
                   help="print Markdown (with --all: docs/plugins.md, the generated options reference)")


@command("describe", "a plugin's options (key, type, default, description) and the metrics it declares",
         _describe_args)
def cmd_describe(args: argparse.Namespace) -> int:
    from .._engine.describe import as_markdown, plugin_doc, reference_markdown
    from ..errors import HarnessError, did_you_mean
    from .._engine.plugins import load_registry

    infos = load_registry().all()
    if args.all:
        chosen = [i for i in infos if i.package == BUILT_IN]
    else:
        if not args.plugins:
            raise HarnessError("name a plugin, e.g. `harness describe hotflip` (`harness list` shows them), or pass "
                               "--all")
        chosen = []
        for name in args.plugins:
            hits = [i for i in infos if i.name == name]
            if not hits:
                raise HarnessError(f"unknown plugin '{name}'{did_you_mean(name, [i.name for i in infos])}; fix: "
                                   "`harness list` shows the installed plugins")
            chosen += hits
    docs = [plugin_doc(i) for i in chosen]
    if args.markdown:
        print(reference_markdown(docs) if args.all else "\n".join(as_markdown(d) for d in docs), end="")
        return 0
    for doc in docs:
        console.print(f"[bold]{doc.name}[/] ({doc.kind}, package {doc.package}): {doc.description}", highlight=False)
        for block in doc.blocks:
            title = f"{doc.name} options" if not block.name else f"{block.name} options"
            table = Table(title=title, caption=block.doc or None, show_lines=False, title_justify="left")
            for col in ("key", "type", "default", "description"):
                table.add_column(col, overflow="fold")
            for o in block.options:
                table.add_row(o.key, o.type, o.default, o.description)
            console.print(table)
        if doc.metrics:
            table = Table(title=f"{doc.name} declared metrics", title_justify="left")
            for col in ("key", "label", "computed as"):
                table.add_column(col, overflow="fold")
            for row in doc.metrics:
                table.add_row(*row)
            console.print(table)
        else:
            console.print(f"declared metrics: {doc.metrics_note}", highlight=False)
    return 0


#: The distribution that ships the built-in plugins (docs/plugins.md covers these).
BUILT_IN = "harness"
