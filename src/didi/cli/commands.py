"""The commands of ``didi``: for each, ``_add_<name>(subparsers)`` declares its options (most generated from a typed
config dataclass, :mod:`.options`) and ``_run_<name>(args)`` calls the library. Heavy modules are imported inside
the functions, so that ``didi --help`` imports none of them."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import option_error
from .options import (
    add_config_arguments,
    add_control_arguments,
    add_sampler_arguments,
    confidence_config,
    config_from_args,
    parse_bool,
    rgas_config,
    sampler_options,
    sampling_controls,
)

SUMMARIES: dict[str, str] = {
    "quickstart": "train, distill, sample and evaluate on the embedded corpus (CPU-sized)",
    "train": "train a masked-diffusion (MDLM) teacher",
    "train-ar": "train an autoregressive (GPT) baseline/evaluator",
    "distill": "distill a few-step student from a teacher (DiDi-Instruct, SDTT)",
    "info": "describe a run directory (kind, size, tokenizer, training state)",
    "sample": "generate text (or proteins) from any model",
    "convert": "turn a published checkpoint (MDLM/DUO .ckpt, DiDi-Instruct, Hub) into a run directory",
    "export": "write a run directory in the Hugging Face layout (optionally push it)",
    "eval": "gen-PPL, entropy, MAUVE, likelihood and speed of models side by side (or of samples)",
    "cache": "list or clear the cache (token blocks, converted checkpoints, teacher pools)",
    "serve": "serve models over HTTP, with a page that shows generation step by step",
}
"""The one-line help of each command in ``didi --help``, declared without importing the command's modules."""


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help=SUMMARIES["info"],
                       description="Print what a run directory holds: model kind and size, tokenizer, diffusion "
                                   "settings, the step of its weights and available snapshots. A checkpoint in "
                                   "another layout (a `didi export` or Hugging Face directory, a Lightning .ckpt) is "
                                   "described as `didi convert` would read it.")
    p.add_argument("run_dir", type=Path, help="a didi run directory (or a checkpoint `didi convert` reads)")
    p.add_argument("--json", action="store_true", help="print config.json as JSON instead of a summary")


def _run_info(args: argparse.Namespace) -> None:
    from ..runtime.checkpoint import is_run_dir, list_snapshots, read_run_config, tensors_metadata

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
    from ..config import to_dict
    from ..interop.formats import infer_model_config, read_source

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
    p.add_argument("--progress", type=parse_bool, default=None, metavar="BOOL",
                   help="a progress bar over the sampling steps on a terminal, a plain line every 30 s of a long "
                        "batch elsewhere (default: true, false with --quiet)")
    add_control_arguments(p)
    add_sampler_arguments(p)


def _run_sample(args: argparse.Namespace) -> None:
    from ..interop.sample_files import check_sample_path, format_sample, write_samples
    from ..pipelines.load import load

    if args.nfe is not None and args.nfe < 1:
        raise option_error("nfe", f"must be >= 1 (got {args.nfe})")
    if args.num_samples < 1:
        raise option_error("num-samples", f"must be >= 1 (got {args.num_samples})")
    if args.out is not None:
        check_sample_path(args.out)
    options_of_sampler = sampler_options(args)
    controls = sampling_controls(args)
    model = load(args.model, device=args.device, weights=args.weights)
    if model.kind == "ar" and args.nfe is not None:  # a note, not an error: scripts loop over mixed models
        print(f"[didi] --nfe {args.nfe} does not apply to an autoregressive model: it makes one network call per "
              "generated token", file=sys.stderr)
    results = model.sample(args.num_samples, 16 if args.nfe is None else args.nfe, seed=args.seed,
                           batch_size=args.batch_size,
                           seq_len=args.seq_len, sampler=args.sampler, use_cache=not args.no_cache,
                           progress=not args.quiet if args.progress is None else args.progress,
                           stride=args.stride, **controls, **_conditioning(args, model),
                           **options_of_sampler)
    records = write_samples(model, results, args.out, settings=dict(  # where the samples came from
        seed=args.seed, use_cache=not args.no_cache, weights=args.weights, seq_len=args.seq_len, stride=args.stride,
        sampler_options=options_of_sampler))
    if not args.quiet:
        for i, rec in enumerate(records):
            print(format_sample(i, rec))
    total = sum(r.seconds for r in results)
    print(f"[didi] {len(records)} samples, nfe {max(r.nfe for r in results)}, {total:.2f}s"
          + (f", written to {args.out}" if args.out else ""), file=sys.stderr)


def _conditioning(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """``prompt=`` / ``infill=`` of ``model.sample`` from --prompt, --infill or --prompts (read with the model's
    tokenizer)."""
    from ..data.prompts import read_prompts

    if args.prompts is not None:
        return {"prompt": read_prompts(args.prompts, model.tokenizer)}
    return {k: getattr(args, k) for k in ("prompt", "infill") if getattr(args, k) is not None}


def _report_written(what: str, path: Path) -> None:
    """One line on the main process only (every torchrun rank runs the command)."""
    from ..runtime import distributed

    if distributed.is_main():
        print(f"[didi] {what} written to {path}", file=sys.stderr)


def _add_train_command(sub: argparse._SubParsersAction, name: str, kind: str) -> None:
    from ..data.corpora import DataConfig
    from ..recipes.train import TrainConfig

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
    from ..data.corpora import DataConfig
    from ..recipes.train import TrainConfig, resume_config, train

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
    from ..interop.convert import convert

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
    from ..interop.export import export, push_to_hub

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
        from ..serve.app import serve
    except ImportError as exc:
        raise option_error("model", f"serving needs the serve extra: pip install 'didi[serve]' ({exc.name} is "
                                    "missing)") from None
    from ..serve.api import served_models

    models = served_models(args.models, args.nfe, device=args.device, weights=args.weights)
    for m in models:
        print(f"[didi] serving {m.name}: {m.pipeline.kind} from {m.source}", file=sys.stderr)
    print(f"[didi] page: http://{args.host}:{args.port}/", file=sys.stderr)
    serve(models, host=args.host, port=args.port)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from ..recipes.evaluate.runner import EvalConfig

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
    add_sampler_arguments(p)


def _run_eval(args: argparse.Namespace) -> None:
    from ..recipes.evaluate.plots import plot_report
    from ..recipes.evaluate.report import write_report
    from ..recipes.evaluate.runner import EvalConfig, evaluate, frontier_warning
    from ..recipes.evaluate.tables import format_table

    config = config_from_args(EvalConfig, args, rgas=rgas_config(args), confidence=confidence_config(args))
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
    from ..data.corpora import DataConfig
    from ..recipes.distill import METHODS
    from ..recipes.method import DistillConfig

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
    from ..recipes.distill import METHODS

    names = {f.name for cls, _ in METHODS.values() for f in dataclasses.fields(cls)}
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _run_distill(args: argparse.Namespace) -> None:
    from ..recipes.distill import distill, method_config, resume_config

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
    from ..recipes.quickstart import QuickstartConfig

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
    from ..recipes.quickstart import QuickstartConfig, quickstart

    quickstart(config_from_args(QuickstartConfig, args))


def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help=SUMMARIES["cache"],
                       description="didi caches token blocks of every corpus it tokenizes (tokens/), a converted "
                                   "copy of checkpoints that `didi sample` / `didi.load` are given in another layout "
                                   "(converted/) and the teacher samples of pure distillations (teacher-pools/). The "
                                   "cache is $DIDI_CACHE, else $XDG_CACHE_HOME/didi, else "
                                   "~/.cache/didi; anything removed is rebuilt when needed.")
    p.add_argument("action", choices=["list", "clear"], help="list: every entry with its size; clear: remove them")


def _run_cache(args: argparse.Namespace) -> None:
    from ..runtime.cache import cache_root, clear, entries, format_size

    root = cache_root()
    if args.action == "clear":
        print(f"removed {format_size(clear(root))} from {root}")
        return
    found = entries(root)
    print(f"{root}: {len(found)} entries, {format_size(sum(e.size for e in found))}")
    for e in found:
        print(f"  {e.section + '/' + e.name:<56} {format_size(e.size):>10}  {e.about}")
