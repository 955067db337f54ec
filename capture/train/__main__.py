"""`python -m capture.train {make-dataset,check,pretrain,coarse,detail}`: see capture/train/__init__.py."""
from __future__ import annotations

import argparse
import sys

from ..cli_common import run_cli
from ..console import add_version_argument, prog


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder (see `check`)")
    p.add_argument("--out", required=True, help="run folder: pack/, <stage>_log.csv, <stage>_train_state.pt")
    p.add_argument("--assets", default=None, help="model pack with FLAME etc. (default: the demo pack)")
    p.add_argument("--init", default=None, help="weights to start from: run folder, pack folder or deca_model.tar")
    p.add_argument("--resume", default=None, help="continue an earlier run folder of this stage")
    p.add_argument("--config", default=None, help="TOML file overriding capture/train/default.toml, or a preset: quick")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one setting")
    p.add_argument("--steps", type=int, default=None, help="shorthand for --set <stage>.steps=N")
    p.add_argument("--no-progress", action="store_true")


def main(argv=None) -> int:
    from ..assets import AssetError
    from .config import ConfigError
    from .dataset import DatasetError
    from .features import WeightsError

    try:
        return _main(argv)
    except (AssetError, ConfigError, DatasetError, WeightsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=prog("capture-train", "capture.train"), description=__doc__)
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-dataset", help="render a tiny training set from the demo pack")
    mk.add_argument("dir")
    mk.add_argument("--assets", default=None)
    mk.add_argument("--identities", type=int, default=4)
    mk.add_argument("--per-identity", type=int, default=6)
    mk.add_argument("--size", type=int, default=224)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--no-detail", action="store_true",
                    help="shade with the coarse normals only (no D_detail pass: faster, for coarse-stage data)")
    ck = sub.add_parser("check", help="validate a dataset folder")
    ck.add_argument("dir")
    ck.add_argument("--k", type=int, default=2)
    _common(sub.add_parser("pretrain", help="the coarse stage on landmarks only (DECA's first step)"))
    for stage in ("coarse", "detail"):
        _common(sub.add_parser(stage, help=f"train the {stage} stage"))
    args = parser.parse_args(argv)

    if args.command == "make-dataset":
        from .make_dataset import make_dataset

        out = make_dataset(args.dir, assets=args.assets, identities=args.identities, per_identity=args.per_identity,
                           size=args.size, seed=args.seed, detail=not args.no_detail)
        print(f"wrote {args.identities * args.per_identity} images of {args.identities} identities to {out}")
        return 0
    if args.command == "check":
        from .dataset import validate_dataset

        entries = validate_dataset(args.dir, args.k)
        print(f"{args.dir}: {len(entries)} images of {len({e.identity for e in entries})} identities, all valid")
        return 0

    from .config import load_config
    from .features import load_identity_network, load_vgg19, optional_network

    overrides = list(args.set) + ([f"{args.command}.steps={args.steps}"] if args.steps is not None else [])
    cfg = load_config(args.config, overrides)
    common = dict(assets=args.assets, init=args.init, resume=args.resume, show_progress=not args.no_progress)
    if args.command == "pretrain":
        from .coarse import train_coarse

        rows = train_coarse(args.data, args.out, cfg, stage="pretrain", **common)
    elif args.command == "coarse":
        from .coarse import train_coarse

        net = optional_network(cfg["networks"]["identity_weights"], load_identity_network, "identity")
        rows = train_coarse(args.data, args.out, cfg, identity_net=net, **common)
    else:
        from .detail import train_detail

        last = cfg["networks"]["mrf_layers"][-1]
        net = optional_network(cfg["networks"]["vgg19_weights"], lambda p: load_vgg19(p, last), "ID-MRF (VGG19)")
        rows = train_detail(args.data, args.out, cfg, vgg=net, **common)
    if rows:
        print(f"{args.command}: {len(rows)} steps, total loss {rows[0]['total']:.4g} -> {rows[-1]['total']:.4g}; "
              f"weights in {args.out}/pack/deca_model.tar (use --assets {args.out}/pack)", file=sys.stderr)
    return 0


def cli() -> None:
    """`python -m capture.train` and the `capture-train` command."""
    import warnings

    # a skipped loss is worth one line, not the source line that issued the warning
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    run_cli(main)


if __name__ == "__main__":
    cli()
