"""`python -m capture.assets check DIR` / `python -m capture.assets demo DIR`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..console import add_version_argument, prog
from .official import inspect_pack, read_pack_meta


def _check(folder: str) -> int:
    inspection = inspect_pack(folder)
    meta = read_pack_meta(inspection.root) if inspection.root.is_dir() else {}
    if meta.get("synthetic"):
        print(f"{inspection.root}: SYNTHETIC demo pack (procedural head, seeded weights; not DECA's results)")
    if inspection.rows:
        width = max(len(r.name) for r in inspection.rows)
        print(f"{'file':<{width}}  {'status':<17}  details")
        for row in inspection.rows:
            print(f"{row.name:<{width}}  {row.status:<17}  {row.detail}")
    if inspection.problems:
        print(f"\n{len(inspection.problems)} problem(s):", file=sys.stderr)
        for problem in inspection.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    print("\npack OK")
    return 0


def _demo(folder: str, seed: int, n_vertices: int | None) -> int:
    """The full-size pack is the one `--assets demo` uses: copied from the cache (built there first if need be),
    the same bytes as writing it afresh; another vertex count is generated here."""
    from .demo import write_demo_pack

    started = time.perf_counter()
    if n_vertices is None:
        from ..artifacts import copy_file_atomic
        from .locate import ensure_demo_pack

        cached = ensure_demo_pack(seed)
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for src in sorted(cached.iterdir()):
            if src.is_file() and not src.name.startswith("."):
                copy_file_atomic(src, path / src.name)
    else:
        path = write_demo_pack(Path(folder), seed=seed, n_vertices=n_vertices)
    print(f"wrote the SYNTHETIC demo pack to {path} in {time.perf_counter() - started:.1f} s "
          f"(seed {seed}); check it with: python -m capture.assets check {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("capture-assets", "capture.assets"), description=__doc__)
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a pack folder: table of files, one line per problem")
    check.add_argument("folder")
    demo = sub.add_parser("demo", help="write the synthetic demo pack (official formats) into a folder")
    demo.add_argument("folder")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--vertices", type=int, default=None, help="approximate vertex count (default ~5k)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.folder)
        return _demo(args.folder, args.seed, args.vertices)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
