"""Settings declared once: one dataclass field per setting, the parser and the checks derived.

A field's annotation is the setting's type and :func:`setting` carries the rest: default,
help, allowed values, bounds. From those declarations come

* the command line (:func:`build_parser`): ``--name`` per field (``--no-name`` for a bool
  that defaults to True), typed, with choices; an option not given is left out of the
  namespace, so ``Options(**vars(namespace))`` takes the dataclass default;
* the checks (:func:`check_settings`, called from ``__post_init__``): choices, bounds and
  numeric types, each failure one :class:`~data.errors.UserError` line naming the option;
* the default a README option table shows (:func:`documented_default`; tests compare).

Example::

    @dataclass
    class Options:
        data: str = setting(help="folder to read", metavar="DIR")        # no default: required
        epochs: int = setting(10, help="passes over the data", minimum=1)
        decode: str = setting("cpu", help="where JPEGs are decoded", choices=("cpu", "gpu"))
        clip: float | None = setting(None, help="clip the gradient norm", above=0)
        progress: bool = setting(True, help="no progress bar")              # --no-progress

        def __post_init__(self) -> None:
            check_settings(self)
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Iterator

from data.errors import UserError

_KEY = "sparkdp.setting"


@dataclass(frozen=True)
class Spec:
    """What a setting declares besides its name, type and default."""

    help: str
    choices: tuple | None = None
    minimum: float | None = None  # inclusive bounds ...
    maximum: float | None = None
    above: float | None = None    # ... and exclusive ones
    below: float | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None  # command-line text -> value (default: by the type)
    repeat: bool = False          # a list of values: ``--name A B --name C`` gives [A, B, C]
    positional: bool = False      # given without an option name (with repeat: one or more values)
    doc: str | None = None        # the default as the docs state it, where the value does not say it
    trajectory: bool = False      # changing it on resume gives a valid run, but not the uninterrupted one


def setting(default: Any = MISSING, *, help: str, factory: Callable[[], Any] | None = None, **spec: Any) -> Any:
    """A dataclass field declaring one setting (see the module docstring). Without ``default``
    or ``factory`` the setting is required; ``spec`` takes the fields of :class:`Spec`."""
    where = {"default_factory": factory} if factory is not None else {"default": default}
    return dataclasses.field(**where, metadata={_KEY: Spec(help=help, **spec)})


@dataclass(frozen=True)
class Declared:
    """One declared setting of a class: its field, spec and base type (``int | None`` -> int)."""

    field: dataclasses.Field
    spec: Spec
    kind: type

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def required(self) -> bool:
        return self.field.default is MISSING and self.field.default_factory is MISSING

    @property
    def option(self) -> str:
        """The command-line option: ``--image-size``, or ``--no-progress`` for a bool that defaults to True."""
        if self.spec.positional:
            return self.spec.metavar or self.name.upper()
        stem = self.name.replace("_", "-")
        return f"--no-{stem}" if self.kind is bool and self.field.default is True else f"--{stem}"

    def default(self) -> Any:
        return self.field.default_factory() if self.field.default_factory is not MISSING else self.field.default


def declared(cls: type) -> list[Declared]:
    """The settings of dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [Declared(f, f.metadata[_KEY], _base_type(hints[f.name])) for f in dataclasses.fields(cls)
            if _KEY in f.metadata]


def trajectory_settings(cls: type) -> tuple[str, ...]:
    """The names of ``cls``'s settings declared with ``trajectory=True``."""
    return tuple(s.name for s in declared(cls) if s.spec.trajectory)


def _base_type(hint: Any) -> type:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _base_type(next(a for a in typing.get_args(hint) if a is not type(None)))
    return typing.get_origin(hint) or hint


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


PARSERS: dict[type, Callable[[str], Any]] = {int: _integer, float: _number}


def add_settings(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """Add an option per setting of ``cls`` (see the module docstring)."""
    for s in declared(cls):
        default = "" if s.required or s.kind is bool else documented_default(s)
        shown = f" (default: {default})" if default else ""
        if s.kind is bool:
            parser.add_argument(s.option, dest=s.name, action="store_false" if s.field.default else "store_true",
                                default=argparse.SUPPRESS, help=s.spec.help)
            continue
        if s.spec.positional:
            parser.add_argument(s.name, nargs="+" if s.spec.repeat else None, type=s.spec.parse or PARSERS.get(s.kind, str),
                                metavar=s.spec.metavar, help=s.spec.help)
            continue
        extra: dict[str, Any] = {"nargs": "+", "action": "extend"} if s.spec.repeat else {}
        parser.add_argument(s.option, dest=s.name, type=s.spec.parse or PARSERS.get(s.kind, str), choices=s.spec.choices,
                            required=s.required, default=argparse.SUPPRESS, metavar=s.spec.metavar,
                            help=s.spec.help + shown, **extra)
    return parser


def build_parser(cls: type, *, prog: str, description: str,
                 parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
                 **kwargs: Any) -> argparse.ArgumentParser:
    """An argparse parser with one option per setting of ``cls``."""
    return add_settings(parser_class(prog=prog, description=description, **kwargs), cls)


def _bounds(spec: Spec) -> Iterator[tuple[str, Callable[[float], bool]]]:
    if spec.minimum is not None and spec.maximum is not None:
        yield f"from {spec.minimum:g} to {spec.maximum:g}", lambda v: spec.minimum <= v <= spec.maximum
        return
    if spec.minimum is not None:
        yield f">= {spec.minimum:g}", lambda v: v >= spec.minimum
    if spec.maximum is not None:
        yield f"<= {spec.maximum:g}", lambda v: v <= spec.maximum
    if spec.above is not None:
        yield f"> {spec.above:g}", lambda v: v > spec.above
    if spec.below is not None:
        yield f"< {spec.below:g}", lambda v: v < spec.below


def check_settings(obj: Any) -> None:
    """Raise a one-line UserError for the first setting of ``obj`` outside its declaration:
    a choice not allowed, a number of the wrong type or out of bounds. An optional setting
    (default None) left at None is fine."""
    for s in declared(type(obj)):
        value = getattr(obj, s.name)
        if value is None and s.field.default is None:
            continue
        if s.spec.choices is not None and value not in s.spec.choices:
            raise UserError(f"{s.option} must be one of {', '.join(map(str, s.spec.choices))}, not {value!r}")
        if s.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, int if s.kind is int else (int, float)):
                raise UserError(f"{s.option} must be {'an integer' if s.kind is int else 'a number'}, got {value!r}")
            bounds = list(_bounds(s.spec))
            if not all(ok(value) for _, ok in bounds):
                raise UserError(f"{s.option} must be {' and '.join(text for text, _ in bounds)}, got {value!r}")


def documented_default(s: Declared) -> str:
    """The default as an option table shows it: ``(required)``, ``off`` for a flag, ``none``,
    the declared ``doc`` text, or the value itself."""
    if s.spec.doc is not None:
        return s.spec.doc
    if s.required:
        return "(required)"
    if s.kind is bool:
        return "off"
    value = s.default()
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)

