"""The command line's options from typed config dataclasses (one ``--option`` per field, its ``--help`` from the
field's metadata), and the option groups several commands share: sampling controls and sampler settings."""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from ..errors import option_error


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false (got {value!r})")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = (),
                         group: str | None = None, defaults: dict[str, Any] | None = None,
                         helps: dict[str, str] | None = None) -> None:
    """Add one ``--option`` per field of dataclass ``cls`` (help text from ``metadata['help']``, or ``helps``; the
    default shown from ``defaults``, else the field's).

    Defaults are left as ``None`` on the namespace so that :func:`config_from_args` can tell "not given" apart.
    """
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if origin in (typing.Union, types.UnionType) and len(args) == 1 else hint
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else
                               (f.default_factory() if f.default_factory is not dataclasses.MISSING else None))
        help_text = (helps or {}).get(f.name, f.metadata.get("help", ""))
        shown = "" if default is None or default == "" else f" (default: {default})"  # "": required or unset
        kwargs: dict[str, Any] = dict(dest=f.name, default=None, help=help_text + shown)
        if base is bool:
            kwargs.update(type=parse_bool, metavar="BOOL")
        elif base in (int, float, str):
            kwargs.update(type=base, metavar=base.__name__.upper())
        elif typing.get_origin(base) in (list, tuple):
            item = typing.get_args(base)[0] if typing.get_args(base) else str
            kwargs.update(type=item, nargs="+", metavar=getattr(item, "__name__", "X").upper())
        else:
            kwargs.update(type=str)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        option_form(f.metadata, kwargs, default, help_text)
        target.add_argument(option_name(f.metadata.get("option", f.name)), **kwargs)


def option_form(metadata: Any, kwargs: dict[str, Any], default: Any, help_text: str) -> None:
    """The option forms a field's metadata asks for, instead of ``--name VALUE`` (``kwargs`` updated in place):

    * ``flag=True`` / ``flag=False``: a switch that stores that value (``--mauve``; ``--no-cache`` with
      ``option="no-cache"``, the option's name when it is not the field's);
    * ``negatable=True``: ``--name`` / ``--no-name`` (``argparse.BooleanOptionalAction``; the default shown as on/off);
    * ``append=True``: repeatable, each use adds one value (``--model A --model B``);
    * ``comma_list=True``: one comma-separated string (``--nfe 8,16``) that the dataclass parses (its errors name the
      option); ``metavar`` ``N`` shows as ``N[,N...]``.
    """
    metavar = metadata.get("metavar")
    if "flag" in metadata:
        for key in ("type", "metavar", "choices"):
            kwargs.pop(key, None)
        kwargs.update(action="store_const", const=metadata["flag"], help=help_text)
    elif metadata.get("negatable"):
        for key in ("type", "metavar", "choices"):
            kwargs.pop(key, None)
        kwargs.update(action=argparse.BooleanOptionalAction,
                      help=f"{help_text} (default: {'on' if default else 'off'})")
    elif metadata.get("append"):
        kwargs.pop("nargs", None)
        kwargs.update(action="append", type=str, help=help_text, **({"metavar": metavar} if metavar else {}))
    elif metadata.get("comma_list"):
        kwargs.pop("nargs", None)
        shown = f" (default: {','.join(map(str, default))})" if default else ""
        kwargs.update(type=str, metavar=f"{metavar or 'X'}[,{metavar or 'X'}...]", help=help_text + shown)
    elif metavar:
        kwargs["metavar"] = metavar


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """Build ``cls`` from parsed arguments: explicit options > ``overrides`` > dataclass defaults."""
    values: dict[str, Any] = dict(overrides)
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    return cls(**{k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(cls)}})


# ------------------------------------------------------------------------------------- shared option groups

def add_control_arguments(parser: argparse.ArgumentParser) -> None:
    """``--temperature``, ``--top-k``, ``--top-p`` and the ``--greedy-tail`` flag (:class:`SamplingControls`)."""
    from ..diffusion.sampling import SamplingControls

    group = "sampling controls (every sampler; defaults: the model's own distribution)"
    add_config_arguments(parser, SamplingControls, group=group, exclude=("greedy_tail",))
    help_text = SamplingControls.__dataclass_fields__["greedy_tail"].metadata["help"]
    next(g for g in parser._action_groups if g.title == group).add_argument(
        "--greedy-tail", action="store_true", default=None, help=help_text)


def sampling_controls(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling controls of the command line as keyword arguments of ``.sample()`` (validated)."""
    from ..diffusion.sampling import SamplingControls

    return dataclasses.asdict(config_from_args(SamplingControls, args))


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the samplers that have some: RGAS and the confidence-ordered samplers."""
    from ..diffusion.confidence import ConfidenceConfig
    from ..diffusion.rgas import RGASConfig

    add_config_arguments(parser, RGASConfig, group="rgas (with --sampler rgas; see didi.diffusion.rgas)")
    add_config_arguments(parser, ConfidenceConfig, exclude=("order",),
                         group="confidence-ordered samplers (with --sampler maskgit, low-confidence or threshold; "
                               "see didi.diffusion.confidence)")


def sampler_config(args: argparse.Namespace, cls: type, samplers: tuple[str, ...], what: str, **fixed: Any) -> Any:
    """``cls`` (a sampler's options) from the command line when ``--sampler`` is one of ``samplers``, else ``None``
    (its options given with another sampler are an error)."""
    given = [f.name for f in dataclasses.fields(cls) if f.name not in fixed and getattr(args, f.name, None) is not None]
    if args.sampler not in samplers:
        if given:
            raise option_error(given[0], f"is {what} option: it needs --sampler {' or '.join(samplers)}")
        return None
    return config_from_args(cls, args, **fixed)


def rgas_config(args: argparse.Namespace) -> Any:
    """The ``RGASConfig`` of the command line with ``--sampler rgas``, else ``None`` (RGAS options are an error)."""
    from ..diffusion.rgas import RGASConfig

    return sampler_config(args, RGASConfig, ("rgas",), "an RGAS")


def confidence_config(args: argparse.Namespace) -> Any:
    """The ``ConfidenceConfig`` of the command line with a confidence-ordered ``--sampler``, else ``None``."""
    from ..diffusion.confidence import ORDERS, ConfidenceConfig

    return sampler_config(args, ConfidenceConfig, ORDERS, "a confidence-ordered sampler's",
                           order=args.sampler if args.sampler in ORDERS else "maskgit")


def sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``sampler_options`` of ``model.sample`` for the chosen ``--sampler``."""
    rgas, confidence = rgas_config(args), confidence_config(args)
    if confidence is not None:
        return {k: v for k, v in dataclasses.asdict(confidence).items() if k != "order"}
    return dataclasses.asdict(rgas) if rgas else {}
