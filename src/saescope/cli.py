"""The `saescope` command line. It only builds each module's own config and calls it; the
help text of every option is the docstring of the config field it sets."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import math
import sys
import textwrap
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

from saescope.activations import ModelBatches, harvest_to_cache, split, text_contexts
from saescope.data import ActivationFile, SeedTask, SeedTaskConfig
from saescope.data.cache import ActivationCache, CacheBatches, is_cache
from saescope.data.stream import HELD_OUT_SEED_OFFSET
from saescope.errors import ConfigError, SaescopeError
from saescope.evaluate import evaluate, evaluate_in_model, plot_density
from saescope.models import MODELS, describe_hooks, load_model
from saescope.saes import ARCHITECTURES, SAE, load, make_sae
from saescope.saes.io import CFG_FILE
from saescope.text import table as _table
from saescope.train import TrainConfig, train

SAE_SHAPE_FIELDS = {"d_in", "d_out", "apply_b_dec_to_input"}  # set from the data


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases (the string under each field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _parse_type(annotation: str):
    """The converter for a field annotation such as 'int | None'."""
    base = annotation.replace("| None", "").strip()
    return {"int": int, "float": float, "str": str, "bool": _bool}.get(base, str)


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def add_config_args(
    parser: argparse._ActionsContainer,
    cls: type,
    skip: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    """One --option per dataclass field; defaults stay None so only given values are used."""
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = docs.get(f.name, "") + f" (default: {default})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_parse_type(str(f.type)),
            default=None,
            help=help_.replace("%", "%%"),
        )


def _given(ns: argparse.Namespace, cls: type, skip: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        f.name: getattr(ns, f.name)
        for f in dataclasses.fields(cls)
        if f.name not in skip and getattr(ns, f.name, None) is not None
    }


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _arch_fields() -> dict[str, list[str]]:
    """Each architecture-specific option and the architectures that take it."""
    out: dict[str, list[str]] = {}
    for name, cls in ARCHITECTURES.items():
        for f in dataclasses.fields(cls.config_cls):
            if f.name not in SAE_SHAPE_FIELDS and f.name != "d_sae":
                out.setdefault(f.name, []).append(name)
    return out


# ----- data -------------------------------------------------------------------------------


def _data_source(ns: argparse.Namespace, batch_size: int, seed: int):
    """The training stream: the synthetic task, an activation file or cache (--data), or a
    model run on the fly (--model)."""
    if getattr(ns, "model", None):
        if ns.data != "synthetic":
            raise ConfigError("give --model (harvest on the fly) or --data, not both")
        model, tok = load_model(ns.model)
        contexts, fp = text_contexts(model, tok, ns.text, ns.context)
        batches = ModelBatches(
            model, split(contexts, "train"), _hook(ns), ns.target, batch_size, seed
        )
        batches.fingerprint = fp
        return batches
    if is_cache(ns.data):
        return CacheBatches(ns.data, _hook(ns), ns.target, batch_size, seed)
    given = [f"--{n}" for n in ("hook", "target", "text") if getattr(ns, n, None)]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to --model or a cache, not --data {ns.data}")
    if ns.data == "synthetic":
        return SeedTask(SeedTaskConfig(**_given(ns, SeedTaskConfig)), batch_size, seed)
    return ActivationFile(ns.data, batch_size, seed)


def _abs(paths: list[str] | None) -> list[str] | None:
    """Text paths made absolute, so a run's evaluation finds them from any folder."""
    return [str(Path(p).resolve()) for p in paths] if paths else None


def _model_ref(name: str) -> str:
    """A model's name, or its folder made absolute (for a later eval from anywhere)."""
    return name if name in MODELS else str(Path(name).expanduser().resolve())


def _hook(ns: argparse.Namespace) -> str:
    if not ns.hook:
        raise ConfigError("give --hook, the hook point to train on (saescope hooks MODEL)")
    return ns.hook


def _data_meta(source: Any, ns: argparse.Namespace) -> dict[str, Any]:
    if isinstance(source, SeedTask):
        return {"kind": "synthetic", "task": dataclasses.asdict(source.cfg), "seed": source.seed}
    if isinstance(source, ModelBatches | CacheBatches):
        meta: dict[str, Any] = {"hook": ns.hook, "target": ns.target, "seed": source.seed}
        if isinstance(source, CacheBatches):
            src = source.cache.source
            return {
                "kind": "cache",
                "path": str(source.cache.path.resolve()),
                "rows": source.cache.n_rows,
                **meta,
                "model": src.get("model"),
                "text": src.get("text"),
                "fingerprint": src.get("fingerprint"),
                "context": src.get("context"),
            }
        return {
            "kind": "model",
            "model": _model_ref(ns.model),
            "text": _abs(ns.text),
            "fingerprint": source.fingerprint,
            "context": ns.context,
            **meta,
        }
    return {"kind": "file", "path": str(source.path), "seed": source.seed}


# ----- commands ---------------------------------------------------------------------------


def cmd_train(ns: argparse.Namespace) -> int:
    arch = ns.arch
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    cfg_cls = ARCHITECTURES[arch].config_cls
    allowed = {f.name for f in dataclasses.fields(cfg_cls)}
    for name, archs in _arch_fields().items():
        if getattr(ns, name, None) is not None and name not in allowed:
            raise ConfigError(
                f"--{name.replace('_', '-')} applies to {', '.join(archs)}, not {arch}"
            )
    given = _given(ns, TrainConfig)
    _check_tokens(ns.tokens)
    source = _data_source(ns, ns.batch_size, given.get("seed", 0))
    if ns.tokens is not None:
        if "steps" in given:
            raise ConfigError("give --tokens or --steps, not both")
        given["steps"] = max(1, -(-ns.tokens // _batch_tokens(source)))
    tcfg = TrainConfig(**given)
    d_in = source.cfg.d_in if isinstance(source, SeedTask) else source.d_in
    d_out = d_in if isinstance(source, SeedTask) else source.d_out
    transcoder = (isinstance(source, ActivationFile) and source.y is not None) or (
        isinstance(source, ModelBatches | CacheBatches) and bool(ns.target)
    )
    sae_kw = _given(ns, cfg_cls, SAE_SHAPE_FIELDS)
    if isinstance(sae_kw.get("k"), float) and str(_field(cfg_cls, "k").type) == "int":
        if not sae_kw["k"].is_integer():
            raise ConfigError(f"--k must be a whole number for {arch}, got {sae_kw['k']}")
        sae_kw["k"] = int(sae_kw["k"])
    sae_kw.setdefault("d_sae", 8 * d_in)
    if "k" in allowed:
        sae_kw.setdefault("k", max(1, min(32, d_in // 2)))
    torch.manual_seed(tcfg.seed)  # --seed fixes the initial weights too
    sae = make_sae(
        {
            "architecture": arch,
            "d_in": d_in,
            "d_out": d_out,
            "apply_b_dec_to_input": not transcoder,
            **sae_kw,
        }
    )
    meta = {"data": _data_meta(source, ns)}
    result = train(sae, source, tcfg, ns.out, ns.resume, meta, overwrite=ns.overwrite)
    print(
        _table(
            [{"run": str(ns.out), **result.final_metrics[0]}],
            ["run", "step", "loss", "l0", "mse", "explained_variance", "dead_fraction"],
        )
    )
    print(f"saved to {ns.out}")
    return 0


def _batch_tokens(source: Any) -> int:
    """Tokens per batch of a stream (a model's batches are whole contexts)."""
    if isinstance(source, ModelBatches):
        return source.contexts_per_batch * (source.contexts.shape[1] - 1)
    return int(source.batch_size)


def _run_saes(run: Path) -> list[tuple[str, Path]]:
    if (run / CFG_FILE).is_file():
        return [(run.name, run)]
    subs = sorted(p for p in run.glob("sae_*") if (p / CFG_FILE).is_file())
    if not subs:
        raise ConfigError(
            f"{run} holds no saved SAE ({CFG_FILE}); give a folder made by saescope train"
        )
    return [(p.name, p) for p in subs]


def _eval_in_model(sae: SAE, meta: dict[str, Any], path: Path, ns) -> dict[str, Any]:
    """Core metrics on held-out contexts of the run's text, plus CE loss recovered and KL."""
    if not meta.get("model"):
        raise ConfigError(f"{path}: the run does not name its model; evaluate with --data FILE")
    model, tok = load_model(meta["model"])
    contexts, fp = text_contexts(model, tok, meta.get("text"), meta["context"])
    if meta.get("fingerprint") and fp != meta["fingerprint"]:
        raise ConfigError(
            f"{path}: the text {meta.get('text') or 'of the default corpus'} changed since "
            "training, so its held-out contexts are not the ones set aside; restore it"
        )
    out = evaluate_in_model(
        sae, model, split(contexts, "test"), meta["hook"], meta.get("target"), ns.tokens
    )
    density = out.pop("density")
    out["density_plot"] = str(plot_density(density, path / "feature_density.png", path.name))
    return out


def _eval_one(sae: SAE, path: Path, ns: argparse.Namespace) -> dict[str, Any]:
    meta = json.loads((path / CFG_FILE).read_text()).get("metadata", {}).get("data", {})
    if meta.get("kind") in ("model", "cache") and ns.data == "synthetic":
        return _eval_in_model(sae, meta, path, ns)
    if ns.data == "synthetic":
        task_cfg = SeedTaskConfig(**{**meta.get("task", {}), **_given(ns, SeedTaskConfig)})
        source = SeedTask(
            task_cfg, min(ns.tokens, 8192), meta.get("seed", 0) + HELD_OUT_SEED_OFFSET
        )
        return evaluate(sae, source, ns.tokens, features=source.features)
    if is_cache(ns.data):
        hook = ns.hook or meta.get("hook")
        if not hook:
            raise ConfigError("give --hook, the cache's hook point to evaluate on")
        cache = ActivationCache(ns.data)
        target = ns.target or meta.get("target")
        x = cache.head(hook, ns.tokens).float()
        y = cache.head(target, ns.tokens).float() if target else x
        out = evaluate(sae, [(x, y)], ns.tokens)
        out["held_out"] = False  # a cache holds the training split of its text
        return out
    return evaluate(sae, [ActivationFile(ns.data).head(ns.tokens)], ns.tokens)


def cmd_eval(ns: argparse.Namespace) -> int:
    results = {name: _eval_one(load(path), path, ns) for name, path in _run_saes(Path(ns.run))}
    if ns.json:
        out = next(iter(results.values())) if len(results) == 1 else results
        print(json.dumps(_finite(out)))
    else:
        rows = [{"sae": k, **v} for k, v in results.items()]
        cols = [
            "sae",
            "architecture",
            "l0",
            "mse",
            "explained_variance",
            "dead_fraction",
            "relative_reconstruction_bias",
        ]
        extra = ("mmcs", "min_feature_cosine", "ce_loss_recovered", "kl_div")
        cols += [c for c in extra if c in rows[0]]
        print(_table(rows, cols))
        for row in rows:
            if "density_plot" in row:
                print(f"feature density histogram: {row['density_plot']}")
    return 0


def _finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cmd_demo(ns: argparse.Namespace) -> int:
    from saescope.experiments import demo

    demo.run(Path(ns.out), seeds=ns.seeds, quick=ns.quick, all_seeds=ns.all_seeds)
    return 0


# ----- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saescope", description="Sparse autoencoders: train, evaluate."
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an SAE")
    t.add_argument("--arch", required=True, help=f"architecture: {', '.join(ARCHITECTURES)}")
    t.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic' (the seed's ground-truth task), a .npy/.safetensors file (N, d_in), "
        "or an activation cache folder from saescope harvest (with --hook)",
    )
    t.add_argument("--out", required=True, type=Path, help="run folder (metrics, checkpoint, SAE)")
    _model_args(t)
    t.add_argument(
        "--tokens", type=int, default=None, help="training tokens (sets --steps from the batch)"
    )
    t.add_argument("--batch-size", type=int, default=1024, help="tokens per batch")
    t.add_argument(
        "--resume", action="store_true", help="continue from the run folder's checkpoint"
    )
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument(
        "--d-sae", dest="d_sae", type=int, default=None, help="latents (default 8 x d_in)"
    )
    arch = t.add_argument_group("architecture options")
    for name, archs in _arch_fields().items():
        cls = ARCHITECTURES[archs[0]].config_cls
        f = _field(cls, name)
        doc = field_docs(cls).get(name, "").replace("%", "%%")
        types = {str(_field(ARCHITECTURES[a].config_cls, name).type) for a in archs}
        arch.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            type=float if "float" in types else _parse_type(str(f.type)),
            help=f"{doc} [{', '.join(archs)}] (default: {f.default})",
        )
    add_config_args(t.add_argument_group("training options"), TrainConfig)
    add_config_args(t.add_argument_group("synthetic data options"), SeedTaskConfig)

    e = sub.add_parser("eval", help="evaluate a trained SAE")
    e.add_argument("run", help="run folder written by saescope train")
    e.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic', a .npy/.safetensors file or an activation cache folder (its training "
        "rows: held_out false); a run trained on a model is evaluated on its held-out text "
        "(with CE loss recovered) by default",
    )
    e.add_argument("--hook", default=None, help="the cache's hook point (default: the run's)")
    e.add_argument("--target", default=None, help="the cache's target hook for a transcoder")
    e.add_argument("--tokens", type=int, default=65_536, help="tokens to evaluate on")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_args(e.add_argument_group("synthetic data options"), SeedTaskConfig)

    hv = sub.add_parser(
        "harvest", help="harvest a model's activations on text into an on-disk cache"
    )
    hv.add_argument("--model", required=True, help=_MODEL_HELP)
    hv.add_argument(
        "--hooks", nargs="+", required=True, help="hook points (PATH = output, PATH:in = input)"
    )
    hv.add_argument("--out", required=True, type=Path, help="cache folder (resumed if present)")
    hv.add_argument("--text", nargs="+", default=None, help=_TEXT_HELP)
    hv.add_argument("--context", type=int, default=128, help="tokens per context")
    hv.add_argument(
        "--tokens", type=int, default=None, help="tokens to harvest (default: all the text)"
    )
    hv.add_argument("--batch-size", type=int, default=32, help="contexts per forward pass")
    hv.add_argument("--shard-contexts", type=int, default=256, help="contexts per shard file")

    h = sub.add_parser("hooks", help="list a model's hook points and their output shapes")
    h.add_argument("model", help=_MODEL_HELP)

    d = sub.add_parser(
        "demo", help="run every experiment of the seed and write runs/demo/report.html"
    )
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    d.add_argument(
        "--seeds", type=int, default=3, help="seeds for the cheap experiments (the rest use seed 0)"
    )
    d.add_argument(
        "--all-seeds",
        action="store_true",
        help="run the expensive experiments on every seed too (about 3x longer)",
    )
    d.add_argument(
        "--quick", action="store_true", help="a few steps each: the report's shape, not its claims"
    )
    return p


_MODEL_HELP = (
    f"an embedded model ({', '.join(sorted(MODELS))}) or a local Hugging Face model folder"
)
_TEXT_HELP = 'text files, folders or .jsonl ("text" per line); default: the installed corpus'


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("real model options (train on the fly, or from a cache with --data)")
    g.add_argument("--model", default=None, help=_MODEL_HELP + "; harvests on the fly")
    g.add_argument("--hook", default=None, help="hook point: PATH (output) or PATH:in (input)")
    g.add_argument("--target", default=None, help="a transcoder's target hook (y); default: y = x")
    g.add_argument("--text", nargs="+", default=None, help=_TEXT_HELP)
    g.add_argument("--context", type=int, default=128, help="tokens per context")


def _check_tokens(tokens: int | None) -> None:
    if tokens is not None and tokens < 1:
        raise ConfigError(f"--tokens must be at least 1, got {tokens}")


def cmd_harvest(ns: argparse.Namespace) -> int:
    _check_tokens(ns.tokens)
    if ns.batch_size < 1 or ns.shard_contexts < 1:
        raise ConfigError("--batch-size and --shard-contexts must be at least 1")
    model, tok = load_model(ns.model)
    contexts, fp = text_contexts(model, tok, ns.text, ns.context)
    train_ctx = split(contexts, "train")
    available = train_ctx.shape[0] * (ns.context - 1)
    if ns.tokens is not None:
        if ns.tokens > available:
            print(f"note: the text gives {available} training tokens; harvesting all of them")
        train_ctx = train_ctx[: -(-ns.tokens // (ns.context - 1))]
    source = {
        "model": _model_ref(ns.model),
        "context": ns.context,
        "text": _abs(ns.text),
        "fingerprint": fp,
    }
    writer = harvest_to_cache(
        model, train_ctx, ns.hooks, ns.out, source, ns.batch_size, ns.shard_contexts
    )
    cache = ActivationCache(ns.out)
    print(
        f"{cache.n_rows} tokens x {', '.join(f'{h} ({d})' for h, d in cache.hooks.items())} "
        f"in {len(cache.shards)} shards at {ns.out} ({writer.contexts_done} contexts)"
    )
    return 0


def cmd_hooks(ns: argparse.Namespace) -> int:
    model, _ = load_model(ns.model)
    ids = torch.zeros(1, 8, dtype=torch.long)  # any short context: shapes per token
    cols = ["hook point", "module", "output shape (1 context of 8 tokens)"]
    rows = []
    for path, kind, shape in describe_hooks(model, ids):
        size = "-" if shape is None else " x ".join(map(str, shape))
        rows.append({cols[0]: path, cols[1]: kind, cols[2]: size})
    print(_table(rows, cols))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    commands = {
        "train": cmd_train,
        "eval": cmd_eval,
        "demo": cmd_demo,
        "hooks": cmd_hooks,
        "harvest": cmd_harvest,
    }
    try:
        return commands[ns.command](ns)
    except SaescopeError as e:
        print(f"saescope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "run it again" if ns.command == "harvest" else "resume with --resume"
        print(f"saescope: interrupted; {again}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
