"""Mutation testing of bnexp's core modules with cosmic-ray: which small code changes do the tests miss?

    pip install cosmic-ray
    python scripts/mutation_check.py                        # every target, a seeded sample of 15 mutants each
    python scripts/mutation_check.py --targets step data --sample 0      # all mutants of two targets
    python scripts/mutation_check.py --rerun-survivors      # the last sessions' survivors, against today's tests
    python scripts/mutation_check.py --revision v1          # mutate and test a commit's files instead
    python scripts/mutation_check.py --sample 30 --extend   # grow the last sessions' samples to 30 each

Each target is a few source files and the test files that check them. cosmic-ray writes one mutant at a time
into the source file, runs the target's tests (`pytest -x`, stopping at the first failure) and puts the file
back. Because it edits files in place, this script runs it on a copy of the working tree under --work
(default `.mutation/`, git-ignored), never on the checkout itself; the sessions (SQLite) and a results.md with
the rates and every surviving mutant's diff stay there.

A mutant is killed when a test fails (or the run exceeds its timeout: a mutant that hangs), and survives when
all pass. The surviving rate is survived / (killed + survived). A survivor is not always a gap: some mutants are
equivalent (e.g. `x >= 1` for `x > 0` on integers), so read the diffs before writing a test.

`--rerun-survivors` copies each target's session, forgets the survivors' results and runs them again on a fresh
copy of the tree: the "after" rate of the same mutants. The mutated source files must be unchanged since the
session was made (a mutant is addressed by operator and occurrence in its file); the script checks that.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]

# Training tests that take more than ~8 s each and check the command line, multirun, signals, torch.compile or
# the benchmark script rather than the loop: left out of the per-mutant runs to keep them short.
SLOW_TRAIN_TESTS = ("torch_compile or cli_runs or logger_none or replaces_the_first or multirun "
                    "or overhead_benchmark or sigterm")


@dataclass
class Target:
    sources: list[str]  # files (or folders) to mutate
    tests: list[str]  # test file globs, relative to the repo root (one that matches nothing adds nothing)
    deselect: str | None = None  # a pytest -k expression of tests to leave out
    # per source file, the functions and classes (dotted for nested ones) whose lines are mutated; others: all
    only: dict[str, list[str]] = field(default_factory=dict)


# (tests/norm/test_backends_in_training.py compares two backends' training, not the loop: left out too)
TRAIN_TESTS = ["tests/train/test_trainer_schedule.py", "tests/train/test_trainer_process.py",
               "tests/train/test_step*.py", "tests/instrument/test_instrument.py", "tests/train/test_train.py"]
REPORT_TESTS = ["tests/report/test_report*.py", "tests/report/test_records*.py", "tests/report/test_run_selection.py",
                "tests/report/test_mechanism_report.py"]

TARGETS = {
    # (the Triton kernels are not mutated: their tests, tests/norm/test_triton_kernels.py and the kernels against
    # the oracle, stay out; the layer's routing to them is tested in tests/norm/test_norm_layer.py)
    "norm": Target(["bnexp/norm/layer.py", "bnexp/norm/functional.py"], ["tests/norm/test_norm_*.py"],
                   "not triton_path_in_float32"),
    "step": Target(["bnexp/train/step.py"], TRAIN_TESTS, f"not ({SLOW_TRAIN_TESTS})"),
    # the run's life (run.py), the loop, the optimizer and its schedule, the device
    "train": Target(["bnexp/train/run.py", "bnexp/train/loop.py", "bnexp/train/optim.py", "bnexp/train/device.py"],
                    TRAIN_TESTS, f"not ({SLOW_TRAIN_TESTS})"),
    # (sharpness.py, measured by tests/instrument/test_sharpness.py with whole training runs, is not mutated)
    "instrument": Target(["bnexp/instrument/probe.py", "bnexp/instrument/layers.py", "bnexp/instrument/hooks.py",
                          "bnexp/instrument/history.py", "bnexp/instrument/loss.py"],
                         ["tests/instrument/test_instrument*.py", "tests/instrument/test_mechanism_metrics.py"]),
    # the report's reading of runs (bnexp/report/records.py gathers these modules' names)
    "records": Target(["bnexp/report/run_records.py", "bnexp/report/selection.py", "bnexp/report/aggregation.py",
                       "bnexp/report/comparisons.py", "bnexp/report/trainable_lr.py", "bnexp/report/series.py",
                       "bnexp/report/study_config.py", "bnexp/report/provenance.py"],
                      REPORT_TESTS, "not real_hydra_multirun"),
    # the report's files: report.md's sections and tables, the CSV files, the paths it shows
    "report": Target(["bnexp/report/build.py", "bnexp/report/sections.py", "bnexp/report/markdown_tables.py",
                      "bnexp/report/csv_files.py", "bnexp/report/shown_paths.py"],
                     REPORT_TESTS, "not real_hydra_multirun"),
    "data": Target(["bnexp/data"], ["tests/data/test_*.py"]),
    # the largest trainable lr search, pure and as the sweep's largest_lr mode runs it
    "lr_search": Target(["bnexp/lr_search/largest_trainable.py", "bnexp/lr_search/lrs.py"],
                        ["tests/sweep/test_lr_search.py", "tests/sweep/test_sweep_largest_lr.py"]),
    # the resume: run ids, the grid, which runs are done, and what the ledger says of the others
    "sweep_resume": Target(
        ["bnexp/sweep/grid.py", "bnexp/sweep/ledger.py", "bnexp/sweep/run.py", "bnexp/runs/files.py"],
        ["tests/sweep/test_sweep.py", "tests/sweep/test_sweep_resume*.py", "tests/runs/test_run_status.py"],
        "deterministic_dirs or resume or killed_run or failing_run or dry_run or cli_overrides or run_status",
        only={"bnexp/sweep/grid.py": ["merge_overrides", "make_run_id", "build_jobs"],
              "bnexp/sweep/ledger.py": ["SweepLedger"],
              "bnexp/sweep/run.py": ["run_sweep.jobs_and_pending"],
              "bnexp/runs/files.py": ["run_status"]}),
}


def copy_tree(tree: Path, revision: str | None) -> None:
    """The working tree's tracked and untracked (not ignored) files, or a commit's files, copied to `tree`, and
    committed there as a git checkout of its own (the tests read the checkout's commit, as the runs' provenance)."""
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    if revision:
        archive = subprocess.run(["git", "archive", revision], cwd=REPO_ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    else:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, check=True,
                                capture_output=True).stdout.decode().split("\0")
        for name in filter(None, listed):
            source = REPO_ROOT / name
            if source.is_file():
                (tree / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, tree / name)
    git = ["git", "-C", str(tree), "-c", "user.name=mutation check", "-c", "user.email=mutation@localhost"]
    for arguments in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the tree under mutation"]):
        subprocess.run(git + arguments, check=True)


def source_files(tree: Path, target: Target) -> list[str]:
    files = []
    for source in target.sources:
        path = tree / source
        files += sorted(str(p.relative_to(tree)) for p in path.rglob("*.py")) if path.is_dir() else [source]
    return files


def test_command(tree: Path, target: Target) -> list[str]:
    tests = sorted({str(p.relative_to(tree)) for pattern in target.tests for p in tree.glob(pattern)})
    return PYTEST + tests + (["-k", target.deselect] if target.deselect else [])


def line_spans(path: Path, names: list[str]) -> list[tuple[int, int]]:
    """First and last line of each named function or class (dotted names reach into nested ones)."""
    spans = []
    for name in names:
        scope: list[ast.AST] = ast.parse(path.read_text()).body
        node = None
        for part in name.split("."):
            node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part),
                        None)
            if node is None:
                raise SystemExit(f"{path}: no function or class {name!r} (the target's `only` list is stale)")
            scope = list(ast.walk(node))[1:]
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        spans.append((first, node.end_lineno))
    return spans


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the type annotations are. Under `from __future__ import annotations` Python never evaluates them, so a
    mutant there (`int | None` -> `int * None`) is equivalent by construction: such mutants are not run."""
    spans = []
    for node in ast.walk(ast.parse(path.read_text())):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations.append(node.returns)
        elif isinstance(node, ast.arg):
            annotations.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in annotations if a is not None]
    return spans


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cosmic_ray(*arguments: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", *arguments], cwd=cwd, check=True)


def write_config(path: Path, sources: list[str], command: list[str], timeout: float) -> None:
    import shlex

    lines = ["[cosmic-ray]", f"module-path = {json.dumps(sources)}", f"timeout = {timeout:.0f}",
             "excluded-modules = []", f"test-command = {json.dumps(shlex.join(command))}", "",
             "[cosmic-ray.distributor]", 'name = "local"', ""]
    path.write_text("\n".join(lines))


def baseline_seconds(tree: Path, command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the tests fail without any mutant, so no mutant can be judged:\n{' '.join(command)}\n"
                         f"{result.stdout[-3000:]}")
    return time.perf_counter() - started


def skip_all_but(session: Path, keep: set[str], reason: str) -> None:
    """Mark every mutant outside `keep` skipped, and make those in `keep` that were skipped pending again (a
    sample grown with --extend); results of mutants already run stay."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session)) as db:
        results = dict(db.results)
        skipped = [item.job_id for item in db.work_items if item.job_id not in keep and item.job_id not in results]
        db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=reason))
    grown = [(job,) for job in keep if job in results and results[job].worker_outcome == WorkerOutcome.SKIPPED]
    with sqlite3.connect(session) as db:
        db.executemany("DELETE FROM work_results WHERE job_id = ?", grown)


def choose_mutants(session: Path, tree: Path, target: Target, sample: int, seed: int) -> tuple[int, int]:
    """Skip the mutants in type annotations and outside the target's `only` spans, then all but a seeded sample of
    the rest that compile. Returns (mutants in scope, mutants kept)."""
    from cosmic_ray.work_db import use_db

    spans = {path: line_spans(tree / path, names) for path, names in target.only.items()}
    with use_db(str(session)) as db:
        items = list(db.work_items)
    annotations = {path: annotation_spans(tree / path)
                   for path in {str(item.mutations[0].module_path) for item in items}}
    in_scope = []
    for item in items:
        mutation = item.mutations[0]
        path = str(mutation.module_path)
        if any(start <= tuple(mutation.start_pos) < end for start, end in annotations[path]):
            continue
        path_spans = spans.get(path)
        if path_spans is None or any(first <= mutation.start_pos[0] <= last for first, last in path_spans):
            in_scope.append(item)
    # a stable order first: job ids are random, the sample must not be
    in_scope.sort(key=lambda item: (str(item.mutations[0].module_path), item.mutations[0].operator_name,
                                    item.mutations[0].occurrence))
    random.Random(seed).shuffle(in_scope)
    chosen = []
    for item in in_scope:  # the first `sample` mutants that are Python at all (e.g. `{**row}` -> `{>>row}` is not)
        if sample > 0 and len(chosen) == sample:
            break
        if compiles(tree, item.mutations[0]):
            chosen.append(item)
    skip_all_but(session, {item.job_id for item in chosen}, "not in the sample (or outside the target's scope)")
    return len(in_scope), len(chosen)


def compiles(tree: Path, mutation) -> bool:
    import cosmic_ray.plugins
    from cosmic_ray.mutating import mutate_code

    operator = cosmic_ray.plugins.get_operator(mutation.operator_name)(**(mutation.operator_args or {}))
    code = mutate_code((tree / mutation.module_path).read_text(), operator, mutation.occurrence)
    try:
        compile(code or "", str(mutation.module_path), "exec")
    except SyntaxError:
        return False
    return code is not None


def outcomes(session: Path) -> list[dict]:
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome

    with use_db(str(session)) as db:
        done = db.completed_work_items
    rows = []
    for item, result in done:
        if result.worker_outcome == WorkerOutcome.SKIPPED:
            continue
        mutation = item.mutations[0]
        rows.append({"job_id": item.job_id, "file": str(mutation.module_path), "line": mutation.start_pos[0],
                     "operator": mutation.operator_name, "occurrence": mutation.occurrence,
                     "outcome": str(result.test_outcome.value if result.test_outcome else result.worker_outcome.value),
                     "timeout": result.output == "timeout", "diff": result.diff or ""})
    return sorted(rows, key=lambda row: (row["file"], row["line"], row["operator"], row["occurrence"]))


def rate_line(name: str, rows: list[dict], in_scope: int | str) -> str:
    killed = sum(row["outcome"] == "killed" for row in rows)
    timeouts = sum(row["outcome"] == "killed" and row["timeout"] for row in rows)
    survived = sum(row["outcome"] == "survived" for row in rows)
    other = len(rows) - killed - survived
    judged = killed + survived
    rate = f"{100 * survived / judged:.0f}%" if judged else "n/a"
    return f"| {name} | {in_scope} | {len(rows)} | {killed} ({timeouts}) | {survived} | {other} | {rate} |"


def write_results(work: Path, states: dict[str, dict], suffix: str) -> None:
    lines = ["| target | mutants in scope | run | killed (by timeout) | survived | other | surviving rate |",
             "|---|---|---|---|---|---|---|"]
    survivors = []
    for name, state in states.items():
        rows = outcomes(work / f"{name}{suffix}.sqlite")
        lines.append(rate_line(name, rows, state["in_scope"]))
        survivors += [(name, row) for row in rows if row["outcome"] == "survived"]
    lines += ["", f"## Survivors ({len(survivors)})", ""]
    for name, row in survivors:
        lines += [f"### {name}: {row['file']}:{row['line']} {row['operator']} #{row['occurrence']}", "",
                  "```diff", row["diff"].strip(), "```", ""]
    (work / f"results{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines[:len(states) + 2]))


def run_targets(names: list[str], work: Path, sample: int, seed: int, count_only: bool,
                revision: str | None, extend: bool) -> None:
    tree = work / "tree"
    copy_tree(tree, revision)
    states = json.loads((work / "state.json").read_text()) if (work / "state.json").exists() else {}
    for name in names:
        target = TARGETS[name]
        command = test_command(tree, target)
        sources = source_files(tree, target)
        if count_only:
            config, session = work / f"{name}.count.toml", work / f"{name}.count.sqlite"
            write_config(config, sources, command, timeout=60)
            cosmic_ray("init", str(config), str(session), cwd=tree)
            in_scope, kept = choose_mutants(session, tree, target, sample, seed)
            print(f"{name}: {kept} of {in_scope} mutants would run: {' '.join(command)}", flush=True)
            continue
        seconds = baseline_seconds(tree, command)
        config, session = work / f"{name}.toml", work / f"{name}.sqlite"
        write_config(config, sources, command, timeout=3 * seconds + 30)
        if extend:  # the same mutants in the same seeded order: the sample grows, the results so far stay
            state = states[name]
            if (state["seed"], state["revision"], state["command"]) != (seed, revision, command) or any(
                    file_digest(tree / path) != digest for path, digest in state["digests"].items()):
                raise SystemExit(f"{name}: --extend needs the session's seed, revision, sources and tests")
        else:
            session.unlink(missing_ok=True)
            cosmic_ray("init", str(config), str(session), cwd=tree)
        in_scope, kept = choose_mutants(session, tree, target, sample, seed)
        print(f"{name}: {kept} of {in_scope} mutants, tests take {seconds:.0f} s unmutated: {' '.join(command)}",
              flush=True)
        states[name] = {"in_scope": in_scope, "run": kept, "sample": sample, "seed": seed, "revision": revision,
                        "command": command,
                        "digests": {path: file_digest(tree / path) for path in sources}}
        (work / "state.json").write_text(json.dumps(states, indent=1))
        cosmic_ray("exec", str(config), str(session), cwd=tree)
        write_results(work, {n: state for n, state in states.items() if (work / f"{n}.sqlite").exists()}, "")


def rerun_survivors(names: list[str], work: Path, revision: str | None) -> None:
    tree = work / "tree"
    copy_tree(tree, revision)
    states = json.loads((work / "state.json").read_text())
    names = [name for name in names if name in states]
    for name in names:
        changed = [path for path, digest in states[name]["digests"].items() if file_digest(tree / path) != digest]
        if changed:
            raise SystemExit(f"{name}: {changed} changed since its session was made; its mutants no longer "
                             "match. Run the target afresh instead.")
        target = TARGETS[name]
        command = test_command(tree, target)
        seconds = baseline_seconds(tree, command)
        config, before, after = work / f"{name}.toml", work / f"{name}.sqlite", work / f"{name}.after.sqlite"
        write_config(config, source_files(tree, target), command, timeout=3 * seconds + 30)
        shutil.copy(before, after)
        survivors = [row["job_id"] for row in outcomes(before) if row["outcome"] == "survived"]
        with sqlite3.connect(after) as db:  # forget their results: exec runs them again
            db.executemany("DELETE FROM work_results WHERE job_id = ?", [(job,) for job in survivors])
        print(f"{name}: rerunning {len(survivors)} survivors: {' '.join(command)}", flush=True)
        cosmic_ray("exec", str(config), str(after), cwd=tree)
    write_results(work, states, "")
    write_results(work, {name: states[name] for name in names}, ".after")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--sample", type=int, default=15, help="mutants per target (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=REPO_ROOT / ".mutation")
    parser.add_argument("--rerun-survivors", action="store_true")
    parser.add_argument("--count", action="store_true", help="only count each target's mutants; run nothing")
    parser.add_argument("--revision", help="mutate and test this commit's files (default: the working tree)")
    parser.add_argument("--extend", action="store_true",
                        help="grow the existing sessions' samples to --sample (same --seed and --revision)")
    args = parser.parse_args(argv)
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        print("cosmic-ray is not installed: pip install cosmic-ray", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    if args.rerun_survivors:
        rerun_survivors(args.targets, args.work.resolve(), args.revision)
    else:
        run_targets(args.targets, args.work.resolve(), args.sample, args.seed, args.count, args.revision,
                    args.extend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
