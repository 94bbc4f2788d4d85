"""The ``didi`` command line.

Each sub-command is two small functions: ``_add_<name>(subparsers)`` declares its options (most generated from a
typed config dataclass by :func:`add_config_arguments`) and ``_run_<name>(args)`` calls the library. Errors the
user can fix are :class:`didi.errors.DidiError`; they are printed as one line and exit with status 2. A run
stopped by SIGINT/SIGTERM (:class:`didi.errors.RunInterrupted`) exits with 130/143 after its snapshot.

Only the options of the command being run are declared (:func:`build_parser`): declaring them imports the
recipes and torch, which ``didi --help`` does not need (it lists the commands from :data:`SUMMARIES`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import DidiError, RunInterrupted, option_error

# ------------------------------------------------------------------------------------ dataclass <-> argparse

def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(value: str) -> bool:
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
            kwargs.update(type=_parse_bool, metavar="BOOL")
        elif base in (int, float, str):
            kwargs.update(type=base, metavar=base.__name__.upper())
        elif typing.get_origin(base) in (list, tuple):
            item = typing.get_args(base)[0] if typing.get_args(base) else str
            kwargs.update(type=item, nargs="+", metavar=getattr(item, "__name__", "X").upper())
        else:
            kwargs.update(type=str)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        _option_form(f.metadata, kwargs, default, help_text)
        target.add_argument(_option(f.metadata.get("option", f.name)), **kwargs)


def _option_form(metadata: Any, kwargs: dict[str, Any], default: Any, help_text: str) -> None:
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


# ------------------------------------------------------------------------------------------------ commands

def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help=SUMMARIES["info"],
                       description="Print what a run directory holds: model kind and size, tokenizer, diffusion "
                                   "settings, the step of its weights and available snapshots. A checkpoint in "
                                   "another layout (a `didi export` or Hugging Face directory, a Lightning .ckpt) is "
                                   "described as `didi convert` would read it.")
    p.add_argument("run_dir", type=Path, help="a didi run directory (or a checkpoint `didi convert` reads)")
    p.add_argument("--json", action="store_true", help="print config.json as JSON instead of a summary")


def _run_info(args: argparse.Namespace) -> None:
    from .runtime.checkpoint import is_run_dir, list_snapshots, read_run_config, tensors_metadata

    if args.run_dir.exists() and not is_run_dir(args.run_dir):
        _info_checkpoint(args)
        return
    config = read_run_config(args.run_dir)
    if args.json:
        print(json.dumps(config.to_json(), indent=2))
        return
    m = config.model
    print(f"run:        {args.run_dir}")
    print(f"kind:       {config.kind}  (didi {config.didi_version})")
    print(f"model:      {m.arch}, hidden {m.hidden_size}, {m.n_blocks} blocks, {m.n_heads} heads, "
          f"vocab {m.vocab_size}, max length {m.max_seq_len}")
    print(f"tokenizer:  {config.tokenizer.get('type')} ({config.tokenizer.get('vocab_size')} tokens)")
    if config.diffusion is not None:
        d = config.diffusion
        print(f"diffusion:  log-linear eps={d.eps}, mask id {d.mask_index}, time conditioning {d.time_conditioning}")
    for name in ("model", "ema", "discriminator"):
        path = args.run_dir / f"{name}.safetensors"
        if path.exists():
            step = tensors_metadata(path).get("step")
            state = f"step {step}" if step is not None else \
                "converted" if "converted_from" in config.extra else "step unknown"
            print(f"{name + ':':<11} {path.name} ({state}, {path.stat().st_size / 2**20:.1f} MiB)")
    if "converted_from" in config.extra:
        print(f"converted:  from {config.extra['converted_from']} ({config.extra.get('source_layout', '?')} layout)")
    snaps = list_snapshots(args.run_dir)
    if snaps:
        print(f"snapshots:  {', '.join(s.name for s in snaps)}")
    distilled = config.extra.get("distill") if config.kind == "didi" else None
    if isinstance(distilled, dict):  # a student: its own steps and method; the teacher's training is its teacher's
        print(f"method:     {distilled.get('method', 'didi-instruct')} (teacher {config.extra.get('teacher', '?')})")
        print(f"steps:      {distilled.get('steps', '?')} (distillation; the teacher trained "
              f"{config.training.get('steps', '?')})")
    for key in ("preset", "steps", "seq_len", "data"):
        if key in config.training and not (distilled is not None and key == "steps"):
            print(f"{key + ':':<11} {config.training[key]}")
    if config.data.get("data"):
        print(f"split:      split seed {config.data.get('seed', 0)}, valid_fraction "
              f"{config.data.get('valid_fraction', '?')} (held-out documents of corpora without a natural split)")


def _info_checkpoint(args: argparse.Namespace) -> None:
    """``didi info`` on a checkpoint that is not a run directory: what ``didi convert`` would make of it."""
    from .config import to_dict
    from .interop.formats import infer_model_config, read_source

    source = read_source(args.run_dir)
    m = infer_model_config(source)
    files = {f"{stem}.safetensors": f"{weights.origin}, {len(weights.tensors)} tensors"
             for stem, weights in source.files.items()}
    if args.json:
        print(json.dumps({"path": str(source.path), "layout": source.layout, "kind": source.kind,
                          "model": to_dict(m), "diffusion": source.diffusion_hints,
                          "tokenizer": source.tokenizer_spec, "files": files}, indent=2))
        return
    tok = source.tokenizer_spec or {}
    print(f"checkpoint: {source.path} ({source.layout} layout, not a run directory: `didi sample` and `didi.load` "
          "convert it on first use, `didi convert` makes it a run)")
    print(f"kind:       {source.kind}")
    print(f"model:      {m.arch}, hidden {m.hidden_size}, {m.n_blocks} blocks, {m.n_heads} heads, "
          f"vocab {m.vocab_size}, max length {m.max_seq_len}")
    print(f"tokenizer:  {tok.get('type', 'GPT-2' if m.vocab_size == 50258 else 'not included')}"
          + (f" ({tok['vocab_size']} tokens)" if "vocab_size" in tok else ""))
    if source.diffusion_hints:
        print("diffusion:  " + ", ".join(f"{k}={v}" for k, v in source.diffusion_hints.items()))
    for name, what in files.items():
        print(f"{'weights:':<11} {name} ({what})")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help=SUMMARIES["sample"],
                       description="Sample from a run directory: a diffusion teacher, a DiDi-Instruct student or "
                                   "an AR model. Prints decoded samples and writes them as JSON lines.")
    p.add_argument("--model", type=Path, required=True, help="run directory of the model")
    p.add_argument("--nfe", type=int, default=None, help="number of sampling steps = network evaluations budget "
                   "(diffusion models; default 16; an AR model makes one call per token and takes no --nfe)")
    p.add_argument("--num-samples", type=int, default=8, help="how many sequences, per prompt or template if any "
                   "(default 8)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per batch (default: all at once)")
    p.add_argument("--length", "--seq-len", dest="seq_len", type=int, default=None, metavar="N",
                   help="tokens per sample, BOS included (default: the training length; above the model's length: "
                        "semi-autoregressive windows, see --stride; an --infill template sets its own)")
    p.add_argument("--stride", type=int, default=None, metavar="S",
                   help="with --length above the model's length: new tokens per window, the rest of the window is "
                        "context kept from the previous one (default: half a window)")
    conditioning = p.add_mutually_exclusive_group()
    conditioning.add_argument("--prompt", default=None, metavar="TEXT",
                              help="continue this text ([BOS] TEXT is kept, the rest of --length is generated)")
    conditioning.add_argument("--infill", default=None, metavar="TEMPLATE",
                              help="fill each [MASK:n] span of TEMPLATE with n tokens, e.g. "
                                   "\"To be, or not to be: [MASK:8] question.\"")
    conditioning.add_argument("--prompts", type=Path, default=None, metavar="FILE.jsonl",
                              help="one {\"prompt\": TEXT} or {\"infill\": TEMPLATE} per line, --num-samples each")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--sampler", default="ancestral", choices=["ancestral", "rgas", "maskgit", "low-confidence",
                                                              "threshold"],
                   help="ancestral (MDLM with cache), rgas (reward-guided, DiDi-Instruct students), or a "
                        "confidence-ordered sampler: maskgit (MaskGIT), low-confidence (LLaDA's remasking) or "
                        "threshold (Fast-dLLM's parallel decoding; --nfe is then a cap)")
    p.add_argument("--no-cache", action="store_true", help="disable the cache trick (calls the network every step)")
    p.add_argument("--weights", default="ema", choices=["ema", "model"], help="EMA weights (default) or raw")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", type=Path, default=None, help="write samples: .jsonl = JSON lines (tokens, text, nfe, "
                   "seconds; read by didi eval --samples), .txt = plain text as printed, .fasta/.fa/.faa[.gz] = "
                   "FASTA (protein models, which also print FASTA)")
    p.add_argument("--quiet", action="store_true", help="print neither the samples nor progress (only the summary "
                                                        "line on stderr)")
    p.add_argument("--progress", type=_parse_bool, default=None, metavar="BOOL",
                   help="a progress bar over the sampling steps on a terminal, a plain line every 30 s of a long "
                        "batch elsewhere (default: true, false with --quiet)")
    _add_control_arguments(p)
    _add_rgas_arguments(p)


def _add_control_arguments(parser: argparse.ArgumentParser) -> None:
    """``--temperature``, ``--top-k``, ``--top-p`` and the ``--greedy-tail`` flag (:class:`SamplingControls`)."""
    from .diffusion.sampling import SamplingControls

    group = "sampling controls (every sampler; defaults: the model's own distribution)"
    add_config_arguments(parser, SamplingControls, group=group, exclude=("greedy_tail",))
    help_text = SamplingControls.__dataclass_fields__["greedy_tail"].metadata["help"]
    next(g for g in parser._action_groups if g.title == group).add_argument(
        "--greedy-tail", action="store_true", default=None, help=help_text)


def _controls(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling controls of the command line as keyword arguments of ``.sample()`` (validated)."""
    from .diffusion.sampling import SamplingControls

    return dataclasses.asdict(config_from_args(SamplingControls, args))


def _add_rgas_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the samplers that have some: RGAS and the confidence-ordered samplers."""
    from .diffusion.confidence import ConfidenceConfig
    from .diffusion.rgas import RGASConfig

    add_config_arguments(parser, RGASConfig, group="rgas (with --sampler rgas; see didi.diffusion.rgas)")
    add_config_arguments(parser, ConfidenceConfig, exclude=("order",),
                         group="confidence-ordered samplers (with --sampler maskgit, low-confidence or threshold; "
                               "see didi.diffusion.confidence)")


def _sampler_config(args: argparse.Namespace, cls: type, samplers: tuple[str, ...], what: str, **fixed: Any) -> Any:
    """``cls`` (a sampler's options) from the command line when ``--sampler`` is one of ``samplers``, else ``None``
    (its options given with another sampler are an error)."""
    given = [f.name for f in dataclasses.fields(cls) if f.name not in fixed and getattr(args, f.name, None) is not None]
    if args.sampler not in samplers:
        if given:
            raise option_error(given[0], f"is {what} option: it needs --sampler {' or '.join(samplers)}")
        return None
    return config_from_args(cls, args, **fixed)


def _rgas_config(args: argparse.Namespace) -> Any:
    """The ``RGASConfig`` of the command line with ``--sampler rgas``, else ``None`` (RGAS options are an error)."""
    from .diffusion.rgas import RGASConfig

    return _sampler_config(args, RGASConfig, ("rgas",), "an RGAS")


def _confidence_config(args: argparse.Namespace) -> Any:
    """The ``ConfidenceConfig`` of the command line with a confidence-ordered ``--sampler``, else ``None``."""
    from .diffusion.confidence import ORDERS, ConfidenceConfig

    return _sampler_config(args, ConfidenceConfig, ORDERS, "a confidence-ordered sampler's",
                           order=args.sampler if args.sampler in ORDERS else "maskgit")


def _sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``sampler_options`` of ``model.sample`` for the chosen ``--sampler``."""
    rgas, confidence = _rgas_config(args), _confidence_config(args)
    if confidence is not None:
        return {k: v for k, v in dataclasses.asdict(confidence).items() if k != "order"}
    return dataclasses.asdict(rgas) if rgas else {}


def _run_sample(args: argparse.Namespace) -> None:
    from .interop.sample_files import check_sample_path, format_sample, write_samples
    from .pipelines.load import load

    if args.nfe is not None and args.nfe < 1:
        raise option_error("nfe", f"must be >= 1 (got {args.nfe})")
    if args.num_samples < 1:
        raise option_error("num-samples", f"must be >= 1 (got {args.num_samples})")
    if args.out is not None:
        check_sample_path(args.out)
    sampler_options = _sampler_options(args)
    controls = _controls(args)
    model = load(args.model, device=args.device, weights=args.weights)
    if model.kind == "ar" and args.nfe is not None:  # a note, not an error: scripts loop over mixed models
        print(f"[didi] --nfe {args.nfe} does not apply to an autoregressive model: it makes one network call per "
              "generated token", file=sys.stderr)
    results = model.sample(args.num_samples, 16 if args.nfe is None else args.nfe, seed=args.seed,
                           batch_size=args.batch_size,
                           seq_len=args.seq_len, sampler=args.sampler, use_cache=not args.no_cache,
                           progress=not args.quiet if args.progress is None else args.progress,
                           stride=args.stride, **controls, **_conditioning(args, model),
                           **sampler_options)
    records = write_samples(model, results, args.out, settings=dict(  # where the samples came from
        seed=args.seed, use_cache=not args.no_cache, weights=args.weights, seq_len=args.seq_len, stride=args.stride,
        sampler_options=sampler_options))
    if not args.quiet:
        for i, rec in enumerate(records):
            print(format_sample(i, rec))
    total = sum(r.seconds for r in results)
    print(f"[didi] {len(records)} samples, nfe {max(r.nfe for r in results)}, {total:.2f}s"
          + (f", written to {args.out}" if args.out else ""), file=sys.stderr)


def _conditioning(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """``prompt=`` / ``infill=`` of ``model.sample`` from --prompt, --infill or --prompts (read with the model's
    tokenizer)."""
    from .data.prompts import read_prompts

    if args.prompts is not None:
        return {"prompt": read_prompts(args.prompts, model.tokenizer)}
    return {k: getattr(args, k) for k in ("prompt", "infill") if getattr(args, k) is not None}


def _report_written(what: str, path: Path) -> None:
    """One line on the main process only (every torchrun rank runs the command)."""
    from .runtime import distributed

    if distributed.is_main():
        print(f"[didi] {what} written to {path}", file=sys.stderr)


def _add_train_command(sub: argparse._SubParsersAction, name: str, kind: str) -> None:
    from .data.corpora import DataConfig
    from .recipes.train import TrainConfig

    what = "a masked-diffusion (MDLM) teacher" if kind == "mdlm" else "an autoregressive (GPT) baseline/evaluator"
    p = sub.add_parser(name, help=SUMMARIES[name],
                       description=f"Train {what} on a corpus and write a run directory (config.json, "
                                   "model/ema safetensors, tokenizer, trainer_state.pt, checkpoints/).",
                       )
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR exactly where its last intact snapshot stopped (from step 0 "
                        "if its start was interrupted; --steps may be raised to extend it)")
    p.add_argument("--force", action="store_true",
                   help="write the new run into --out even if that folder holds other files or a run that stopped "
                        "before its first snapshot (never into a run with a snapshot)")
    add_config_arguments(p, TrainConfig, group="training")
    add_config_arguments(p, DataConfig, exclude=("seed",), group="data")
    next(g for g in p._action_groups if g.title == "data").add_argument(
        "--split-seed", type=int, default=None, metavar="INT",
        help="seed of the held-out documents of a corpus without a natural split (local text/JSONL, FASTA); "
             "independent of --seed, so runs with different seeds validate on the same text (default: 0)")


def _run_train_command(args: argparse.Namespace, kind: str) -> None:
    from .data.corpora import DataConfig
    from .recipes.train import TrainConfig, resume_config, train

    if args.resume is not None:
        given = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if getattr(args, f) is not None}
        run_dir = train(resume_config(args.resume, **given), DataConfig(), kind=kind, resume=True)
        _report_written("run", run_dir)
        return
    if not args.out:
        raise option_error("out", "a run directory is required (or --resume RUN_DIR)")
    cfg = config_from_args(TrainConfig, args)
    data_cfg = config_from_args(DataConfig, argparse.Namespace(**{**vars(args), "seed": args.split_seed}))
    _report_written("run", train(cfg, data_cfg, kind=kind, force=args.force))


def _add_train(sub: argparse._SubParsersAction) -> None:
    _add_train_command(sub, "train", "mdlm")


def _run_train(args: argparse.Namespace) -> None:
    _run_train_command(args, "mdlm")


def _add_train_ar(sub: argparse._SubParsersAction) -> None:
    _add_train_command(sub, "train-ar", "ar")


def _run_train_ar(args: argparse.Namespace) -> None:
    _run_train_command(args, "ar")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help=SUMMARIES["convert"],
                       description="Convert a Lightning .ckpt (MDLM, DUO, DiDi-Instruct), a Hugging Face style "
                                   "directory (the DiDi-Instruct release, kuleshov-group/mdlm-owt, a `didi export`), "
                                   "a didi run directory or a Hub repo id into a didi run directory. The model size "
                                   "is read from the tensor shapes; every key is checked, nothing is written on error.")
    p.add_argument("src", help="checkpoint file, directory, or Hub repo id (e.g. haoyangzheng/didi-instruct-small)")
    p.add_argument("dst", type=Path, help="run directory to create")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer.json or run directory of the tokenizer (needed unless the vocabulary is GPT-2's)")
    p.add_argument("--n-heads", type=int, default=None,
                   help="attention heads (only needed when the checkpoint lacks rotary_emb.inv_freq and its width "
                        "is not a preset)")
    p.add_argument("--seq-len", type=int, default=None, help="longest sequence (default: the source's, else 1024)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists and is not empty")
    p.add_argument("--verbose", action="store_true", help="list every source key and where it went")


def _run_convert(args: argparse.Namespace) -> None:
    from .interop.convert import convert

    conversion = convert(args.src, args.dst, tokenizer=args.tokenizer, n_heads=args.n_heads, seq_len=args.seq_len,
                         force=args.force)
    print("\n".join(conversion.describe(verbose=args.verbose)))


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=SUMMARIES["export"],
                       description="Export a diffusion run directory as model.safetensors (+ discriminator."
                                   "safetensors for DiDi-Instruct students), config.json and tokenizer files, the "
                                   "layout of the DiDi-Instruct release; `didi convert` reads it back bit-exactly. "
                                   "The folder also loads in plain transformers, without didi: "
                                   "AutoModelForMaskedLM.from_pretrained(DST, trust_remote_code=True) and "
                                   "AutoTokenizer.from_pretrained(DST, trust_remote_code=True); the model's "
                                   ".sample(n, num_steps=8, seed=0) is didi's ancestral sampler "
                                   "(configuration_didi.py and modeling_didi.py hold didi's own network and sampler "
                                   "code).")
    p.add_argument("run_dir", type=Path, help="a didi run directory (mdlm or didi)")
    p.add_argument("dst", type=Path, help="directory to create")
    p.add_argument("--weights", default="ema", choices=["ema", "model"], help="EMA weights (default) or raw")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload DST to this Hub model repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--force", action="store_true", help="replace DST if it exists and is not empty")


def _run_export(args: argparse.Namespace) -> None:
    from .interop.export import export, push_to_hub

    for path in export(args.run_dir, args.dst, weights=args.weights, force=args.force):
        print(f"{path}  ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(args.dst, args.push_to_hub, private=args.private)}")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help=SUMMARIES["serve"],
                       description="Serve models over HTTP on this machine. POST /api/generate takes JSON (model, "
                                   "prompt or infill, nfe, sampler, temperature, top_k, top_p, seed, num_samples, "
                                   "seq_len; all optional) and answers the samples, the network calls made and the "
                                   "latency; POST /api/stream answers the same as JSON lines, one per sampling step "
                                   "(the sequence with its masked positions) then the result; GET /api/models lists "
                                   "the models. The page at / shows every model side by side, its samples filling "
                                   "in step by step (e.g. a student at 8 steps beside its teacher at 128) and the "
                                   "time each took. Requests are queued and run one at a time. Needs the serve "
                                   "extra: pip install 'didi[serve]'.")
    p.add_argument("--model", dest="models", action="append", required=True, metavar="RUN",
                   help="a run directory, `didi export` folder, checkpoint or Hub id (repeat to serve several)")
    p.add_argument("--nfe", type=int, action="append", default=None, metavar="N",
                   help="default steps of each --model, in order, or one for all (default: 8 for a DiDi-Instruct "
                        "student, 128 for a teacher)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--weights", default="ema", choices=["ema", "model"], help="EMA weights (default) or raw")


def _run_serve(args: argparse.Namespace) -> None:
    try:
        from .serve.app import serve
    except ImportError as exc:
        raise option_error("model", f"serving needs the serve extra: pip install 'didi[serve]' ({exc.name} is "
                                    "missing)") from None
    from .serve.api import served_models

    models = served_models(args.models, args.nfe, device=args.device, weights=args.weights)
    for m in models:
        print(f"[didi] serving {m.name}: {m.pipeline.kind} from {m.source}", file=sys.stderr)
    print(f"[didi] page: http://{args.host}:{args.port}/", file=sys.stderr)
    serve(models, host=args.host, port=args.port)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .recipes.evaluate.runner import EvalConfig

    p = sub.add_parser("eval", help=SUMMARIES["eval"],
                       description="Sample every --model at every --nfe budget (an AR model: one row) and every "
                                   "temperature, with every seed; score the samples with an evaluator LM (generative "
                                   "perplexity, the paper's protocol; several side by side), their entropy, "
                                   "repetition, diversity and copy rate against the training data, and optionally "
                                   "MAUVE against held-out text; each model's validation likelihood; time the "
                                   "sampling. With --json, rows are saved as they finish and a re-run resumes. "
                                   "Reference "
                                   "rows score held-out data and the AR evaluator's own samples alike. A temperature "
                                   "sweep (--temperatures) adds each model x NFE's gen-PPL at a matched entropy. "
                                   "Runs trained on --data markov (markov.json in the run directory) also get the "
                                   "exact metrics of that language: invalid-transition rate, NLL per transition and "
                                   "the conditional entropy H(X'|X), which --frontier-entropy conditional makes the "
                                   "entropy axis of the sweeps. "
                                   "Prints Markdown tables; --json and --plot save them.")
    add_config_arguments(p, EvalConfig, exclude=("rgas", "confidence"))
    _add_rgas_arguments(p)


def _run_eval(args: argparse.Namespace) -> None:
    from .recipes.evaluate.plots import plot_report
    from .recipes.evaluate.report import write_report
    from .recipes.evaluate.runner import EvalConfig, evaluate, frontier_warning
    from .recipes.evaluate.tables import format_table

    config = config_from_args(EvalConfig, args, rgas=_rgas_config(args), confidence=_confidence_config(args))
    report = evaluate(config)
    print(format_table(report))
    warning = frontier_warning(report)  # a target entropy no sweep brackets: "not reached", and the report kept
    if warning:
        print(f"[didi] warning: {warning}", file=sys.stderr)
    if config.json:
        write_report(report, Path(config.json))
        print(f"[didi] report written to {config.json}", file=sys.stderr)
    if config.plot:
        plot_report(report, Path(config.plot))
        print(f"[didi] plot written to {config.plot}", file=sys.stderr)


DISTILL_DATA_OPTIONS = ("data", "seq_len", "max_documents", "folio", "valid_fraction", "cache_dir")


def _add_distill(sub: argparse._SubParsersAction) -> None:
    from .data.corpora import DataConfig
    from .recipes.distill import METHODS
    from .recipes.method import DistillConfig

    p = sub.add_parser("distill", help=SUMMARIES["distill"],
                       description="Distil a few-step student (initialised from the teacher). --method didi-instruct "
                                   "(default): the integral-KL policy gradient with an adversarial discriminator, "
                                   "grouped reward normalisation and intermediate-state matching; its defaults are "
                                   "the published hyper-parameters (docs/method.md).")
    p.add_argument("--resume", type=Path, default=None, metavar="STUDENT_DIR",
                   help="continue a distillation run from its last snapshot")
    p.add_argument("--force", action="store_true",
                   help="write the new student into --out even if that folder holds other files (never into a run)")
    add_config_arguments(p, DistillConfig, group="distillation (every --method; the defaults shown are "
                                                  "didi-instruct's)")
    base = {f.name: f for f in dataclasses.fields(DistillConfig)}
    declared = set(base)
    for name, (cls, _) in METHODS.items():
        fields = dataclasses.fields(cls)
        changed = [f"--{f.name.replace('_', '-')} {f.default}" for f in fields
                   if f.name in base and f.name not in ("method", "steps") and f.default != base[f.name].default]
        shared = {f.name: f for f in fields if f.name not in declared}
        helps, defaults = {}, {}
        for other, (other_cls, _) in METHODS.items():  # an option of several methods: one flag, every meaning
            for f in dataclasses.fields(other_cls) if other != name else ():
                if f.name in shared and f.name not in base:
                    mine = shared[f.name]
                    helps[f.name] = f"{name}: {mine.metadata['help']}; {other}: {f.metadata['help']}"
                    defaults[f.name] = f"{mine.default} ({name}), {f.default} ({other})"
        title = f"{name} (--method {name}" + (f"; its defaults: {', '.join(changed)}" if changed else "") + ")"
        add_config_arguments(p, cls, group=title, exclude=tuple(f.name for f in fields if f.name not in shared),
                             helps=helps, defaults=defaults)
        declared |= set(shared)
    add_config_arguments(p, DataConfig, group="data (default: the teacher's corpus and settings)",
                         exclude=tuple(f for f in DataConfig.__dataclass_fields__ if f not in DISTILL_DATA_OPTIONS))


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The distillation options given on the command line (every method's)."""
    from .recipes.distill import METHODS

    names = {f.name for cls, _ in METHODS.values() for f in dataclasses.fields(cls)}
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _run_distill(args: argparse.Namespace) -> None:
    from .recipes.distill import distill, method_config, resume_config

    overrides = {k: getattr(args, k) for k in DISTILL_DATA_OPTIONS if getattr(args, k, None) is not None}
    given = _method_options(args)
    if args.resume is not None:
        _report_written("student", distill(resume_config(args.resume, **given), overrides, resume=True))
        return
    if not args.out:
        raise option_error("out", "a student run directory is required (or --resume STUDENT_DIR)")
    if not args.teacher:
        raise option_error("teacher", "a teacher run directory is required")
    cls = method_config(args.method or "didi-instruct")
    own = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted(name for name in given if name not in own)
    if foreign:
        raise option_error(foreign[0], f"is not an option of --method {args.method or 'didi-instruct'}")
    _report_written("student", distill(config_from_args(cls, args), overrides, force=args.force))


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    from .recipes.quickstart import QuickstartConfig

    p = sub.add_parser("quickstart", help=SUMMARIES["quickstart"],
                       description="The whole pipeline on the embedded Gutenberg Shakespeare as UTF-8 bytes: a tiny "
                                   "MDLM teacher, its samples at 128 and 8 NFE, a DiDi-Instruct student at 8 NFE, "
                                   "and an evaluation table under an AR model trained on the same bytes (the "
                                   "student beats its teacher here: docs/results-bytes.md). Finished stages are "
                                   "reused when run again. --regime bpe: the same under a 4096 BPE (samples at "
                                   "1024 and 16 NFE). --regime markov: the same on the synthetic Markov language "
                                   "(samples at 128 and 8 NFE, invalid transitions counted exactly against the "
                                   "chain instead of an AR evaluator).")
    add_config_arguments(p, QuickstartConfig)


def _run_quickstart(args: argparse.Namespace) -> None:
    from .recipes.quickstart import QuickstartConfig, quickstart

    quickstart(config_from_args(QuickstartConfig, args))


def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help=SUMMARIES["cache"],
                       description="didi caches token blocks of every corpus it tokenizes (tokens/) and a converted "
                                   "copy of checkpoints that `didi sample` / `didi.load` are given in another layout "
                                   "(converted/). The cache is $DIDI_CACHE, else $XDG_CACHE_HOME/didi, else "
                                   "~/.cache/didi; anything removed is rebuilt when needed.")
    p.add_argument("action", choices=["list", "clear"], help="list: every entry with its size; clear: remove them")


def _run_cache(args: argparse.Namespace) -> None:
    from .runtime.cache import cache_root, clear, entries, format_size

    root = cache_root()
    if args.action == "clear":
        print(f"removed {format_size(clear(root))} from {root}")
        return
    found = entries(root)
    print(f"{root}: {len(found)} entries, {format_size(sum(e.size for e in found))}")
    for e in found:
        print(f"  {e.section + '/' + e.name:<56} {format_size(e.size):>10}  {e.about}")


SUMMARIES: dict[str, str] = {
    "quickstart": "train, distill, sample and evaluate on the embedded corpus (CPU-sized)",
    "train": "train a masked-diffusion (MDLM) teacher",
    "train-ar": "train an autoregressive (GPT) baseline/evaluator",
    "distill": "distill a few-step student from a teacher with DiDi-Instruct",
    "info": "describe a run directory (kind, size, tokenizer, training state)",
    "sample": "generate text (or proteins) from any model",
    "convert": "turn a published checkpoint (MDLM/DUO .ckpt, DiDi-Instruct, Hub) into a run directory",
    "export": "write a run directory in the Hugging Face layout (optionally push it)",
    "eval": "gen-PPL, entropy, MAUVE, likelihood and speed of models side by side (or of samples)",
    "cache": "list or clear the cache (token blocks, converted checkpoints)",
    "serve": "serve models over HTTP, with a page that shows generation step by step",
}
"""The one-line help of each command in ``didi --help``, declared without importing the command's modules."""

COMMANDS: list[tuple[str, Callable, Callable]] = [
    ("quickstart", _add_quickstart, _run_quickstart),
    ("train", _add_train, _run_train),
    ("train-ar", _add_train_ar, _run_train_ar),
    ("distill", _add_distill, _run_distill),
    ("info", _add_info, _run_info),
    ("sample", _add_sample, _run_sample),
    ("convert", _add_convert, _run_convert),
    ("export", _add_export, _run_export),
    ("eval", _add_eval, _run_eval),
    ("cache", _add_cache, _run_cache),
    ("serve", _add_serve, _run_serve),
]


def build_parser(command: str | None = None, *, full: bool = False) -> argparse.ArgumentParser:
    """The ``didi`` parser with the options of ``command`` (every command's with ``full``).

    The other commands are declared by their summary only (:data:`SUMMARIES`): declaring their options would
    import their configs, hence torch, and take about a second that ``didi --help`` does not need. A command
    without a summary is always declared in full.
    """
    parser = argparse.ArgumentParser(
        prog="didi",
        description="Ultra-fast language generation with masked diffusion LMs: train an MDLM teacher, distill a "
                    "few-step student with DiDi-Instruct, sample and evaluate.",
        epilog="Run `didi COMMAND --help` for the options of a command. Start with `didi quickstart`.")
    parser.add_argument("--version", action="version", version=f"didi {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add, run in COMMANDS:
        if full or name == command or name not in SUMMARIES:
            add(sub)
        else:
            sub.add_parser(name, help=SUMMARIES[name])
        sub.choices[name].set_defaults(_run=run)
    return parser


def _version() -> str:
    from .version import __version__

    return __version__


def _report_interrupted(exc: RunInterrupted) -> None:
    """The interruption line on the main process; every rank waits for it before exiting (torchrun stops the
    remaining workers as soon as one exits non-zero)."""
    from .runtime import distributed

    if distributed.is_main():
        print(f"[didi] {exc}", file=sys.stderr)
    distributed.barrier()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        args._run(args)
    except RunInterrupted as exc:
        _report_interrupted(exc)
        return exc.exit_code
    except DidiError as exc:
        print(f"didi: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("didi: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
