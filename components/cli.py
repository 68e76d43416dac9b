"""Command lines of the examples and benchmarks: typed ``--help`` with each flag's description, type and default.

The examples' settings are dataclasses whose attribute docstrings describe each field; :func:`parse_dataclass_args`
parses them with tyro (as CleanRL does), so ``--help`` shows every flag's
docstring, type and default, and a wrong flag or value exits with a message naming the flag. The benchmarks' argparse
parsers use :class:`HelpFormatter` for the same ``--help``.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Sequence

__all__ = ["parse_dataclass_args", "HelpFormatter", "field_helps", "cli_description"]


def field_helps(cls) -> dict[str, str]:
    """Each field's attribute docstring (the string right under it), whitespace folded to one line: ``{name: text}``.

    (tyro reads these docstrings too, but keeps the line breaks of indented continuation lines.)
    """
    import docstring_parser  # a dependency of tyro

    return {param.arg_name: " ".join(param.description.split())
            for param in docstring_parser.parse_from_object(cls).params if param.description}


def cli_description(doc: str | None) -> str | None:
    """A script docstring for ``--help``: prose paragraphs on one line each (tyro joins lines anyway, but not those
    that start with a backtick or a digit), indented blocks (commands) kept line by line."""
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(text if text.startswith(" ") else " ".join(text.split()) for text in paragraphs)


def parse_dataclass_args(cls, argv: Sequence[str] | None = None, description: str | None = None):
    """Parses ``--field-name VALUE`` for every field of the dataclass ``cls`` into a ``cls``, with tyro.

    ``--help`` shows ``description`` (the script's docstring), then each flag with its type, its attribute
    docstring and its default. Field names keep their kebab-case flags (``penalty_coef``: ``--penalty-coef``);
    ``int`` fields used as switches take ``--compile 0|1`` as before, and ``bool`` fields are ``--name`` /
    ``--no-name`` flags.

    Raises:
        SystemExit: ``--help``, or an unknown flag or a value of the wrong type (tyro prints a message naming the
            flag, the value received and the expected type, with close matches for a misspelt flag).
    """
    import typing

    import tyro

    helps = field_helps(cls)
    hints = typing.get_type_hints(cls)
    fields = []
    for field in dataclasses.fields(cls):
        default = (dataclasses.field(default=field.default) if field.default is not dataclasses.MISSING
                   else dataclasses.field(default_factory=field.default_factory))
        annotation = typing.Annotated[hints[field.name], tyro.conf.arg(help=helps.get(field.name))]
        fields.append((field.name, annotation, default))
    shadow = dataclasses.make_dataclass(cls.__name__, fields)  # the same fields, with their help attached
    parsed = tyro.cli(shadow, args=None if argv is None else list(argv), description=cli_description(description))
    return cls(**{field.name: getattr(parsed, field.name) for field in dataclasses.fields(shadow)})


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ``--help`` for the benchmarks and the argparse examples: the description as written, each flag's
    type as its metavar (``--steps INT``) and its default after its help (``(default: 200)``; none for ``None``)."""

    def _get_default_metavar_for_optional(self, action):
        return {int: "INT", float: "FLOAT", str: "STR", None: "STR"}.get(action.type, getattr(
            action.type, "__name__", "VALUE").upper())

    def _get_help_string(self, action):
        if action.default is None or isinstance(action, argparse._HelpAction):
            return action.help or ""
        return super()._get_help_string(action)
