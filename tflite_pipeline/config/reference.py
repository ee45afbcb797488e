"""The recipe reference: Markdown for every recipe section, generated from the config dataclasses.

    .venv/bin/python -m tflite_pipeline.config.reference > docs/recipe-reference.md

Everything comes from `config/sections.py` itself: each section's class docstring, each field's type and
default, its description from the comments beside and directly above it (comments are the only field docs),
and what it accepts from the section's `__post_init__` checks (`_require(...)`): the tuple of allowed values
a field is tested against (`self.kernels in KERNELS`), else the check's "expected ..." text. `tests/test_docs.py`
fails when docs/recipe-reference.md differs from `recipe_reference()`. Imports no TensorFlow.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from typing import Any

from tflite_pipeline.config import sections as _sections_module
from tflite_pipeline.config.recipe import SECTIONS, Recipe
from tflite_pipeline.config.sections import Section

COMMAND = ".venv/bin/python -m tflite_pipeline.config.reference > docs/recipe-reference.md"


# --- field comments -------------------------------------------------------------------------------------------

def _comment_text(token: str) -> str:
    return token[1:].strip()


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its description: the comment lines directly above the field, then its trailing comment
    and the comment-only lines that continue it (aligned under it)."""
    source = textwrap.dedent(inspect.getsource(cls))
    tree = ast.parse(source)
    body = tree.body[0].body  # type: ignore[attr-defined]
    fields = {node.lineno: node.target.id for node in body
              if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    code_lines: set[int] = set()
    comments: dict[int, tuple[int, str, bool]] = {}   # line -> (column of the text, text, alone on its line)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            text = _comment_text(token.string)
            offset = len(token.string) - len(token.string[1:].lstrip())
            comments[row] = (col + offset, text, row not in code_lines)
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                                tokenize.ENDMARKER, tokenize.ENCODING):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    ends = {node.lineno: node.end_lineno or node.lineno for node in body if isinstance(node, ast.AnnAssign)}

    taken: set[int] = set()
    trailing: dict[str, list[str]] = {}
    for line, name in fields.items():
        parts = []
        last = ends[line]
        for row in range(line, last + 1):
            if row in comments and not comments[row][2]:
                parts.append(comments[row][1])
        if parts:   # comment-only lines aligned under the trailing comment continue it
            column = comments[last][0] if last in comments else None
            row = last + 1
            while row in comments and comments[row][2] and row not in code_lines and column is not None \
                    and comments[row][0] == column:
                parts.append(comments[row][1])
                taken.add(row)
                row += 1
        trailing[name] = parts

    out: dict[str, str] = {}
    for line, name in fields.items():
        above = []
        row = line - 1
        while row in comments and comments[row][2] and row not in taken:
            above.insert(0, comments[row][1])
            row -= 1
        out[name] = " ".join(part for part in [*above, *trailing[name]] if part)
    return out


# --- what a field accepts (from __post_init__) -----------------------------------------------------------------

def _self_field(node: ast.AST, names: dict[str, str]) -> str | None:
    """The field `node` reads: `self.x`, `set(self.x)`, or a parameter standing for one (`names`)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "set" and len(node.args) == 1:
        node = node.args[0]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    return None


def _module_value(node: ast.AST) -> Any:
    """Evaluate an expression made of the module's constants only (else None)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "set" and len(node.args) == 1:
        node = node.args[0]
    if any(isinstance(n, ast.Name) and n.id == "self" for n in ast.walk(node)):
        return None
    if any(isinstance(n, ast.Name) and not hasattr(_sections_module, n.id) for n in ast.walk(node)):
        return None
    try:
        return eval(compile(ast.Expression(node), "<reference>", "eval"), vars(_sections_module))
    except Exception:
        return None


def _choices(tree: ast.AST, names: dict[str, str]) -> dict[str, str]:
    """Field -> the values it is checked against, in words: `self.x in CONST` (one of ...) or
    `set(self.x) <= set(CONST)` (a list drawn from ...), CONST a tuple of strings of the module."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.LtE)):
            name = _self_field(node.left, names)
            value = _module_value(node.comparators[0])
            if name and isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
                words = "one of" if isinstance(node.ops[0], ast.In) else "a list drawn from"
                out.setdefault(name, f"{words} " + ", ".join(f"`{v}`" for v in value))
    return out


def _function(name: str) -> ast.FunctionDef | None:
    function = getattr(_sections_module, name, None)
    if not inspect.isfunction(function):
        return None
    node = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    return node if isinstance(node, ast.FunctionDef) else None


def field_checks(cls: type) -> dict[str, str]:
    """Field -> what it accepts, from `__post_init__`: the allowed values, then the "expected ..." texts of its
    other checks,
    following one level of helper functions that are given a field (`_check_layers(self.section, self.x)`)."""
    post_init = cls.__dict__.get("__post_init__")
    if post_init is None:
        return {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(post_init)))
    choices = _choices(tree, {})
    expected: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id == "_require" and len(node.args) == 5:
            field_node, text_node = node.args[2], node.args[4]
            if isinstance(field_node, ast.Constant) and isinstance(field_node.value, str):
                text = _module_value(text_node) if not isinstance(text_node, ast.Constant) else text_node.value
                if isinstance(text, str) and field_node.value not in _choices(node.args[0], {}):
                    expected.setdefault(field_node.value, []).append(text)
            continue
        helper = _function(node.func.id)
        if helper is None:
            continue
        params = [arg.arg for arg in helper.args.args]
        names = {params[i]: field for i, arg in enumerate(node.args)
                 if i < len(params) and (field := _self_field(arg, {}))}
        for name, words in _choices(helper, names).items():
            choices.setdefault(name, words)
    return {name: "; ".join([*([choices[name]] if name in choices else []), *expected.get(name, [])])
            for name in {*choices, *expected}}


# --- rendering ----------------------------------------------------------------------------------------------

def toml_type(hint: Any) -> str:
    """A type annotation in TOML words: string, integer, float, boolean, list of ..., table of ..."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(toml_type(option) for option in typing.get_args(hint) if option is not type(None))
    if origin is tuple:
        return f"list of {toml_type(typing.get_args(hint)[0])}s"
    if origin is dict:
        key, value = typing.get_args(hint)
        return f"table ({toml_type(key)} = {toml_type(value)})"
    words = {str: "string", int: "integer", float: "float", bool: "boolean"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def toml_value(value: Any) -> str:
    """A default as it is written in a recipe."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}" if value else "{}"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def section_reference(cls: type[Section]) -> str:
    """One section: heading, class docstring, then field | type | default | accepts | description."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    accepts = field_checks(cls)
    lines = [f"## [{cls.section}]", "", f"`{cls.__name__}` in `tflite_pipeline/config/sections.py`.", ""]
    doc = inspect.getdoc(cls)
    if doc:
        lines += [doc, ""]
    lines += ["| field | type | default | accepts | description |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        row = [f"`{cls.section}.{f.name}`", toml_type(hints[f.name]), f"`{toml_value(_default(f))}`",
               accepts.get(f.name, ""), comments.get(f.name, "")]
        lines.append("| " + " | ".join(_cell(part) for part in row) + " |")
    return "\n".join(lines) + "\n"


def recipe_reference() -> str:
    """Markdown for the whole recipe: top-level keys, then every section in the order `Recipe` lists them."""
    order = [f.name for f in dataclasses.fields(Recipe) if f.name in SECTIONS]
    parts = [
        "# Recipe reference",
        "",
        f"Generated from `tflite_pipeline/config/sections.py` by `{COMMAND}`; do not edit by hand "
        "(`tests/test_docs.py` checks it is current). How recipes, bundled recipes and `--set` overrides work: "
        "[recipes.md](recipes.md).",
        "",
        "Every field has a default and every section is optional; an unknown section or key is a `RecipeError` "
        "(exit 4), and so is a value outside what the field accepts. A recipe may also set two top-level keys, "
        "`name` (string; default: the file's stem) and `description` (string, shown by `tflite-pipeline recipes`).",
        "",
        "Sections: " + ", ".join(f"[`[{name}]`](#{name})" for name in order) + ".",
        "",
    ]
    for name in order:
        parts.append(section_reference(SECTIONS[name]))
    return "\n".join(parts)


if __name__ == "__main__":
    print(recipe_reference(), end="")
