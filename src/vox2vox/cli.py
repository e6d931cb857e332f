"""The ``vox2vox`` command: a thin layer that parses arguments and calls the library.

Exit status: 0 on success, 2 for a problem the user can fix (one line on stderr naming the file
and the problem; ``--debug`` adds the traceback), 1 for an internal error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from vox2vox import __version__
from vox2vox.errors import Vox2VoxError, Vox2VoxWarning
from vox2vox.progress import progress_bars
from vox2vox.rundir import RunDir

# Each command imports the library it calls inside its handler (the one deliberate exception to
# imports at module top): the library pulls in torch and MONAI (several seconds), which
# `vox2vox --help`, `--version` and argument errors should not wait for.

if TYPE_CHECKING:
    from vox2vox.config import Config

#: The layouts :func:`vox2vox.data.layouts.discover` knows (spelled out here so that the parser
#: does not import the data package; tests/test_cli.py checks the two lists agree).
LAYOUT_NAMES = ("brats", "brats2023", "msd", "nnunet", "folders", "manifest", "single", "hdf5")
LAYOUT_HELP = f"dataset layout: auto (detect from the file names; default) or one of {', '.join(LAYOUT_NAMES)}"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (exit 2), as every other user error: its usage block
    buries the problem under a dozen lines of options."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


NO_PROGRESS_HELP = ("no progress bars (they are off anyway when stderr is not a terminal: a log file, a pipe, "
                    "a batch job); notes, warnings and per-epoch lines stay")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vox2vox",
        description="Vox2Vox: 3D conditional-GAN segmentation of CT and MRI volumes.",
    )
    parser.add_argument("--version", action="version", version=f"vox2vox {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    common.add_argument("--allow-nonuniform", action="store_true",
                        help="DICOM series with missing or unevenly spaced slices: resample them linearly onto a "
                             "uniform grid along the slice normal (default: refuse them)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", parents=[common], help="phantom data -> train -> predict -> evaluate -> figures")
    p.add_argument("--out", default="vox2vox-demo", help="output folder (default: ./vox2vox-demo)")
    p.add_argument("--size", choices=("small", "tiny"), default="small",
                   help="small: the full demo (about a minute on an idle 2-core CPU); tiny: a seconds-long smoke run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = sub.add_parser("dataset", parents=[common], help="find and check the cases in a folder or manifest")
    p.add_argument("path", help="dataset folder (BraTS, BraTS 2023, MSD, nnU-Net raw), manifest .csv or image")
    p.add_argument("--layout", default="auto", help=LAYOUT_HELP)
    p.add_argument("--convention", default=None, help="label convention (brats, brats2015, brats2023, binary, ...)")
    p.add_argument("--label-name", default=None, metavar="NAME",
                   help="folders layout: the label file's name in every case folder (e.g. OTMultiClass)")
    p.add_argument("--channels", default=None, metavar="A,B",
                   help="image channels to use, in this order (folders layout: file names)")
    p.add_argument("--write-manifest", default=None, metavar="FILE.csv",
                   help="also write the cases found as a manifest CSV, to edit and use as PATH")

    p = sub.add_parser("train", parents=[common], help="train Vox2Vox on a dataset",
                       description="Train Vox2Vox. Without --config the run is planned from the data and "
                                   "this machine first (as `vox2vox plan`; the plan is saved as plan.toml "
                                   "in the run directory); --config paper keeps the paper's settings.")
    p.add_argument("--data", help="dataset folder or manifest (overrides data.path)")
    p.add_argument("--config", help="config file (.json or .toml), or 'paper' for the paper's exact settings "
                                    "(default: plan from the data)")
    p.add_argument("--budget", default=None, metavar="DURATION",
                   help="train for this long, e.g. 30m or 12h (sets train.budget; the learning rate decays to "
                        "its end exactly then). A planned run without it plans for 1h on a CPU, 12h on a GPU")
    p.add_argument("--out", default=None, help="run directory (default: runs/<data name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=50 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="fine-tune: start a new run from this run directory's or .safetensors file's weights "
                        "(its network and preprocessing; fresh optimiser and schedule; without --config nothing "
                        "is planned and the model's settings are used)")
    p.add_argument("--reinit-head", action="store_true",
                   help="with --init-from: a fresh output layer, for data with other labels (train.reinit_output)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (overrides train.device)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = sub.add_parser("info", parents=[common], help="a model's card: channels, normalisation, spacing, labels, "
                       "training data, scores, versions, sha256")
    p.add_argument("model", help="run directory, .safetensors checkpoint, or a file of `vox2vox export` (.onnx, .pt)")
    p.add_argument("--json", action="store_true", help="print the card as JSON")

    p = sub.add_parser("predict", parents=[common], help="segment volumes with a trained model (a translation model: synthesise its target channels)")
    p.add_argument("--model", required=True, action="append",
                   help="run directory, .safetensors checkpoint, or a file of `vox2vox export` (.onnx, "
                        "TorchScript .pt); repeat for an ensemble")
    p.add_argument("--input", required=True, action="append", metavar="PATH | NAME=FILE",
                   help="an image, a dataset folder or a manifest; or one case as its channel files, each "
                        "NAME=FILE with the model's channel names (--input t1=a.nii.gz --input flair=b.nii.gz; "
                        "the case id is the files' common name start)")
    p.add_argument("--output", required=True, help="folder for <case_id>.nii.gz label maps")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over the 8 axis-flip combinations (8x slower); default: what the model's "
                        "training chose on its validation cases (planned runs), else off")
    p.add_argument("--mode", choices=("auto", "whole", "sliding"), default="auto",
                   help="whole volume in one pass, or sliding windows for volumes too large for memory "
                        "(auto: whole up to 256x256x192 voxels)")
    p.add_argument("--window", type=int, nargs=3, default=(128, 128, 128), metavar=("X", "Y", "Z"),
                   help="sliding-window size in voxels along the image's axes in nibabel's order, after "
                        "reorientation to RAS+ (as train.patch_size; default 128 128 128)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="off",
                   help="mixed precision: on CUDA bf16/fp16 (auto: bf16 where supported); on a CPU "
                        "bf16 only (~1.5-2x faster with avx512_bf16/AMX, probabilities within ~1e-2)")
    p.add_argument("--layout", default="auto", help=LAYOUT_HELP)
    p.add_argument("--save-probabilities", nargs="?", const="npz", choices=("npz", "nifti"), default=None,
                   help="also write class probabilities: npz (default; <id>.npz, key 'probabilities', "
                        "axes (C, Z, Y, X) as nnU-Net writes) or nifti (<id>_probs.nii.gz, 4D on the input grid)")
    p.add_argument("--output-format", choices=("nifti", "dicom-seg", "seg-nrrd"), default="nifti",
                   help="label map file: nifti (<id>.nii.gz; default), dicom-seg (<id>.dcm, a DICOM SEG "
                        "referencing the input series; DICOM input only; needs the dicom extra) or seg-nrrd "
                        "(<id>.seg.nrrd, opens in 3D Slicer as a segmentation with names and colours)")
    p.add_argument("--save-uncertainty", action="store_true",
                   help="also write <id>_entropy.nii.gz (normalised entropy of the averaged softmax, in [0, 1]), "
                        "with --tta or an ensemble <id>_spread.nii.gz (mutual information between members), and "
                        "per-case scores in uncertainty.csv")
    p.add_argument("--min-et-voxels", type=int, default=0, metavar="N",
                   help="relabel enhancing-tumour components under N voxels as necrotic core (BraTS; 0: off)")
    p.add_argument("--largest-component", nargs="?", const="class", choices=("class", "region", "off"), default=None,
                   help="keep only the largest connected component of each class (the default when given "
                        "alone) or region; off keeps all. Default: what the model's training chose on its "
                        "validation cases (planned runs), else off")
    p.add_argument("--threshold", type=_threshold_arg, default=None, metavar="T",
                   help="foreground probability a voxel needs (in (0, 1); 'argmax' for the plain most-probable "
                        "class). Default: what the model's training chose on its validation cases (planned "
                        "runs), else argmax")
    p.add_argument("--fill-missing", action="append", default=[], metavar="CHANNEL=MODEL",
                   help="synthesise the model's channel CHANNEL with the translation model MODEL (run directory or "
                        "checkpoint) from the channels the cases have, then segment (repeatable); only where "
                        "'vox2vox fill-check' measured that the synthesis helps this segmenter: otherwise the "
                        "channel is left absent (channel-dropout model) or the call refused, with a line saying which")
    p.add_argument("--fill-unchecked", action="store_true",
                   help="use a --fill-missing synthesis that no fill-check record has measured (otherwise refused)")
    p.add_argument("--channel", default=None, metavar="NAME",
                   help="the input channel a one-channel model reads, e.g. --channel flair for builtin:brain-tumour "
                        "on a BraTS folder (the model's channel is named after it)")
    p.add_argument("--missing", action="append", default=[], metavar="CHANNEL",
                   help="the cases have no CHANNEL (repeatable): a model trained with channel dropout "
                        "(augment.channel_dropout) segments them without it; other models refuse. An empty "
                        "manifest cell is the same for one case")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = sub.add_parser("fill-check", parents=[common], help="measure whether a translator's synthesis of a channel "
                       "helps a segmenter (Dice with the real channel, the synthesis, and the channel absent or zeroed) "
                       "and record it beside the translator, for predict --fill-missing")
    p.add_argument("--segmenter", required=True, action="append",
                   help="segmentation run directory or checkpoint (repeat for an ensemble, as predict --model)")
    p.add_argument("--translator", required=True, help="translation run directory or checkpoint")
    p.add_argument("--data", required=True, help="labelled cases with every channel, neither model trained on "
                   "(a validation or test split): folder or manifest")
    p.add_argument("--channel", default=None, help="the segmenter's channel the translator fills (default: its one target)")
    p.add_argument("--layout", default="auto", help=LAYOUT_HELP)
    p.add_argument("--max-cases", type=int, default=None, metavar="N", help="score the first N labelled cases only")
    p.add_argument("--min-gain", type=float, default=0.01, metavar="D",
                   help="mean Dice the synthesis must gain over the absent/zeroed route to count as helping (default 0.01)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = sub.add_parser("export", parents=[common], help="the generator as one ONNX or TorchScript file with its "
                       "input contract (channels, normalisation, spacing, labels or a translation's targets) in the file's metadata")
    p.add_argument("model", metavar="MODEL", help="run directory or .safetensors checkpoint")
    p.add_argument("--format", default=None, metavar="onnx|torchscript",
                   help="onnx (needs the onnx extra) or torchscript; default: from --out's suffix (.onnx, .pt)")
    p.add_argument("--out", required=True, help="file to write: model.onnx or model.pt")

    p = sub.add_parser("evaluate", parents=[common], help="score predictions against ground truth (BraTS rules)")
    p.add_argument("--pred", required=True, help="folder of predicted label maps")
    p.add_argument("--truth", required=True, help="dataset folder or manifest with labels, or a folder of label files")
    p.add_argument("--regions", choices=("auto", "brats", "labels"), default="auto",
                   help="auto: the label convention's regions (BraTS: WT/TC/ET; other labels: each label and their "
                        "union); brats: WT/TC/ET, refused on other labels; labels: one region per label value found")
    p.add_argument("--lesion-wise", dest="lesion_wise", default="auto", metavar="RULE",
                   help="lesion-wise Dice/HD95 by a BraTS 2023+ task's rule: glioma, africa, pediatric, meningioma, "
                        "metastases, or off (default auto: glioma for BraTS regions, off otherwise)")
    p.add_argument("--nsd-tolerance", dest="nsd_tolerance", type=float, default=None, metavar="MM",
                   help="surface tolerance of the normalised surface Dice in mm (default 1)")
    p.add_argument("--convention", default=None,
                   help="label convention of the truth (default: the dataset layout's, e.g. brats2023 for BraTS 2023)")
    p.add_argument("--out", default=None, help="per-case CSV (a summary JSON is written beside it)")
    p.add_argument("--task", choices=("segment", "translate"), default="segment",
                   help="segment: label maps (Dice, HD95); translate: synthesised volumes (MAE, PSNR, SSIM in a mask)")
    p.add_argument("--mask", default=None, help="translate: mask file (one case) or folder of <case_id>.nii.gz "
                                                "masks (default: the case's mask, else the real volume's foreground)")
    p.add_argument("--target", default=None, help="translate: the real channel's name in a --truth dataset")
    p.add_argument("--source", default=None, help="translate: the channel shown as source in the report's figures")

    p = sub.add_parser("report", parents=[common], help="one self-contained HTML report of a run, demo or evaluation")
    p.add_argument("folder", help="a run directory, a demo output folder, or a folder holding an evaluation CSV")
    p.add_argument("--out", default=None, help="HTML file (default: <folder>/report.html)")

    p = sub.add_parser("render", parents=[common], help="3D PNG of label maps (needs the render extra: pyvista)")
    p.add_argument("labels", metavar="CASE_OR_LABEL_FILE",
                   help="a label file (drawn as the prediction) or one case folder (its label map is drawn)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--image", default=None, help="image of the case: its outline is drawn around the labels")
    p.add_argument("--truth", default=None, help="ground-truth label file, drawn beside from the same camera")

    p = sub.add_parser("cv", parents=[common], help="K-fold cross-validation: one run per fold, folds predict as an ensemble")
    p.add_argument("--data", help="dataset folder or manifest (overrides data.path)")
    p.add_argument("--folds", type=int, required=True, metavar="K", help="number of folds (the paper: 10)")
    p.add_argument("--fold", type=int, default=None, metavar="I",
                   help="train only fold I (0-based), e.g. one fold per job of a scheduler array")
    p.add_argument("--out", required=True, help="cross-validation directory (folds.json, fold_<i>/ runs)")
    p.add_argument("--config", help="config file (.json or .toml), or 'paper' for the paper's exact settings "
                                    "(default: plan each fold from its own training cases, as train plans a run; "
                                    "the plan is saved as plan.toml in the fold's folder)")
    p.add_argument("--budget", default=None, metavar="DURATION",
                   help="train EACH FOLD for this long, e.g. 30m or 12h (sets train.budget; a fold's planning counts "
                        "towards it). A planned fold without it plans for 1h on a CPU, 12h on a GPU")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=50 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the fold runs from their last checkpoints")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (overrides train.device)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = sub.add_parser("plan", parents=[common], help="plan a run from the data and this machine (--data), "
                       "or estimate the memory a config needs per GPU")
    p.add_argument("--data", default=None, help="dataset folder or manifest: fingerprint it, time candidate "
                                                "networks here and write a complete config (plan.toml)")
    p.add_argument("--budget", default=None, metavar="DURATION", help="training time to plan for, e.g. 30m or 12h")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device to plan for")
    p.add_argument("--out", default="plan.toml", help="where --data writes the plan (default: plan.toml)")
    p.add_argument("--config", help="config file (.json or .toml), or 'paper' for the paper's exact settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.patch_size=[128,128,128] (repeatable)")
    p.add_argument("--world-size", type=int, default=1, help="processes the global batch is split over (default 1)")
    p.add_argument("--amp", choices=("bf16", "fp16", "off"), default=None,
                   help="precision to plan for (default: train.amp, 'auto' counted as bf16)")

    p = sub.add_parser("models", parents=[common], help="the models shipped with vox2vox (use one as "
                       "--model builtin:NAME or --init-from builtin:NAME)")
    p.add_argument("--json", action="store_true", help="print the list with each card as JSON")

    p = sub.add_parser("prior", parents=[common], help="train the shipped brain-tumour prior from domain-randomised "
                       "synthetic scans (the recipe of `make prior`) and write it as a shippable model + card")
    p.add_argument("--out", required=True, help="output folder: run/ (a run folder) and brain-tumour.{safetensors,json}")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped prior's recipe)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                   help="training precision (auto: bf16 on a GPU, float32 on a CPU; bf16 on a CPU with native bf16)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    p = sub.add_parser("config", parents=[common], help="print the configuration: every key, its default and meaning")
    p.add_argument("--defaults", action="store_true",
                   help="the same as no option: every config key with its default value and what it means")

    p = sub.add_parser("env", parents=[common], help="what a run meets here: the torch build (CPU, CUDA, ROCm), "
                       "devices and their memory, CPU model and vector extensions, threads, free memory")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from vox2vox.data.dicom import allow_nonuniform

    try:
        with allow_nonuniform(args.allow_nonuniform), progress_bars(not getattr(args, "no_progress", False)), \
                warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(args.command, warnings.showwarning)
            code = _COMMANDS[args.command](args) or 0
        sys.stdout.flush()  # here, not at exit: a reader that has gone is handled below
        return code
    except BrokenPipeError:
        # The reader of stdout went away (`vox2vox info --json | head`): stop quietly, as Unix
        # tools do. stdout points at /dev/null so that the interpreter's final flush cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Vox2VoxError as err:
        if args.debug:
            traceback.print_exc()
        print(f"vox2vox {args.command}: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except MemoryError:
        # Declared sizes are checked before reading; this is what is left (many large cases at once).
        if args.debug:
            traceback.print_exc()
        print(f"vox2vox {args.command}: error: out of memory; use smaller or fewer volumes, smaller patches or "
              "batches, or a machine with more memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vox2vox {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an internal error: say so, with the traceback on request
        if args.debug:
            traceback.print_exc()
        print(f"vox2vox {args.command}: internal error: {type(err).__name__}: {err} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _one_line_warnings(command: str, show):
    """``warnings.showwarning`` that prints the project's warnings as one line on stderr, as its
    errors are (no source location: the message names the file); other libraries' stay as they are."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, Vox2VoxWarning):
            print(f"vox2vox {command}: warning: {one_line(str(message))}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def one_line(message: str) -> str:
    """``message`` on one line: line breaks (from a file name or a library's text) become ' | '."""
    return " | ".join(part.strip() for part in message.replace("\r", "\n").split("\n") if part.strip())


def _demo(args: argparse.Namespace) -> int:
    from vox2vox.atomic import ensure_folder
    from vox2vox.demo import run_demo

    ensure_folder(args.out)  # before any progress line, so an unwritable --out is one error line
    run_demo(Path(args.out), size=args.size, seed=args.seed, device=args.device)
    return 0


def _dataset(args: argparse.Namespace) -> int:
    from vox2vox.data.checking import check_dataset
    from vox2vox.data.layouts import discover
    from vox2vox.data.manifest import write_spec_manifest

    channels = tuple(c.strip() for c in args.channels.split(",") if c.strip()) if args.channels else None
    spec = discover(args.path, layout=args.layout, label_name=args.label_name, channel_names=channels)
    if args.write_manifest:
        # Written before checking: a dataset with problems is exactly the one worth editing.
        print(f"manifest: {write_spec_manifest(spec, args.write_manifest)}")
    report = check_dataset(spec, convention=args.convention)
    print(report.format())
    if report.ok:
        return 0
    # The table above lists every problem; stderr gets the one line the exit status promises.
    errors = [p for p in report.problems if p.severity == "error"]
    first = errors[0]
    print(one_line(f"vox2vox dataset: error: {spec.root}: {len(errors)} error(s); first: {first.case_id}: "
                   f"{first.file}: {first.message}"), file=sys.stderr)
    return 2


def _threshold_arg(text: str) -> float | str:
    """``predict --threshold``: a probability strictly between 0 and 1, or ``argmax``."""
    if text == "argmax":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a probability strictly between 0 and 1, or argmax")
    return value


def _config_from_args(args: argparse.Namespace, *, saved: Path | None = None) -> Config:
    """``--config`` (else ``saved``, else defaults) with ``--set``, ``--data`` and ``--device`` applied."""
    from vox2vox.config import Config, load_config

    if getattr(args, "config", None) == "paper":
        config = Config()  # the defaults are the paper's settings
    elif getattr(args, "config", None):
        try:
            config = load_config(args.config)
        except Vox2VoxError as err:  # a value check names the key; the user also needs the file
            raise err if str(err).startswith(str(args.config)) else Vox2VoxError(f"{args.config}: {err}") from err
    elif saved is not None and saved.is_file():
        config = load_config(saved)
    else:
        config = Config()
    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.path={json.dumps(args.data)}")
    if getattr(args, "device", None):
        overrides.append(f"train.device={json.dumps(args.device)}")
    return config.with_overrides(overrides)


def _train(args: argparse.Namespace) -> int:
    import time

    from vox2vox.config import parse_duration
    from vox2vox.train.finetune import explicit_keys, finetune_config, load_source
    from vox2vox.train.planned import PlanRequest, plan_run
    from vox2vox.train.runlock import check_run_folder
    from vox2vox.train.runs import train_on_dataset
    from vox2vox.train.tracking import check_tracking

    started = time.perf_counter()  # a budget counts planning and loading too
    out = Path(args.out) if args.out else None
    resuming = args.resume and out is not None
    if args.init_from and args.resume:
        raise Vox2VoxError("train: --init-from starts a new run and --resume continues one; pass one of them")
    if args.reinit_head and not args.init_from:
        raise Vox2VoxError("train: --reinit-head re-initialises the output layer of an --init-from model; pass --init-from")
    if args.reinit_head:
        args.overrides = [*args.overrides, "train.reinit_output=true"]
    planned = not args.config and not resuming
    if args.budget is not None:
        parse_duration(args.budget, key="--budget")
        args.overrides = [*args.overrides, f"train.budget={json.dumps(args.budget)}"]
    config = _config_from_args(args, saved=RunDir(out).config if resuming else None)
    if not config.data.path:
        raise Vox2VoxError("train: no data; pass --data PATH")
    if out is None:
        out = Path("runs") / Path(config.data.path).name.replace(".csv", "")
    check_tracking(config)  # a missing extra is one line now, not after planning and loading
    plan_toml = finetune = None
    if args.init_from:
        check_run_folder(out, resume=False)
        finetune = load_source(args.init_from)
        explicit = explicit_keys(None if args.config == "paper" else args.config, [*args.overrides, *_implied_keys(args)])
        if planned and finetune.from_randomised_scans:
            # A prior's schedule and options were made for synthetic scans: plan for this data and
            # keep only the prior's network and preprocessing.
            run = plan_run(config, PlanRequest(tuple(args.overrides), budget_given=args.budget is not None))
            for line in run.reasons:
                print(f"plan: {line}")
            print(f"plan: network and preprocessing from {args.init_from} (fine-tuning keeps them)")
            config, plan_toml = finetune_config(finetune, run.config, explicit=explicit, planned=False), run.toml
        else:
            config = finetune_config(finetune, config, explicit=explicit, planned=planned)
        planned = False  # the source model's settings, or the plan made above
    if planned:
        check_run_folder(out, resume=False)  # before minutes of planning
        # The plan, then the user's data options and --set values on top of it.
        run = plan_run(config, PlanRequest(tuple(args.overrides), budget_given=args.budget is not None))
        # On stdout: stderr carries progress and, for a user error, its one line.
        for line in run.reasons:
            print(f"plan: {line}")
        config, plan_toml = run.config, run.toml  # plan.toml is written once training has checked the folder
    result = train_on_dataset(config, out, resume=args.resume, started=started, plan_toml=plan_toml,
                              finetune=finetune)
    from vox2vox.train.distributed import is_main

    if not is_main():  # under torchrun, rank 0 alone reports
        return 0
    metric = "score (-MAE)" if config.task.translate and config.task.select == "mae" else (
        "SSIM" if config.task.translate else "Dice")
    key = "val_score" if config.task.translate else "val_dice"
    if config.train.select == "last":
        final = next((r[key] for r in reversed(result.history) if key in r), None)
        score = f"final validation {metric} {final:.4f}" if final is not None else "no validation cases"
        print(f"trained {result.epochs} epochs ({result.steps} steps); the final model is used: {score}")
    else:
        best = f"{result.best_score:.4f} (epoch {result.best_epoch})" if result.best_epoch > 0 else "n/a (no validation cases)"
        print(f"trained {result.epochs} epochs ({result.steps} steps); best validation {metric} {best}")
    print(f"run directory: {out}")
    return 0


def _implied_keys(args: argparse.Namespace) -> list[str]:
    """Config keys set by options other than --set: --data, --device, and train.budget (none)
    when epochs are asked for without --budget."""
    keys = ["data.path"] if args.data else []
    keys += ["train.device"] if args.device else []
    if args.budget is None and any(o.split("=", 1)[0].strip() == "train.epochs" for o in args.overrides):
        keys.append("train.budget")
    return keys


def _info(args: argparse.Namespace) -> int:
    from vox2vox.infer.info import read_model_card
    from vox2vox.model.builtin import find_builtin, format_shipped, is_builtin
    from vox2vox.model.card import card_json_text, format_card

    card = read_model_card(args.model)
    shipped = find_builtin(args.model) if is_builtin(args.model) else None
    if args.json:
        doc = json.loads(card_json_text(card))
        if shipped is not None:
            doc["shipped"] = shipped.card
        print(json.dumps(doc, indent=2))
    else:
        print(format_card(card))
        if shipped is not None:
            print(format_shipped(shipped))
    return 0


def _models(args: argparse.Namespace) -> int:
    from vox2vox.model.builtin import PREFIX, shipped_models

    models = shipped_models()
    if args.json:
        print(json.dumps([{"name": PREFIX + m.name, **m.card} for m in models], indent=2))
        return 0
    if not models:
        print("no models are shipped with this installation")
    for m in models:
        print(f"{PREFIX}{m.name}  ({m.weights.stat().st_size / 1e6:.1f} MB)\n  {m.summary}")
    return 0


def _prior(args: argparse.Namespace) -> int:
    from vox2vox.train.prior import PRIOR_STEPS, ship_prior, train_prior

    out = Path(args.out)
    steps = PRIOR_STEPS if args.steps is None else args.steps
    result = train_prior(out / "run", steps=steps, seed=args.seed, device=args.device, amp=args.amp,
                         progress=not args.no_progress, resume=args.resume)
    command = f"vox2vox prior --steps {steps} --seed {args.seed} --amp {args.amp}"
    target = ship_prior(out / "run", out, command=command)
    print(f"trained the prior for {result.steps} steps; wrote {target} and {target.with_suffix('.json')} "
          "(add zero-shot scores with benchmarks/prior_zero_shot.py --card)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from vox2vox.data.channel_files import channel_files_spec, is_channel_item
    from vox2vox.device import resolve_device
    from vox2vox.infer.inference import read_model
    from vox2vox.infer.options import CLI_NAMES, PredictionOptions
    from vox2vox.infer.predictor import Predictor
    from vox2vox.infer.translation import parse_fill
    from vox2vox.train.crossval import expand_model_paths

    device = resolve_device(args.device)
    models = [read_model(m, device=device) for m in expand_model_paths(args.model)]
    spec = None
    if len(args.input) > 1 or is_channel_item(args.input[0]):  # one case as NAME=FILE channel files
        if models[0].config.task.translate or args.fill_missing:
            raise Vox2VoxError("--input NAME=FILE: one case from channel files is predicted by segmentation "
                               "models without --fill-missing; give a manifest or folder otherwise")
        given = None if models[0].channels is None else [c for c in models[0].channels if c not in args.missing]
        spec = channel_files_spec(args.input, given)
        input_path = spec.root
    else:
        input_path = args.input[0]
    # Choices training made on its validation cases (train.tune_prediction) where not given here.
    options = PredictionOptions(
        tta=args.tta, threshold=args.threshold, largest_component=args.largest_component,
        min_et_voxels=args.min_et_voxels, mode=args.mode, window=tuple(args.window), overlap=args.overlap,
        amp=args.amp, missing=tuple(args.missing), fill_missing=tuple(parse_fill(args.fill_missing)),
        uncertainty=args.save_uncertainty,
        save_probabilities=args.save_probabilities, output_format=args.output_format, layout=args.layout,
        channel=args.channel,
        # --no-progress also keeps the per-case lines, which the summary below repeats, off stderr.
        progress=not args.no_progress)
    predictor = Predictor(models, options, device=device, names=CLI_NAMES)
    fill = {c: read_model(m, device=device) for c, m in parse_fill(args.fill_missing).items()}  # a translation predictor refused it
    report = predictor.predict_folder(input_path, args.output, spec=spec, fill=fill, unchecked=args.fill_unchecked)
    for note in report.notes:
        print(f"note: {one_line(note)}", file=sys.stderr)
    print(f"wrote {len(report.written)} prediction(s) to {args.output}")
    if report.empty:
        print(f"  no foreground predicted in {len(report.empty)} case(s): {', '.join(one_line(c) for c in report.empty)}")
    if report.uncertainty_csv is not None:
        case, scores = max(report.uncertainty.items(), key=lambda item: item[1].entropy_mean)
        print(f"uncertainty scores: {report.uncertainty_csv} (highest mean entropy: {one_line(case)}, "
              f"{scores.entropy_mean:.4f})")
    for case_id, reason in report.failed.items():
        print(f"  failed: {one_line(case_id)}: {one_line(reason)}", file=sys.stderr)
    if report.failed:
        return 2
    return 0


def _fill_check(args: argparse.Namespace) -> int:
    from vox2vox.device import resolve_device
    from vox2vox.infer.fill_record import record_path
    from vox2vox.infer.inference import read_model
    from vox2vox.report.fill_check import fill_check
    from vox2vox.train.crossval import expand_model_paths

    device = resolve_device(args.device)
    segmenters = [read_model(m, device=device) for m in expand_model_paths(args.segmenter)]
    translator = read_model(args.translator, device=device)
    if args.max_cases is not None and args.max_cases < 1:
        raise Vox2VoxError(f"--max-cases {args.max_cases}: must be >= 1")
    record = fill_check(segmenters, translator, args.data, channel=args.channel, layout=args.layout,
                        max_cases=args.max_cases, min_gain=args.min_gain, device=device,
                        progress=not args.no_progress)
    for route in ("real", "synthesised", record.fallback):
        regions = ", ".join(f"{n} {v:.3f}" for n, v in record.regions[route].items())
        print(f"{route:<12} Dice {record.dice[route]:.3f} ({regions})")
    verdict = ("helps: predict --fill-missing will use it" if record.helps else
               "does not help: predict --fill-missing will " +
               ("predict without the channel" if record.fallback == "absent" else "refuse"))
    print(f"{record.channel}: synthesis gain {record.gain:+.3f} over {record.fallback} (needed {record.min_gain:+.3f}) "
          f"on {len(record.case_ids)} case(s): {verdict}")
    print(f"record: {record_path(translator.path, [m.sha256 for m in record.segmenters], record.channel)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from vox2vox.infer.contract import describe_output
    from vox2vox.infer.export import export_model

    result = export_model(args.model, args.out, fmt=args.format)
    contract = result.contract
    print(f"exported the {contract['generator']['arch']} generator ({result.parameters:,} parameters) of "
          f"{contract['source']['file']} to {result.path} ({result.format}; matches PyTorch within "
          f"{result.max_difference:.1g})")
    print(f"input: {', '.join(contract['input']['channels'])}, sizes multiples of {contract['input']['size_multiple']}; "
          f"{describe_output(contract)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from vox2vox.report.evaluation import evaluate_folder

    if args.task == "translate":
        from vox2vox.report.translation import evaluate_translation

        result = evaluate_translation(args.pred, args.truth, target=args.target, source=args.source, mask=args.mask,
                                      out_csv=args.out)
        print(result.format_summary())
        if args.out:
            print(f"Report: {Path(args.out).with_name(Path(args.out).stem + '_report.html')}")
        return 0

    from vox2vox.report.metrics import NSD_TOLERANCE_MM

    tolerance = NSD_TOLERANCE_MM if args.nsd_tolerance is None else args.nsd_tolerance
    result = evaluate_folder(args.pred, args.truth, regions=args.regions, convention=args.convention, out_csv=args.out,
                             lesion_rule=args.lesion_wise, nsd_tolerance_mm=tolerance)
    print(result.format_summary())
    if args.out:
        from vox2vox.report.report import write_report

        csv = Path(args.out)
        report = write_report(csv.parent, csv.with_name(f"{csv.stem}_report.html"), truth=args.truth, predictions=args.pred)
        print(f"Report: {report}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from vox2vox.report.report import write_report

    print(f"report: {write_report(args.folder, args.out)}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from vox2vox.report.render import render_files

    print(f"rendered: {render_files(args.out, args.labels, image=args.image, truth=args.truth)}")
    return 0


def _cv(args: argparse.Namespace) -> int:
    from vox2vox.config import parse_duration
    from vox2vox.train.crossval import run_cross_validation
    from vox2vox.train.planned import PlanRequest

    if args.budget is not None:
        parse_duration(args.budget, key="--budget")
        args.overrides = [*args.overrides, f"train.budget={json.dumps(args.budget)}"]
    config = _config_from_args(args)
    # Without --config each fold is planned on its own training cases, as `train` plans a run.
    plan = None if args.config else PlanRequest(tuple(args.overrides), budget_given=args.budget is not None)
    results = run_cross_validation(config, args.out, folds=args.folds, fold=args.fold, resume=args.resume,
                                   plan=plan)
    for i, result in results.items():
        best = f"{result.best_score:.4f} (epoch {result.best_epoch})" if result.best_epoch > 0 else "n/a"
        print(f"fold {i}: {result.epochs} epochs; best validation {'score' if config.task.translate else 'Dice'} {best}")
    print(f"cross-validation directory: {args.out} (predict with --model {args.out} for the fold ensemble)")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from vox2vox.atomic import atomic_write_text
    from vox2vox.config import parse_duration
    from vox2vox.train.memory import estimate_memory
    from vox2vox.train.planned import PlanRequest, plan_run

    if args.data:
        if args.budget is not None:
            parse_duration(args.budget, key="--budget")
            args.overrides = [*args.overrides, f"train.budget={json.dumps(args.budget)}"]
        config = _config_from_args(args)
        # The reasons and the file hold the user's --set values, as a planned `train` does.
        run = plan_run(config, PlanRequest(tuple(args.overrides), budget_given=args.budget is not None))
        for line in run.reasons:
            print(line)
        atomic_write_text(Path(args.out), run.toml)
        print(f"plan written to {args.out} (train with: vox2vox train --data {args.data} --config {args.out})")
        return 0
    args.data = None
    config = _config_from_args(args)
    print(estimate_memory(config, world_size=args.world_size, amp=args.amp).format())
    return 0


def _env(args: argparse.Namespace) -> int:
    from vox2vox.environment import read_environment

    env = read_environment()
    print(env.to_json() if args.json else env.format(), end="\n" if args.json else "")
    return 0


def _config(args: argparse.Namespace) -> int:
    from vox2vox.config import describe_defaults

    print(describe_defaults(), end="")
    return 0


_COMMANDS = {
    "fill-check": _fill_check,
    "demo": _demo,
    "dataset": _dataset,
    "train": _train,
    "info": _info,
    "predict": _predict,
    "export": _export,
    "evaluate": _evaluate,
    "cv": _cv,
    "plan": _plan,
    "report": _report,
    "render": _render,
    "config": _config,
    "env": _env,
    "models": _models,
    "prior": _prior,
}


if __name__ == "__main__":
    sys.exit(main())
