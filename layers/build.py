"""Prebuild the Lambda layers for python3.12 x86_64 without Docker (optional: ``cdk synth`` builds them).

    python layers/build.py            # build what is missing or stale, link into layers/.build, print sizes
    python layers/build.py --force    # rebuild every layer

The layers are built by ``udop_infra.layers``, the same code CDK's local bundling runs during a synth,
into the same cache (``~/.cache/udop``, ``UDOP_CACHE_DIR``): after this, a synth only links files.
Each layer is also linked into ``layers/.build/<layer>/python/`` (what the size, cold-import and
API tests and ``benchmarks/cold_import.py`` read).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "infra"))

from udop_infra import layers as layer_build  # noqa: E402
from udop_infra.layers import (  # noqa: E402  (re-exported for the tests and benchmarks)
    BUDGET,
    FUNCTION_LAYERS,
    LAYERS,
    find_python312,
    folder_size,
)

BUILD = ROOT / "layers" / ".build"

__all__ = ["BUILD", "FUNCTION_LAYERS", "LAYERS", "find_python312", "main"]


def report() -> dict[str, int]:
    """Unzipped sizes in MiB: Lambda's 250 MB limit is 262,144,000 bytes, i.e. 250 MiB."""
    mib = 1024 * 1024
    sizes = {layer: folder_size(BUILD / layer) for layer in LAYERS if (BUILD / layer).exists()}
    for layer, size in sizes.items():
        print(f"  layer {layer:<11} {size / mib:8.1f} MiB unzipped")
    for function, layers in FUNCTION_LAYERS.items():
        folder = layer_build.functions_dir() / function
        total = (folder_size(folder) if folder.exists() else 0) + sum(sizes.get(layer, 0) for layer in layers)
        flag = "ok" if total <= BUDGET else "OVER BUDGET"
        print(
            f"  function {function:<12} {total / mib:8.1f} MiB (code + {', '.join(layers)}; "
            f"budget {BUDGET / mib:.0f} MiB = 250 less 20 spare) {flag}"
        )
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild every layer")
    parser.add_argument("--layer", action="append", choices=list(LAYERS), help="only these layers")
    args = parser.parse_args(argv)
    try:
        find_python312()
        BUILD.mkdir(parents=True, exist_ok=True)
        (BUILD / ".gitignore").write_text("*\n")
        for layer in args.layer or list(LAYERS):
            if args.force:
                shutil.rmtree(layer_build.build_site(layer).parent)
                if layer == "core":
                    shutil.rmtree(layer_build.build_own_packages().parent)
            shutil.rmtree(BUILD / layer, ignore_errors=True)
            layer_build.stage_layer(layer, BUILD / layer)
            print(f"{layer}: {BUILD / layer}")
    except layer_build.LayerBuildError as exc:
        print(f"layers/build.py: {exc}", file=sys.stderr)
        return 2
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
