"""The `promptcut` command line. Bad input ends in one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from segmentation.errors import InputError, PromptcutError
from segmentation.project_lock import project_lock


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so atomic writers get to clean up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return args.run(args) or 0
    except PromptcutError as exc:
        print(f"promptcut: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("promptcut: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, the traceback only with --debug
        if getattr(args, "debug", False):
            raise
        print(f"promptcut: internal error: {type(exc).__name__}: {exc} "
              f"(run again with --debug for the traceback)", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptcut", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add(commands, "import", cmd_import, "import HDF5 / TIFF / NumPy / volumes into precomputed "
         "or zarr", _import_arguments)
    _add(commands, "segment", cmd_segment, "affinities, supervoxels, RAG, agglomeration and "
         "meshes for the project", _segment_arguments)
    _add(commands, "evaluate", cmd_evaluate, "VOI and adapted Rand error against ground truth, "
         "as a table and a plot", _evaluate_arguments)
    _add(commands, "agglomerate", cmd_agglomerate, "agglomerate the project's supervoxels "
         "again, honouring proofreaders' merges and splits", _config_only)
    _add(commands, "export", cmd_export, "write the corrected segmentation, its membership "
         "table and the edit log", _export_arguments)
    _add(commands, "log", cmd_log, "the edit log as JSON lines", _log_arguments)
    _add(commands, "train", cmd_train, "train the 3D U-Net student or FGNet (train.model) on the "
         "config's image and ground truth", _train_arguments)
    _add(commands, "serve", cmd_serve, "open the project in neuroglancer", _serve_arguments)
    _add(commands, "config-schema", cmd_config_schema, "print the config's JSON schema (for "
         "editors; docs/config.schema.json holds it), or check a config against it",
         _schema_arguments)
    return parser


def _add(commands, name: str, run: Callable, help_text: str,
         arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    arguments(sub)
    sub.set_defaults(run=run)


def _import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="HDF5, TIFF (file or folder), .npy, or a volume")
    p.add_argument("output", nargs="?", help="output folder (precomputed) or .zarr folder")
    p.add_argument("--config", help="import the image and segmentation a config names")
    p.add_argument("--key", help="HDF5 dataset name")
    p.add_argument("--kind", choices=["image", "segmentation"], default="image")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="voxel size in nm, in the order z y x (neuroglancer writes x, y, z; "
                        "read from the file when it states one)")
    p.add_argument("--format", choices=["precomputed", "zarr"],
                   help="output format (default: zarr for a .zarr output, else precomputed)")
    p.add_argument("--chunk-size", nargs=3, type=int, default=[64, 64, 64],
                   metavar=("Z", "Y", "X"), help="voxels per chunk, in the order z y x "
                   "(default: 64 64 64)")
    p.add_argument("--min-scales", type=int, default=3, help="downsampled scales, at least")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_import(args: argparse.Namespace) -> int:
    from promptcut.config import load_config
    from promptcut.setup_project import prepare_project
    from segmentation.importer import import_volume

    if args.config:
        if args.input or args.output:
            raise InputError("give either --config or INPUT OUTPUT, not both")
        config = load_config(args.config)
        with project_lock(config.project_dir, "import"):
            project = prepare_project(config, args.overwrite, not args.quiet)
        print(f"project ready: {project.root}")
        return 0
    if not (args.input and args.output):
        raise InputError("import needs INPUT and OUTPUT (or --config)")
    if "://" not in args.input and Path(args.input).resolve() == Path(args.output).resolve():
        raise InputError("OUTPUT is INPUT: choose another output (an import never replaces "
                         "its own source)")
    if min(args.chunk_size) < 1 or args.min_scales < 0:
        raise InputError(f"--chunk-size Z Y X must be at least 1 each and --min-scales at "
                         f"least 0, got {' '.join(map(str, args.chunk_size))} and "
                         f"{args.min_scales}")
    fmt = args.format or ("zarr" if args.output.rstrip("/").endswith(".zarr") else "precomputed")
    with _open_input(args.input, args.key, args.kind, args.voxel_size) as source:
        report = import_volume(source, Path(args.output), args.kind, args.voxel_size, fmt,
                               args.chunk_size, args.min_scales, args.overwrite, not args.quiet)
    print(f"wrote {report.output} ({report.format}, {len(report.scales)} scales, "
          f"{report.bytes_written / 1e6:.1f} MB in {report.seconds:.1f} s, "
          f"{report.megabytes_per_second:.1f} MB/s)")
    return 0


class _VolumeInput:
    """Context wrapper so that opened volumes and stacks are used the same way."""

    def __init__(self, volume):
        self.volume = volume

    def __enter__(self):
        return self.volume

    def __exit__(self, *exc):
        return None


def _open_input(location: str, key: Optional[str], kind: str, voxel_size):
    from segmentation.stacks import open_stack, stack_format
    from segmentation.volume import open_volume

    if "://" not in location and stack_format(location) is not None:
        return open_stack(location, key)
    if "://" not in location and not Path(location).exists():
        raise InputError(f"file not found: {location}")
    return _VolumeInput(open_volume(location, kind, None, voxel_size))


def _segment_arguments(p: argparse.ArgumentParser) -> None:
    _config_only(p)
    p.add_argument("--workers", type=int, help="local Dask workers (overrides segment.workers; "
                   "0: no Dask, in this process; default: one per core)")
    p.add_argument("--scheduler", help="address of an existing Dask scheduler to run on")
    p.add_argument("--reuse-affinities", action="store_true",
                   help="keep the project's affinities, redo everything after them")
    p.add_argument("--if-needed", action="store_true",
                   help="do nothing when the project is already segmented")
    p.add_argument("--archive-log", action="store_true",
                   help="the project has proofreading edits: keep their log aside and start "
                        "a fresh one (without this, segment refuses)")
    p.add_argument("--restart", action="store_true",
                   help="start over: drop the blocks an interrupted run finished (without "
                        "this, a rerun on the same inputs and settings resumes)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _overrides(options: dict) -> dict:
    """Config keys that command-line options set: the options given (an empty text counts
    as not given; 0 is a value)."""
    return {key: value for key, value in options.items() if value not in (None, "")}


def cmd_segment(args: argparse.Namespace) -> int:
    from promptcut.config import load_config
    from promptcut.segmenting import run_segment
    from segmentation.heap import keep_freed_memory

    keep_freed_memory()  # one bulk job, then the process ends (see segmentation.heap)
    config = load_config(args.config, _overrides({"segment.workers": args.workers,
                                                  "segment.scheduler": args.scheduler}))
    with project_lock(config.project_dir, "segment"):
        report = run_segment(config, args.reuse_affinities, args.if_needed, not args.quiet,
                             args.archive_log, args.restart)
    if report is None:
        print("already segmented (use without --if-needed to redo)")
        return 0
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    print(f"segmented {report.voxels / 1e6:.1f} Mvoxels in {report.blocks} blocks on "
          f"{report.workers} worker(s): {report.supervoxels} supervoxels, {report.edges} edges; "
          f"{report.megavoxels_per_second:.2f} Mvox/s for supervoxels + RAG + agglomeration "
          f"({stages})")
    if report.resumed:
        done = ", ".join(f"{stage} {report.skipped[stage]}/{report.skipped[stage] + n}"
                         for stage, n in report.computed.items())
        print(f"resumed an interrupted run: blocks already done and skipped: {done}")
    return 0


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    _config_only(p)
    p.add_argument("--ground-truth", help="labels to score against (default: "
                   "dataset.ground_truth); an HDF5/TIFF/NumPy file or a volume")
    p.add_argument("--key", help="HDF5 dataset of --ground-truth")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from promptcut.config import SourceConfig, load_config
    from segmentation import evaluation
    from segmentation.project import Project

    config = load_config(args.config)
    source = SourceConfig(args.ground_truth, args.key) if args.ground_truth else \
        config.dataset.ground_truth
    if source is None:
        raise InputError("no ground truth: set dataset.ground_truth or pass --ground-truth")
    project = Project.open(config.project_dir)
    if not project.has("segmentation"):
        raise InputError("the project has no segmentation yet: run `promptcut segment` first")
    location = source.path if args.ground_truth else config.source_location(source)
    with _open_input(location, source.key, "segmentation", config.dataset.voxel_size) as truth:
        rows = evaluation.evaluate(project, truth, progress=not args.quiet)
    print(evaluation.format_table(rows))
    json_path, png_path = evaluation.save(rows, project.root / "evaluation",
                                          f"{config.name}: {config.dataset.name}")
    print(f"wrote {json_path} and {png_path}")
    return 0


def _config_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the project's YAML config")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    _config_only(p)
    p.add_argument("--output", help="export folder (default: PROJECT/exports/<time>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output if it is an earlier promptcut export")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _log_arguments(p: argparse.ArgumentParser) -> None:
    _config_only(p)
    p.add_argument("--output", help="file to write (default: standard output)")


def _open_session(config):
    from segmentation.proofread import open_session
    from segmentation.project import Project

    project = Project.open(config.project_dir)
    return project, open_session(project)


def cmd_agglomerate(args: argparse.Namespace) -> int:
    from promptcut.config import load_config
    from promptcut.segmenting import edge_model
    from segmentation.edge_classifier import merge_score
    from segmentation.proofread import reagglomerate

    config = load_config(args.config)
    with project_lock(config.project_dir, "agglomerate"):
        project, session = _open_session(config)
        a = config.segment.agglomeration
        result = reagglomerate(project, session, a.thresholds, a.default_threshold,
                               merge_score(edge_model(config), a.quantile))
    print(result)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import time

    from promptcut.config import load_config
    from segmentation.export import export_segmentation

    config = load_config(args.config)
    with project_lock(config.project_dir, "export"):
        project, session = _open_session(config)
        output = Path(args.output) if args.output else \
            project.root / "exports" / time.strftime("%Y%m%d-%H%M%S")
        ids, segments = session.membership()
        try:
            image = project.volume("image") if project.has("image") else None
            folder = export_segmentation(session.supervoxels, ids, segments, session.log,
                                         output, progress=not args.quiet,
                                         overwrite=args.overwrite, image=image)
        finally:
            session.log.close()
    print(f"exported {len(np.unique(segments))} segments to {folder}")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    import json

    from promptcut.config import load_config

    _, session = _open_session(load_config(args.config))
    if args.output:
        count = session.log.export_jsonl(Path(args.output))
        print(f"wrote {count} operations to {args.output}", file=sys.stderr)
    else:
        for entry in session.log.entries():
            print(json.dumps(entry.as_json()))
    return 0


def _train_arguments(p: argparse.ArgumentParser) -> None:
    _config_only(p)
    p.add_argument("--iterations", type=int, help="override train.iterations")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--export", type=Path, metavar="FILE",
                   help="then write the best checkpoint's weights (no optimiser state) to "
                        "FILE with the suffix .safetensors, its metadata to the .json beside")
    p.add_argument("--edges", type=Path, metavar="FILE", nargs="?", const="",
                   help="train the edge classifier of the learned agglomeration instead, on "
                        "the segmented project's RAG, and write it here (default: "
                        "<project>/models/edges.txt)")
    p.add_argument("--from-decisions", type=Path, metavar="FILE", nargs="?", const="",
                   help="retrain the edge classifier (the config's, or the shipped one) from "
                        "the proofreaders' decisions in the project's edit log, and write it "
                        "here (default: <project>/models/edges_decisions.txt); needs no "
                        "ground truth")


def _train_edges(config, truth, output: Path) -> int:
    from segmentation.edge_training import best, train_edges
    from segmentation.project import Project

    output = Path(output) if output else config.project_dir / "models" / "edges.txt"
    with _open_input(config.source_location(truth), truth.key, "segmentation",
                     config.dataset.voxel_size) as labels:
        truth_labels = labels.read(slice(None), slice(None), slice(None))
    with project_lock(config.project_dir, "train"):
        found = train_edges(Project.open(config.project_dir), truth_labels, output,
                            config.train.validation_slices,
                            list(config.segment.agglomeration.thresholds))
    start, stop = found["validation_sections"]
    for method, rows in found["validation"].items():
        b = best(rows)
        print(f"{method:>9}: best VOI on sections {start}-{stop - 1} {b['voi']:.3f} (split "
              f"{b['voi_split']:.3f}, merge {b['voi_merge']:.3f}), ARAND {b['arand']:.3f} at "
              f"threshold {b['threshold']}")
    print(f"edge classifier written to {output} (metadata: {output.with_suffix('.json')}); "
          f"use it with segment.agglomeration.method: learned and edge_model: {output}")
    return 0


def _train_from_decisions(config, output: Path) -> int:
    from segmentation.edge_training import train_from_decisions
    from segmentation.project import Project

    output = Path(output) if output else config.project_dir / "models" / \
        "edges_decisions.txt"
    base = config.edge_classifier()
    if not base.is_file():
        raise InputError(f"no edge classifier to retrain at {base}: set "
                         f"segment.agglomeration.edge_model")
    with project_lock(config.project_dir, "train"):
        found = train_from_decisions(Project.open(config.project_dir), base, output)
    print(f"retrained {base.name} on {found['rows']} contacts ({found['same_neuron_rows']} "
          f"same neuron) of {found['decided_segments']} segments that {found['operations']} "
          f"logged operations decided; written to {output}; use it with "
          f"segment.agglomeration.edge_model: {output}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from promptcut.config import load_config
    from segmentation.models.training import FGNetTrainer, StudentTrainer, export_weights

    config = load_config(args.config, _overrides({"train.iterations": args.iterations}))
    if args.from_decisions is not None:
        return _train_from_decisions(config, args.from_decisions)
    truth = config.dataset.ground_truth
    if truth is None:
        raise InputError("training needs labels: set dataset.ground_truth in the config")
    if args.edges is not None:
        return _train_edges(config, truth, args.edges)
    settings = config.train  # --iterations is in it
    output = config.project_dir / (settings.output or f"models/{settings.model}")
    if settings.init:
        settings = replace(settings, init=str(config.resolve(settings.init)))
    voxel_size = config.dataset.voxel_size
    with _open_input(config.source_location(config.image), config.image.key, "image",
                     voxel_size) as image, \
            _open_input(config.source_location(truth), truth.key, "segmentation",
                        voxel_size) as labels:
        everything = (slice(None),) * 3
        raw, truth_labels = image.read(*everything), labels.read(*everything)
        voxel_size = voxel_size or image.voxel_size or (1.0, 1.0, 1.0)
    sam2_config, sam2_checkpoint = config.sam2_model()
    if (settings.model == "fgnet" or settings.teacher) and sam2_checkpoint is None:
        what = "train.model fgnet" if settings.model == "fgnet" else "train.teacher sam2"
        raise InputError(f"{what} learns from SAM2 features: set models.sam2.checkpoint to the "
                         f"SAM2 weights to use")
    if settings.model == "fgnet":
        trainer = FGNetTrainer(raw, truth_labels, output, sam2_config, sam2_checkpoint, settings,
                               config.models.device, voxel_size)
    else:
        teacher = (sam2_config, sam2_checkpoint) if settings.teacher else None
        trainer = StudentTrainer(raw, truth_labels, output, settings, config.models.device,
                                 voxel_size, teacher)
    if args.resume and trainer.resume():
        print(f"resumed at iteration {trainer.iteration}", file=sys.stderr)
    best = trainer.train(progress=not args.quiet)
    print(f"trained {trainer.iteration} iterations on {trainer.device}; best validation VOI "
          f"{best.get('voi', float('nan')):.3f} (split {best.get('voi_split', float('nan')):.3f}"
          f", merge {best.get('voi_merge', float('nan')):.3f}), ARAND "
          f"{best.get('arand', float('nan')):.3f}; checkpoints {trainer.latest} (latest), "
          f"{trainer.best} (best), curve "
          f"{output / 'loss_curve.png'}")
    if args.export:
        source = trainer.best if trainer.best.is_file() else trainer.latest
        weights, metadata = export_weights(source, args.export)
        print(f"exported {source.name} to {weights} (weights) and {metadata} (metadata)")
    return 0


def _schema_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", type=Path, metavar="FILE", help="write it here (default: "
                   "standard output)")
    p.add_argument("--check", metavar="CONFIG", help="instead validate this config and say "
                   "whether it is valid")


def cmd_config_schema(args: argparse.Namespace) -> int:
    from promptcut.config import load_config, schema_text

    if args.check:
        load_config(args.check)
        print(f"{args.check}: valid")
        return 0
    if args.output:
        args.output.write_text(schema_text())
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(schema_text())
    return 0


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    _config_only(p)
    p.add_argument("--host", help="bind address (overrides server.host)")
    p.add_argument("--port", type=int, help="port of the data and landing page server "
                   "(overrides server.port; 0: a free one)")
    p.add_argument("--open", action="store_true", help="open the viewer in a web browser")


def cmd_serve(args: argparse.Namespace) -> int:
    from promptcut.config import load_config
    from promptcut.serving import run_server

    config = load_config(args.config, _overrides({"server.host": args.host,
                                                  "server.port": args.port}))
    with project_lock(config.project_dir, "serve"):
        run_server(config, open_browser=args.open)
    return 0


if __name__ == "__main__":
    sys.exit(main())
