"""Pre-train and evaluate several methods under one budget and compare them in one table.

    python tools/compare.py -c configs/compare/digits_quickstart.yaml [key=value ...]

Each method is trained through ``launch.py --launch tools/train.py`` (the same code path as a
single run) into ``<output_dir>/<label>/``, then every listed evaluation runs through
``launch.py --launch eval_common/eval_<name>.py``. Work whose outputs exist is skipped, so an
interrupted comparison resumes where it stopped. A method that fails becomes a row saying why.
Writes ``results.md`` (methods as rows, best value per column in bold), ``results.csv`` and
``results.png``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hirl_like.cli.common import config_parser, run_cleanly
from hirl_like.config import ConfigError, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = Path(__file__).with_name("compare_defaults.yaml")
TEXT_EVALUATIONS = ("zeroshot", "retrieval")

# (evaluation, column name, how to read the figure from a model's results in eval_<name>.json)
COLUMNS: list[tuple[str, str, callable]] = [
    ("knn", "k-NN top-1 (k=20)", lambda r: r["20"]["top1"]),
    ("linear", "linear top-1", lambda r: r["test_top1"]),
    ("clustering", "clustering NMI", lambda r: r["nmi"]),
    ("clustering", "clustering AMI", lambda r: r["ami"]),
    ("clustering", "clustering acc", lambda r: r["acc"]),
    ("zeroshot", "zero-shot top-1", lambda r: r["top1"]),
    ("retrieval", "image->text R@1", lambda r: r["i2t_r1"]),
    ("retrieval", "text->image R@1", lambda r: r["t2i_r1"]),
    ("finetune", "fine-tune top-1", lambda r: r["test_top1"]),
    ("semisup", "label-fraction fine-tune top-1", lambda r: r["test_top1"]),
    ("segmentation", "segmentation mIoU", lambda r: r["miou"]),
]
SCRIPTS = {"semisup": "finetune"}  # evaluation -> eval_common/eval_<script>.py, when the names differ
PER_MODEL_RESULTS = ("knn", "segmentation")  # reports whose "results" map each model's label to its figures


def report_stem(name: str, flags: Sequence[str]) -> str:
    """The report's name, ``eval_<stem>.json``: semisup's carries its label fraction, as
    eval_finetune.py writes it (``semisup_0.1``)."""
    if name != "semisup":
        return name
    if "--label_fraction" not in flags or flags.index("--label_fraction") + 1 >= len(flags):
        raise ConfigError("evaluations.semisup needs [--label_fraction, F] (e.g. 0.1): the share of labels it fine-tunes on.")
    return f"semisup_{float(flags[flags.index('--label_fraction') + 1]):g}"


def model_results(name: str, report: dict) -> tuple[dict, dict | None]:
    """(pre-trained results, random-init results or None) of one eval_<name>.json; the random-init
    reference is there when the evaluation ran with --compare_random_init."""
    if name in PER_MODEL_RESULTS:
        return report["results"]["pretrained"], report["results"].get("random init")
    return report["results"], report.get("random_init")


REFERENCE_STATUS = "reference"  # status prefix of rows that are not trained methods


@dataclass
class MethodResult:
    label: str
    status: str = "ok"
    train_time_s: float | None = None
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    peak_memory_mb: float | None = None  # the training process's peak (RSS on CPU, allocated on CUDA)
    random_init_figures: dict[str, float] = field(default_factory=dict)  # --compare_random_init: the same ViT untrained

    @property
    def is_reference(self) -> bool:
        """A reference row (e.g. random init): shown, never a method, never marked best."""
        return self.status.startswith(REFERENCE_STATUS)



def last_error_line(text: str) -> str:
    """The line that says why a run failed: our one-line 'error:', else a Python exception, else
    the launcher's verdict, else the last line."""
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    for wanted in (lambda l: l.startswith("error:"), lambda l: "Error" in l, lambda l: l.startswith("[launch]")):
        for line in reversed(lines):
            if wanted(line):
                return line[:300]
    return (lines[-1] if lines else "no output")[:300]


def run(cmd: Sequence[str], log: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    return proc


def fingerprint(parts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def train_method(cfg, method: dict, out: Path) -> MethodResult:
    label = str(method["label"])
    result = MethodResult(label)
    overrides = [*cfg.shared, *method.get("overrides", []), f"output_dir={out}"]
    train_cmd = ["launch.py", "--launch", "tools/train.py", *cfg.launcher, "-c", str(method["config"]), *overrides]
    marker = out / "train_done.json"
    key = fingerprint(train_cmd)
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == key:
        result.train_time_s = json.loads(marker.read_text()).get("wall_time_s")
        result.notes.append("training reused")
        return result
    tic = time.time()
    proc = run(train_cmd, out / "compare.log")
    if proc.returncode != 0:
        result.status = f"failed in training: {last_error_line(proc.stderr + proc.stdout)}"
        return result
    result.train_time_s = round(time.time() - tic, 1)
    marker.write_text(json.dumps({"fingerprint": key, "wall_time_s": result.train_time_s, "command": train_cmd}))
    return result


STUDENT = "student"
STUDENT_SUFFIX = " (students)"  # column suffix of the student_evaluate figures
RANDOM_INIT_SUFFIX = " (its random init)"  # random_init_columns: each row's own network untrained


def evaluations_to_run(cfg) -> list[tuple[str, str]]:
    """[(evaluation, towers)]: every ``evaluate`` entry on the exports, then every
    ``student_evaluate`` entry on the students (``--towers student``)."""
    return [(name, "exported") for name in cfg.evaluate] + [(name, STUDENT) for name in cfg.student_evaluate]


def evaluate_method(cfg, result: MethodResult, out: Path) -> None:
    checkpoint = out / "main_vit_checkpoint.pth"
    has_text = (out / "main_text_checkpoint.pth").is_file()
    for name, towers in evaluations_to_run(cfg):
        extra = list(cfg.evaluations.get(name, []))
        if name in TEXT_EVALUATIONS and not has_text:
            continue
        stem = f"eval_{report_stem(name, extra)}" + ("_student" if towers == STUDENT else "")
        if towers == STUDENT:
            extra = [a for a in extra if a != "--compare_random_init"] + ["--towers", STUDENT]
        report = out / f"{stem}.json"
        cmd = ["launch.py", "--launch", f"eval_common/eval_{SCRIPTS.get(name, name)}.py", *cfg.launcher,
               "--pretrained", str(checkpoint), *extra, *cfg.eval_overrides]
        # reused only if made by this exact command from this checkpoint: changed flags re-run it
        marker = out / f"{stem}.done.json"
        key = fingerprint([*cmd, str(checkpoint.stat().st_mtime_ns)])
        if report.is_file() and marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == key:
            continue
        report.unlink(missing_ok=True)  # a failed re-run must not leave the old figures in the table
        proc = run(cmd, out / "compare.log")
        if proc.returncode != 0:
            result.notes.append(f"{name} failed: {last_error_line(proc.stderr + proc.stdout)}")
        else:
            marker.write_text(json.dumps({"fingerprint": key, "command": cmd}))
    for name, column, read in COLUMNS:
        if name not in cfg.evaluate and name not in cfg.student_evaluate:
            continue
        stem = report_stem(name, list(cfg.evaluations.get(name, [])))
        report = out / f"eval_{stem}.json"
        if name in cfg.evaluate and report.is_file():
            trained, untrained = model_results(name, json.loads(report.read_text()))
            result.figures[column] = float(read(trained))
            if untrained is not None:
                result.random_init_figures[column] = float(read(untrained))
        report = out / f"eval_{stem}_student.json"
        if name in cfg.student_evaluate and report.is_file():
            result.figures[column + STUDENT_SUFFIX] = float(read(model_results(name, json.loads(report.read_text()))[0]))


def read_peak_memory(out: Path) -> float | None:
    """``peak_memory_mb`` of the training run's summary record in ``log.jsonl``, if any."""
    log = out / "log.jsonl"
    if not log.is_file():
        return None
    summaries = [json.loads(line) for line in log.read_text().splitlines() if '"summary"' in line]
    return summaries[-1].get("peak_memory_mb") if summaries else None


def random_init_row(results: list[MethodResult]) -> MethodResult | None:
    """A reference row: the first measured method's ViT at random initialisation (k-NN, and linear
    and clustering when those ran with --compare_random_init)."""
    for r in results:
        if r.random_init_figures:
            return MethodResult(f"random init ({r.label}'s network)", status=f"{REFERENCE_STATUS}, not trained",
                                figures=dict(r.random_init_figures))
    return None


def with_random_init_columns(r: MethodResult) -> MethodResult:
    """A copy of ``r`` whose figures also hold its own network's random-init figures, as
    ``<column> (its random init)``."""
    figures = {**r.figures, **{c + RANDOM_INIT_SUFFIX: v for c, v in r.random_init_figures.items()}}
    return MethodResult(r.label, r.status, r.train_time_s, figures, r.notes, r.peak_memory_mb, r.random_init_figures)


def compute_cells(r: MethodResult, baseline: MethodResult | None) -> list[str]:
    """Train time and peak memory relative to the baseline row (the paper's Table 4 compute column)."""
    cells = []
    for mine, base in ((r.train_time_s, baseline and baseline.train_time_s),
                       (r.peak_memory_mb, baseline and baseline.peak_memory_mb)):
        cells.append(f"{mine / base:.2f}x" if mine and base else "—")
    return cells


def write_reports(results: list[MethodResult], columns: list[str], folder: Path, title: str) -> None:
    trained = [r for r in results if not r.is_reference]
    best = {c: max((r.figures[c] for r in trained if c in r.figures), default=None) for c in columns}
    baseline = trained[0] if trained else None
    relative = f"vs {baseline.label}" if baseline else ""
    header = ["method", *columns, "train time (s)", f"time {relative}", f"peak memory {relative}", "status"]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r.label]
        for c in columns:
            if c not in r.figures:
                cells.append("—")
            else:
                text = f"{r.figures[c]:.2f}"
                is_best = (r in trained and best[c] is not None and r.figures[c] == best[c]
                           and not c.endswith(RANDOM_INIT_SUFFIX))
                cells.append(f"**{text}**" if is_best else text)
        cells.append(f"{r.train_time_s:.0f}" if r.train_time_s is not None else "—")
        cells.extend(compute_cells(r, baseline))
        cells.append(r.status + ("; " + "; ".join(r.notes) if r.notes else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Best value per column in bold (reference rows excluded). '—': not run (no text tower for "
              "zero-shot/retrieval) or failed."]
    (folder / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(folder / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in results:
            writer.writerow([r.label, *[r.figures.get(c, "") for c in columns], r.train_time_s or "",
                             *compute_cells(r, baseline), r.status])
    plot(results, columns, folder / "results.png", title)


def plot(results: list[MethodResult], columns: list[str], path: Path, title: str) -> None:
    """Small multiples: one panel per evaluation, methods as horizontal bars in table order, the
    value written beside each bar, the best trained method's bar highlighted, reference rows grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in results if r.figures]
    if not shown or not columns:
        return
    ncols = min(4, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 1.6, (0.32 * len(shown) + 1.0) * nrows),
                             squeeze=False, sharey=True)
    ys = list(range(len(shown)))
    for ax, column in zip(axes.flat, columns):
        values = [r.figures.get(column) for r in shown]
        trained = [v for r, v in zip(shown, values) if v is not None and not r.is_reference]
        best = max(trained, default=None)
        colors = ["0.75" if r.is_reference else ("tab:orange" if v == best else "tab:blue")
                  for r, v in zip(shown, values)]
        ax.barh(ys, [v or 0.0 for v in values], color=colors)
        for y, v in zip(ys, values):
            ax.annotate("—" if v is None else f"{v:.1f}", (v or 0.0, y), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=8)
        ax.set_title(column, fontsize=9)
        ax.set_xlim(0, 112)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.flat[len(columns):]:
        ax.axis("off")
    axes[0, 0].set_yticks(ys, [r.label for r in shown])
    for ax in axes[:, 0]:
        ax.tick_params(axis="y", labelsize=8)
    axes[0, 0].invert_yaxis()  # table order, top to bottom
    fig.suptitle(f"{title} (%; best trained method in orange)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = config_parser(__doc__).parse_args(argv)
    cfg = load_config(args.config, args.overrides, defaults=DEFAULTS)
    if not cfg.methods:
        raise ConfigError(f"{args.config}: 'methods' is empty; list at least one {{label, config}}.")
    for evaluation in [*cfg.evaluate, *cfg.student_evaluate]:
        if evaluation not in cfg.evaluations:
            raise ConfigError(f"evaluate: {evaluation!r} is not one of {', '.join(cfg.evaluations)}.")
    folder = Path(cfg.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare_config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    results = []
    for method in cfg.methods:
        out = folder / str(method["label"]).replace("/", "_").replace(" ", "_")
        print(f"[compare] {method['label']}: training ({method['config']})", flush=True)
        result = train_method(cfg, method, out)
        result.peak_memory_mb = read_peak_memory(out)
        if result.status == "ok":
            print(f"[compare] {method['label']}: evaluating", flush=True)
            evaluate_method(cfg, result, out)
        print(f"[compare] {method['label']}: {result.status} {json.dumps(result.figures)}", flush=True)
        results.append(result)
        report(cfg, results, folder, Path(args.config).stem)  # the table so far: an interrupted run still has one
    print((folder / "results.md").read_text())
    return 0


def report(cfg, results: list[MethodResult], folder: Path, name: str) -> None:
    """Write results.md / .csv / .png for the methods finished so far, plus the random-init row."""
    if cfg.random_init_columns:
        # methods of different networks (ResNet beside ViT): each row's own random init, beside it
        rows = [with_random_init_columns(r) for r in results]
    else:
        reference = random_init_row(results)
        rows = results + ([reference] if reference is not None else [])
    columns = []
    for evaluation, c, _ in COLUMNS:
        if evaluation in cfg.evaluate:
            columns += [name for name in (c, c + RANDOM_INIT_SUFFIX) if any(name in r.figures for r in rows)]
    columns += [c + STUDENT_SUFFIX for evaluation, c, _ in COLUMNS
                if evaluation in cfg.student_evaluate and any(c + STUDENT_SUFFIX in r.figures for r in rows)]
    write_reports(rows, columns, folder, f"Comparison: {name}")


if __name__ == "__main__":
    run_cleanly(main)
