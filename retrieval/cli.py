"""`python -m retrieval index|build|query|dedup|cluster`: the command lines (argparse; the heavy imports wait until the
arguments are parsed) and the commands themselves (`retrieval.commands`)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from utils.argtypes import finite_float, non_negative_int, positive_int
from utils.outputs import OVERWRITE_HELP

BACKBONES = tuple(f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg")) + tuple(
    f"dinov3_vit{s}16" for s in "sbl"
)
POOLINGS = ("cls", "gem", "cls+gem")
FLAGS = {"random_fallback": "--random-weights"}
KIND_HELP = (
    "flat (exact), hnsw, ivf, ivfpq (PQ codes of D/4 bytes a vector: lower recall), ondisk (ivf with its lists in "
    "a memory-mapped file: for collections larger than RAM), or auto: exact up to 100000 images, HNSW above"
)


def part_of(text: str) -> tuple[int, int]:
    """`--part i/N` -> (i, N), parts numbered from 1."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not i/N (part i of N, numbered from 1: 1/4, 2/4, 3/4, 4/4)")
    part, parts = int(match.group(1)), int(match.group(2))
    if parts < 1 or not 1 <= part <= parts:
        raise argparse.ArgumentTypeError(
            f"{text}: part {part} of {parts} does not exist; the parts of N are numbered 1/N to N/N (N >= 1)"
        )
    return part, parts


def add_backbone_args(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The embedding options; `defaults=False` (query): unset options are the index's own (spec.json)."""
    given = "(default: the index's own)"
    group = parser.add_argument_group("embedding (recorded in INDEX/spec.json)")
    group.add_argument(
        "--backbone",
        choices=BACKBONES,
        metavar="NAME",
        default="dinov2_vits14" if defaults else None,
        help=f"official hub name, one of {', '.join(BACKBONES)} " + ("(default: %(default)s)" if defaults else given),
    )
    group.add_argument("--checkpoint", help="an official *_pretrain.pth file; default: the torch.hub cache")
    group.add_argument("--download", action="store_true", help="allow downloading the official weights")
    group.add_argument("--sha256", help="the weights file's expected SHA-256")
    for name in ("embed-dim", "depth", "num-heads"):
        group.add_argument(f"--{name}", type=positive_int, help="architecture override for small models")
    group.add_argument("--random-weights", action="store_true", help="no weights found: use random ones (testing)")
    group.add_argument(
        "--size",
        type=positive_int,
        default=224 if defaults else None,
        help="input side: shorter side resized, centre crop; a multiple of the patch size "
        + ("(default: %(default)s)" if defaults else given),
    )
    group.add_argument(
        "--block",
        type=int,
        default=-1 if defaults else None,
        help="block whose tokens are read, -1 = last " + ("(default)" if defaults else given),
    )
    group.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="cls" if defaults else None,
        help="class token, GeM of the patch tokens, or both " + ("(default: %(default)s)" if defaults else given),
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval",
        description="Retrieval on frozen DINOv2 features: index a folder, query it, find near-duplicates, cluster.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    index = commands.add_parser("index", help="embed every image of a folder or file list into an index folder")
    index.add_argument(
        "source",
        type=Path,
        metavar="DIR|FILELIST",
        help="a folder (searched recursively) or a text "
        "file with one image path per line (relative to the file's folder)",
    )
    index.add_argument("--out", type=Path, required=True, metavar="INDEX", help="the index folder (created or grown)")
    index.add_argument("--index-kind", default="auto", metavar="KIND", help=KIND_HELP + " (default: %(default)s)")
    index.add_argument(
        "--part",
        type=part_of,
        metavar="i/N",
        help="embed only part i of N of the images (one of N jobs into the same --out; then `build` merges them)",
    )
    index.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default: %(default)s)")
    index.add_argument("--num-workers", type=non_negative_int, default=2, help="loader processes (default: 2)")
    index.add_argument(
        "--samples-per-shard",
        type=positive_int,
        default=1024,
        help="images per fp16 shard: the unit of resumption (default: %(default)s)",
    )
    index.add_argument(
        "--devices",
        type=positive_int,
        default=1,
        help="GPUs, or CPU processes (--device cpu), to embed with (DDP; default: 1)",
    )
    index.add_argument(
        "--num-nodes",
        type=positive_int,
        default=1,
        help="nodes of a torchrun or srun launch, each with --devices processes (default: 1)",
    )
    add_backbone_args(index, defaults=True)

    build = commands.add_parser(
        "build", help="merge an index folder's parts (of `index --part i/N` jobs) into its index"
    )
    build.add_argument("index", type=Path, metavar="INDEX")
    build.add_argument("--index-kind", metavar="KIND", help=KIND_HELP + " (default: the index's own)")

    query = commands.add_parser("query", help="the k nearest indexed images of each query image")
    query.add_argument("index", type=Path, metavar="INDEX")
    query.add_argument("images", nargs="+", metavar="IMAGE")
    query.add_argument("--k", type=positive_int, default=10, help="results per query (default: %(default)s)")
    query.add_argument("--out", type=Path, default=Path("retrieval_query"), help="folder for <stem>.json/.png")
    query.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    add_backbone_args(query, defaults=False)

    dedup = commands.add_parser("dedup", help="groups of near-duplicates, and keep_one.txt to remove copies")
    dedup.add_argument("index", type=Path, metavar="INDEX")
    dedup.add_argument(
        "--threshold",
        type=finite_float,
        required=True,
        help="cosine similarity in [-1, 1] at or above which two images are duplicates",
    )
    dedup.add_argument("--k", type=positive_int, default=20, help="neighbours looked at per image (default: 20)")
    dedup.add_argument("--sheet-groups", type=positive_int, default=8, help="groups on the contact sheet (default: 8)")
    dedup.add_argument("--out", type=Path, default=Path("dedup"), help="output folder (default: %(default)s)")
    dedup.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    cluster = commands.add_parser("cluster", help="FAISS k-means of the embeddings")
    cluster.add_argument("index", type=Path, metavar="INDEX")
    cluster.add_argument("--k", type=positive_int, required=True, help="number of clusters")
    cluster.add_argument("--seed", type=int, default=0, help="k-means seed (default: %(default)s)")
    cluster.add_argument("--niter", type=positive_int, default=20, help="k-means iterations (default: %(default)s)")
    cluster.add_argument("--out", type=Path, default=Path("clusters"), help="output folder (default: %(default)s)")
    cluster.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; a user error prints one paragraph (options as flags) and gives 2, SIGTERM or Ctrl-C
    stops at a batch end with one paragraph and 143 or 130 (`utils.faults`)."""
    from utils.errors import cli_style
    from utils.faults import cli_exit_code

    def body() -> None:
        from retrieval import commands, dedup

        getattr(dedup if args.command in ("dedup", "cluster") else commands, args.command)(args)

    def resume() -> str:
        if args.command == "index":
            return f"The images embedded so far are kept in {args.out}: run the same command again to go on."
        return "Run the same command again."

    return cli_exit_code(body, cli_style(FLAGS), resume)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
