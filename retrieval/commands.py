"""The commands of `python -m retrieval` on parsed arguments (`retrieval.cli`); user mistakes are UserErrors."""

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
    check_index_folder,
    check_part_files,
    check_same,
    load_input,
    open_index,
    open_index_record,
    open_part,
    parts,
    rebuild_command,
    record_files,
)
from retrieval.merging import checked_parts, write_index_files
from retrieval.sheets import contact_sheet, short
from utils.argtypes import device_problem
from utils.atomic import remove_stale_temps, write_text
from utils.faults import check_stop
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
    if args.part is not None:
        from retrieval.splits import index_part

        index_part(
            args,
            record,
            paths,
            Embedder(backbone, spec),
            lambda: extraction_trainer(device, args.devices, args.num_nodes, args.out),
        )
        return
    out, rank_zero = args.out, rank_zero_only.rank == 0
    # one build of a folder at a time (INDEX.lock beside it); the other ranks of a multi-GPU run are under rank 0's
    resume = "The images embedded so far are kept: run the same command again to resume."
    with writing(out, "--out", resume), extraction_lock(out, exclusive=rank_zero):
        stored = check_index_folder(out, record, rank_zero)
        checked_parts(out, stored)  # no unfinished split run (`--part i/N` jobs) to embed its images again
        done, incomplete = parts(out)
        check_part_files(out, stored, done)  # the parts are reused as they are; the files derived from them rebuilt
        if rank_zero:
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(out)
            # the fingerprints stay until the build ends: they still describe the last finished build's files
            kept = {FILES: stored[FILES]} if FILES in stored else {}
            write_text(out / SPEC_FILE, json.dumps(record | kept, indent=2))
        seen = {p for part in done for p in open_part(part)[1]}
        new = [p for p in paths if p not in seen]
        embedded = 0
        if new:
            trainer = extraction_trainer(device, args.devices, args.num_nodes, out)
            embedder = Embedder(backbone, spec)
            loader = {k: getattr(args, k) for k in ("batch_size", "num_workers", "samples_per_shard")}
            embedded = embed_new(out, record, new, (done, incomplete), trainer, embedder, **loader)
            check_stop()  # a signal caught after the last batch: stop before the index files are built
        if not rank_zero:
            return
        n, skipped = write_index_files(out, checked_parts(out, record), args.index_kind)
        record_files(out, record)
    print(f"Indexed {n} images in {out} ({embedded} embedded now, {len(skipped)} unreadable: {out / 'skipped.json'}).")


def build(args: argparse.Namespace) -> None:
    """Merge the index folder's parts (those of `index --part i/N` jobs, or any) into index.faiss."""
    from datamodules.feature_cache.store import extraction_lock
    from retrieval.faiss_index import KINDS

    out = args.index
    if args.index_kind is not None and args.index_kind not in KINDS:
        raise RetrievalError(f"--index-kind {args.index_kind} is not one of {', '.join(KINDS)}.")
    if not (out / SPEC_FILE).is_file():
        raise RetrievalError(
            f"{out} is not an index folder (no {SPEC_FILE}): embed its images first, with `python -m retrieval index "
            f"SOURCE --out {out}` or with N jobs `python -m retrieval index SOURCE --out {out} --part i/N`."
        )
    kept = f"The parts are kept: run `python -m retrieval build {out}` again once there is room."
    with writing(out, "INDEX", kept), extraction_lock(out):
        record = open_index_record(out)
        done = checked_parts(out, record)
        if not done:
            raise RetrievalError(f"{out} holds no embedded part yet: run its `python -m retrieval index` job(s) first.")
        check_part_files(out, record, done)
        kind = args.index_kind or record.get("index_kind") or "auto"
        record = {k: v for k, v in record.items() if k != FILES} | {"index_kind": kind}
        remove_stale_temps(out)
        n, skipped = write_index_files(out, done, record["index_kind"])
        record_files(out, record)
    print(
        f"Built {out / INDEX_FILE} ({record['index_kind']}) over {n} images from {len(done)} part(s) "
        f"({len(skipped)} unreadable: {out / 'skipped.json'})."
    )


def extraction_trainer(device: torch.device, devices: int, num_nodes: int, out: Path) -> Any:
    """The predict trainer: the CPU, one given GPU, or `devices` GPUs (DDP; the ranks split the shards), on each of
    `num_nodes` nodes (a torchrun or srun launch). Under SLURM, the requeue signal requeues without a checkpoint
    (`utils.slurm`); the parts resume."""
    import lightning as L

    from retrieval.building import EmbeddingWriter
    from utils.graceful_stop import GracefulStop
    from utils.slurm import RequeueOnSignal, predict_plugins

    cuda = device.type == "cuda"
    return L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=[device.index] if cuda and device.index is not None else devices,
        num_nodes=num_nodes,
        default_root_dir=out,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[EmbeddingWriter(), RequeueOnSignal(), GracefulStop()],
        plugins=predict_plugins(),
    )


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
