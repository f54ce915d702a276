"""The four commands of `python -m retrieval` on parsed arguments (`retrieval.cli`); user mistakes are UserErrors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from retrieval.embedding import EmbeddingSpec, embed
from retrieval.faiss_index import search
from retrieval.index_store import (
    FILES,
    INDEX_FILE,
    SPEC_FILE,
    RetrievalError,
    check_part_files,
    load_input,
    open_index,
    parts,
    read_part,
    rebuild_command,
    record_files,
    write_index_files,
)
from retrieval.sheets import contact_sheet, short
from utils.argtypes import device_problem
from utils.atomic import remove_stale_temps, write_text
from utils.outputs import Outputs, check_folder, writing


def device_of(args: argparse.Namespace) -> torch.device:
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if problem := device_problem(args.device):
        raise RetrievalError(f"{problem}.")
    return torch.device(args.device)


def load_model(args: argparse.Namespace, loading: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The backbone `loading` describes (checkpoint, architecture overrides, random weights), and its record."""
    from backbones import load_backbone
    from datamodules.feature_cache.hashing import weights_sha256

    backbone = load_backbone(
        loading["backbone"],
        checkpoint=loading["checkpoint"],
        download=args.download,
        random_fallback=loading["random_weights"],
        sha256=args.sha256,
        **{k: loading[k] for k in ("embed_dim", "depth", "num_heads")},
    )
    return backbone, {"weights_sha256": weights_sha256(backbone), "loading": loading}


def describe(record: dict[str, Any]) -> str:
    spec, sha = record["embedding"], record.get("weights_sha256", "?")
    return (
        f"--backbone {spec['backbone']} --size {spec['size']} --pooling {spec['pooling']} --block {spec['block']}"
        f" (weights sha256 {sha[:12]})"
    )


def check_same(index_dir: Path, stored: dict[str, Any], asked: dict[str, Any]) -> None:
    """RetrievalError unless `asked` embeds as the index's own spec and weights do."""
    keys = ("embedding", "weights_sha256")
    if any(stored.get(k) != asked.get(k) for k in keys):
        loading = stored.get("loading") or {}
        # the same settings, other weights: random weights drawn before they were seeded (or real ones found since)
        lost = (
            loading.get("random_weights")
            and loading == asked.get("loading")
            and stored.get("embedding") == asked.get("embedding")
        )
        unseeded = (
            " The index was built with random weights that cannot be made again (drawn before random weights were "
            "seeded, or weights were put into the torch.hub cache since): build it again (delete it, then "
            "`python -m retrieval index ... --random-weights`)."
            if lost
            else ""
        )
        raise RetrievalError(
            f"The index {index_dir} was built with {describe(stored)}; this command asks for {describe(asked)}. "
            "Descriptors of other settings cannot be compared: give the index's own settings (query: leave them "
            f"out), or build another index with --out.{unseeded}"
        )


def index(args: argparse.Namespace) -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from datamodules.feature_cache.store import extraction_lock
    from retrieval.building import Embedder, embed_new, list_images
    from retrieval.faiss_index import KINDS

    if args.index_kind not in KINDS:
        raise RetrievalError(f"--index-kind {args.index_kind} is not one of {', '.join(KINDS)}.")
    if args.source.is_dir() and args.out.absolute().resolve() == args.source.absolute().resolve():
        raise RetrievalError(
            f"--out {args.out} is the images folder {args.source} itself: the index needs a folder of its own. Give "
            f"--out {args.source / 'index'} (inside it: its files are not indexed) or a folder beside it."
        )
    check_folder(args.out, "--out")
    paths = list_images(args.source, exclude=args.out)
    loading = {
        "backbone": args.backbone,
        "checkpoint": args.checkpoint and str(Path(args.checkpoint).absolute()),
        "random_weights": args.random_weights,
        "embed_dim": args.embed_dim,
        "depth": args.depth,
        "num_heads": args.num_heads,
    }
    device = device_of(args)
    backbone, record = load_model(args, loading)
    spec = EmbeddingSpec(args.backbone, args.pooling, args.block, args.size)
    if spec.size % backbone.patch_size:
        fit = max(1, round(spec.size / backbone.patch_size)) * backbone.patch_size
        raise RetrievalError(
            f"--size {spec.size} is not a multiple of the patch size {backbone.patch_size}: use {fit}."
        )
    # the source and kind of the last build: what `rebuild_command` needs to build the index again
    source = {"source": str(args.source.absolute()), "index_kind": args.index_kind}
    record = {"embedding": spec.to_json(), **record, **source}
    out, rank_zero = args.out, rank_zero_only.rank == 0
    # one build of a folder at a time (INDEX.lock beside it); the other ranks of a multi-GPU run are under rank 0's
    resume = "The images embedded so far are kept: run the same command again to resume."
    with writing(out, "--out", resume), extraction_lock(out, exclusive=rank_zero):
        stored = {}
        if (out / SPEC_FILE).is_file():
            stored = open_index_record(out)
            check_same(out, stored, record)
        elif out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RetrievalError(f"--out {out} exists and is not an index folder (no {SPEC_FILE}): give a new folder.")
        done, incomplete = parts(out)
        check_part_files(out, stored, done)  # the parts are reused as they are; the files derived from them rebuilt
        if rank_zero:
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(out)
            # the fingerprints stay until the build ends: they still describe the last finished build's files
            kept = {FILES: stored[FILES]} if FILES in stored else {}
            write_text(out / SPEC_FILE, json.dumps(record | kept, indent=2))
        seen = {p for part in done for p in read_part(part).paths}
        new = [p for p in paths if p not in seen]
        embedded = 0
        if new:
            trainer = extraction_trainer(device, args.devices)
            embedder = Embedder(backbone, spec)
            loader = {k: getattr(args, k) for k in ("batch_size", "num_workers", "samples_per_shard")}
            embedded = embed_new(out, record, new, (done, incomplete), trainer, embedder, **loader)
        if not rank_zero:
            return
        n, skipped = write_index_files(out, [read_part(p) for p in parts(out)[0]], args.index_kind)
        record_files(out, record)
    print(f"Indexed {n} images in {out} ({embedded} embedded now, {len(skipped)} unreadable: {out / 'skipped.json'}).")


def extraction_trainer(device: torch.device, devices: int) -> Any:
    """The predict trainer: one given GPU, or `devices` GPUs or CPU processes (DDP, gloo on the CPU; the ranks split
    the shards)."""
    import lightning as L

    from retrieval.building import EmbeddingWriter

    cuda = device.type == "cuda"
    return L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=[device.index] if cuda and device.index is not None else devices,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[EmbeddingWriter()],
    )


def open_index_record(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / SPEC_FILE).read_text())
    except (OSError, ValueError) as err:
        raise RetrievalError(
            f"{directory / SPEC_FILE} is damaged ({err}): delete {directory} and index again."
        ) from None


def query(args: argparse.Namespace) -> None:
    loaded = open_index(args.index)
    if args.k > len(loaded.paths):
        raise RetrievalError(
            f"--k {args.k} is larger than the index ({len(loaded.paths)} images): give --k {len(loaded.paths)} or less."
        )
    stored = loaded.record["embedding"]
    wanted = {
        key: getattr(args, key) if getattr(args, key) is not None else stored[key]
        for key in ("backbone", "size", "block", "pooling")
    }
    loading = dict(loaded.record["loading"]) | {"backbone": wanted["backbone"]}
    loading |= {k: getattr(args, k) for k in ("checkpoint", "embed_dim", "depth", "num_heads") if getattr(args, k)}
    loading["random_weights"] = loading["random_weights"] or args.random_weights
    spec = EmbeddingSpec(**(stored | wanted))
    if spec.to_json() != stored:
        check_same(args.index, loaded.record, {"embedding": spec.to_json(), "weights_sha256": "(not loaded)"})
    for image in args.images:
        if not Path(image).is_file():
            raise RetrievalError(f"The query image {image} does not exist: check the path.")
    stems = query_stems(args.images)
    files = [args.out / f"{stem}{end}" for stem in stems for end in (".json", ".png")]
    inputs = [args.index, *args.images, args.checkpoint]
    outputs = Outputs(files, inputs, folder=args.out, overwrite=args.overwrite)
    device = device_of(args)
    backbone, record = load_model(args, loading)
    check_same(args.index, loaded.record, {"embedding": spec.to_json(), **record})
    inputs = torch.stack([load_input(image, spec.size) for image in args.images])
    vectors = embed(backbone.to(device), inputs.to(device), spec).float().cpu().numpy()
    if vectors.shape[1] != loaded.index.d:
        raise RetrievalError(
            f"{args.index / INDEX_FILE} holds {loaded.index.d}-dimensional vectors, but the index's settings give "
            f"{vectors.shape[1]}-dimensional descriptors: run `{rebuild_command(args.index, loaded.record)}`."
        )
    scores, ids = search(loaded.index, vectors, args.k)
    with outputs:
        for image, stem, row_scores, row_ids in zip(args.images, stems, scores, ids):
            results = [
                {"rank": r + 1, "path": loaded.paths[i], "score": float(s)}
                for r, (s, i) in enumerate(zip(row_scores, row_ids))
                if i >= 0
            ]
            print(f"{image}:")
            for result in results:
                print(f"  {result['rank']:3d}  {result['score']:.4f}  {result['path']}")
            record = {"query": str(Path(image).absolute()), "k": args.k, "results": results}
            with outputs.file(args.out / f"{stem}.json") as tmp:
                write_text(tmp, json.dumps(record, indent=1, allow_nan=False))
            cells = [(image, f"query {short(image)}")] + [
                (r["path"], f"{r['score']:.3f} {short(r['path'])}") for r in results
            ]
            with outputs.file(args.out / f"{stem}.png") as tmp:
                contact_sheet([cells], tmp, f"{args.index}: top {args.k} of {image}")
    print(f"Wrote {args.out}/<query>.json and .png for {len(args.images)} queries.")


def query_stems(images: list[str]) -> list[str]:
    """The output name of each query image: its stem, with a number added when an earlier query took that name."""
    stems: list[str] = []
    for image in images:
        stem = name = Path(image).stem
        number = len(stems)
        while name in stems:
            name, number = f"{stem}_{number}", number + 1
        stems.append(name)
    return stems
