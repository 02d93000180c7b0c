"""bnexp.dashboard: the spec and its JSON, the wandb-workspaces objects built offline, every key checked against
what a real run logs to W&B, and the bounded failure without network."""
import json
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("wandb")
pytest.importorskip("wandb_workspaces")
# wandb-workspaces 0.4.13 still declares pydantic-v1 validators; its import warns about that, not about bnexp.
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic V1 style:DeprecationWarning")

from bnexp.dashboard.check import flatten_keys, missing_keys  # noqa: E402
from bnexp.dashboard.cli import describe, main  # noqa: E402
from bnexp.dashboard.panels import LAYER_GRAD_NORM_REGEX, build_spec  # noqa: E402
from bnexp.dashboard.workspace import build_report, build_workspace  # noqa: E402
from bnexp.dashboard.preview import draw_preview  # noqa: E402
from tests.helpers import REPO, TINY_RUN, make_run_dir, repo_env  # noqa: E402
from tests.support.wandb_offline import read_finished_run  # noqa: E402

SECTION_ORDER = ["About these runs", "Accuracy", "Loss", "Sharpness", "Gradient norms", "Update ratios",
                 "BatchNorm statistics", "Activation RMS", "Summary per run"]
SHARPNESS_KEYS = ["sharpness/top_eig", "sharpness/threshold"]


# ---------------------------------------------------------------------------------------------------------------
# A real run, logged to W&B offline: what the dashboard's keys are checked against
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """Train a few steps with logger=wandb in offline mode; return what reached W&B and the local run dir."""
    from bnexp.train.run import train
    from tests.helpers import compose_config

    root = tmp_path_factory.mktemp("dashboard_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(root / "wandb_dir"))
        patch.delenv("WANDB_API_KEY", raising=False)
        cfg = compose_config(["+variant=grouped_bn", "variant.stat_groups=2", *TINY_RUN, "instrument.every=2",
                              "logger=wandb"])
        train(cfg, str(root / "run"))
    (offline_dir,) = sorted((root / "wandb_dir" / "wandb").glob("offline-run-*"))
    run = read_finished_run(offline_dir, timeout_s=30.0)
    assert run["exit_code"] == 0
    return {
        "history": {key for row in run["history"] for key in row},
        "summary": flatten_keys(run["summary"]),
        "config": run["config"],
        "run": run["run"],
        "run_dir": root / "run",
    }


def full_spec(**kwargs):
    return build_spec(split_by_lr=True, report_filter={"tag": "lr_stability"}, **kwargs)


def check(spec, logged, history=None, summary=None, config=None, run=None):
    return missing_keys(spec, logged["history"] if history is None else history,
                        logged["summary"] if summary is None else summary,
                        logged["config"] if config is None else config,
                        logged["run"] if run is None else run)


@pytest.mark.slow
def test_every_dashboard_key_exists_in_what_a_real_run_logs(logged_run):
    spec = full_spec()
    assert check(spec, logged_run) == []
    # The check covered the panels that matter, not an empty spec.
    keys = {key.name for panel in spec.panels() for key in [panel.x, *panel.y, *panel.columns] if key}
    assert {"test/acc", "train/loss", "grad_norm/global", "update_ratio/global", "best_test_acc", "optim.lr",
            "steps_to_acc.0.7", "max_grad_norm_layer", "loss_spikes", "status"} <= keys
    assert sum(panel.regex is not None for panel in spec.panels()) == 7
    # The grouping key: W&B's run group is the variant the sink read from the config.
    assert logged_run["run"]["group"] == logged_run["config"]["variant"]["name"] == "grouped_bn"


def test_regexes_select_one_family_of_logged_keys(logged_run):
    logged = logged_run["history"]
    for panel in full_spec().panels():
        if not panel.regex:
            continue
        matched = {key for key in logged if re.search(panel.regex, key)}
        prefix = panel.regex.lstrip("^").split("/")[0] + "/"
        assert matched and all(key.startswith(prefix) for key in matched), panel.regex
        assert not any(key.endswith("/global") for key in matched), panel.regex  # the global norm has its own panel
    layer_keys = {key for key in logged if re.search(LAYER_GRAD_NORM_REGEX, key)}
    assert layer_keys == {key for key in logged if key.startswith("grad_norm/") and key != "grad_norm/global"}


@pytest.mark.parametrize("source, old, new", [
    ("history", "test/acc", "test/accuracy"),
    ("history", "train/loss", "train/loss_value"),
    ("history", "grad_norm/global", "grad_norm/total"),
    ("history", "grad_norm/", "gradnorm/"),          # a whole family: the per-layer regex panel goes empty
    ("history", "act/", "activation/"),
    ("history", "running_mean_gap", "running_mean_diff"),
    ("summary", "max_grad_norm_layer", "max_grad_layer"),
    ("summary", "steps_to_acc", "steps_to_accuracy"),
])
def test_a_renamed_logged_key_fails_the_check(logged_run, source, old, new):
    renamed = {key.replace(old, new) for key in logged_run[source]}
    problems = check(full_spec(), logged_run, **{source: renamed})
    assert problems and all(old.strip("/") in problem for problem in problems), problems


def test_a_renamed_config_key_or_another_group_fails_the_check(logged_run):
    config = json.loads(json.dumps(logged_run["config"]))
    config["optim"]["learning_rate"] = config["optim"].pop("lr")
    assert any("optim.lr" in problem for problem in check(full_spec(), logged_run, config=config))
    run = {**logged_run["run"], "group": "grouped_bn_g2"}
    assert any("variant.name" in problem for problem in check(full_spec(), logged_run, run=run))


def test_sharpness_keys_are_expected_only_from_runs_that_measure_sharpness(logged_run):
    def with_sharpness_every(every):
        config = json.loads(json.dumps(logged_run["config"]))
        config["instrument"]["sharpness_every"] = every
        return config

    spec = full_spec()
    assert check(spec, logged_run, config=with_sharpness_every(0)) == []
    problems = check(spec, logged_run, config=with_sharpness_every(5))
    assert len(problems) == 2 and all(any(key in p for p in problems) for key in SHARPNESS_KEYS), problems
    history = logged_run["history"] | set(SHARPNESS_KEYS)
    assert check(spec, logged_run, history=history, config=with_sharpness_every(5)) == []


# ---------------------------------------------------------------------------------------------------------------
# The spec, its JSON and the W&B objects
# ---------------------------------------------------------------------------------------------------------------

def _refuse_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network use in a dry run: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_dry_run_writes_the_spec_without_network(tmp_path, monkeypatch, capsys):
    _refuse_network(monkeypatch)
    out = tmp_path / "dashboard.json"
    assert main(["--project", "bnexp-x", "--dry-run", "--out", str(out), "--lr", "0.4", "--report",
                 "--tag", "lr_stability"]) == 0
    printed = capsys.readouterr().out
    assert "dry run: nothing sent to W&B" in printed and "Gradient norms" in printed

    spec = json.loads(out.read_text())
    assert spec["format"] == "bnexp-dashboard/1" and spec["project"] == "bnexp-x" and spec["entity"] is None
    assert [section["name"] for section in spec["sections"]] == SECTION_ORDER
    sections = {section["name"]: section for section in spec["sections"]}

    def first(name):
        return sections[name]["panels"][0]

    assert first("About these runs")["kind"] == "markdown" and "shared_bn" in first("About these runs")["markdown"]
    assert first("Accuracy")["x"]["name"] == "epoch" and first("Accuracy")["y"][0]["name"] == "test/acc"
    assert first("Loss")["y"][0]["name"] == "train/loss" and first("Loss")["log_y"] and \
        first("Loss")["x"]["name"] == "step"
    grad = sections["Gradient norms"]["panels"]
    assert grad[0]["y"][0]["name"] == "grad_norm/global" and grad[0]["log_y"]
    assert grad[1]["regex"] == r"^grad_norm/(?!global$).+$" and grad[1]["log_y"]
    assert any(p["regex"] and "running_mean_gap" in p["regex"] for p in sections["BatchNorm statistics"]["panels"])
    assert first("Activation RMS")["regex"] == r"^act/.+/rms$"
    summary = sections["Summary per run"]["panels"]
    assert summary[0]["kind"] == "scatter" and summary[0]["x"] == {"source": "config", "name": "optim.lr"}
    assert summary[0]["y"] == [{"source": "summary", "name": "best_test_acc"}]
    assert any(p["kind"] == "markdown" and "Max stable lr" in p["markdown"] for p in summary)
    table = next(p for p in summary if p["kind"] == "runs_table")
    assert [c["name"] for c in table["columns"]][:4] == ["status", "optim.lr", "seed", "best_test_acc"]
    assert {"steps_to_acc.0.5", "steps_to_acc.0.7", "steps_to_acc.0.8", "loss_spikes", "max_grad_norm",
            "max_grad_norm_layer"} <= {c["name"] for c in table["columns"]}

    grouping = spec["grouping"]
    assert grouping["keys"] == [{"source": "run", "name": "group"}, {"source": "config", "name": "variant.stat_groups"}]
    assert grouping["mirrors"] == {"group": "variant.name"} and grouping["lr_filter"] == 0.4
    assert grouping["aggregate"] == "mean" and grouping["band"] == "minmax"
    assert spec["report"]["filter"] == {"tag": "lr_stability"}
    assert spec["report"]["sections"] == SECTION_ORDER[1:]
    assert "conf/sweep/lr_stability.yaml" in spec["report"]["text"] and "results/lr_stability" in spec["report"]["text"]


def test_workspace_object_holds_the_spec():
    spec = build_spec(entity="team", lr_filter=0.4)
    workspace = build_workspace(spec)
    assert (workspace.entity, workspace.project) == ("team", "bnexp")
    assert [section.name for section in workspace.sections] == SECTION_ORDER
    for section, wb_section in zip(spec.sections, workspace.sections):
        assert wb_section.panel_settings.x_axis == section.x_axis
        drawn = [p for p in section.panels if p.kind != "runs_table"]
        assert len(wb_section.panels) == len(drawn)
        for panel, wb_panel in zip(drawn, wb_section.panels):
            if panel.kind == "line":
                assert wb_panel.y == [key.name for key in panel.y] and wb_panel.metric_regex == panel.regex
                assert wb_panel.x == panel.x.name and bool(wb_panel.log_y) == panel.log_y
                assert wb_panel.title == panel.title
            elif panel.kind == "scatter":
                assert wb_panel.x.name == "optim.lr" and wb_panel.y.name == panel.y[0].name
            else:
                assert wb_panel.markdown == panel.markdown
    runset = workspace.runset_settings
    assert [(type(g).__name__, g.name) for g in runset.groupby] == [("Metric", "Group"),
                                                                     ("Config", "variant.stat_groups")]
    assert "optim.lr" in runset.filters and "0.4" in runset.filters
    assert {"summary:status", "summary:best_test_acc", "summary:max_grad_norm_layer", "summary:steps_to_acc.0.7",
            "summary:loss_spikes", "config:optim.value.lr"} <= set(runset.pinned_columns)
    # The first step of save(): the view spec W&B stores, serialised offline.
    view = json.loads(workspace._to_model().spec.model_dump_json(by_alias=True, exclude_none=True))
    run_set = view["section"]["runSets"][0]
    assert run_set["grouping"] == [{"section": "run", "name": "group"},
                                   {"section": "config", "name": "variant.value.stat_groups"}]
    assert view["section"]["settings"]["xAxis"] == "step"
    sections = view["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections] == SECTION_ORDER and sections[0]["pinned"]
    regexes = [p["config"].get("metricRegex") for s in sections for p in s["panels"] if "config" in p]
    assert r"^act/.+/rms$" in regexes


def test_split_by_lr_sub_groups_the_runs():
    workspace = build_workspace(build_spec(split_by_lr=True))
    assert [g.name for g in workspace.runset_settings.groupby] == ["Group", "variant.stat_groups", "optim.lr"]
    assert workspace.runset_settings.filters == ""


@pytest.mark.parametrize("kind, value, fragment", [("tag", "lr_stability", "lr_stability"),
                                                    ("sweep", "abc123", "abc123"), ("group", "no_bn", "no_bn")])
def test_report_object_filters_the_study(kind, value, fragment):
    spec = build_spec(report_filter={kind: value})
    report = build_report(spec)
    headings = [block.text for block in report.blocks if type(block).__name__ == "H2"]
    assert headings == SECTION_ORDER[1:]
    grids = [block for block in report.blocks if type(block).__name__ == "PanelGrid"]
    assert len(grids) == len(headings)
    assert all(fragment in grid.runsets[0].filters for grid in grids)
    assert all(grid.runsets[0].groupby == ["group", "config.variant.stat_groups"] for grid in grids)
    assert any(len(grid.runsets[0].pinned_columns) > 5 for grid in grids)  # the runs table, in the summary grid
    assert report.blocks[0].text == spec.report.text and "bnexp.report" in spec.report.text
    # The report serialises offline too (with no entity: naming one makes W&B look the project up).
    model = json.loads(report._to_model().model_dump_json(by_alias=True, exclude_none=True))
    assert sum(block["type"] == "panel-grid" for block in model["spec"]["blocks"]) == len(headings)


def test_report_grid_and_stable_lr_table_from_local_runs(logged_run):
    from bnexp.report.records import discover_runs

    runs = discover_runs([logged_run["run_dir"]])
    spec = build_spec(runs=runs, report_filter={"group": "grouped_bn"})
    assert "grouped_bn_g2" in spec.report.text and "1 local run dirs" in spec.report.text
    assert "synthetic" in spec.report.text
    stable = next(p for p in spec.panels() if p.kind == "markdown" and "Max stable lr" in p.markdown).markdown
    assert "| grouped_bn_g2 |" in stable


def test_report_grid_from_a_sweep_config_that_takes_its_seeds_and_data_from_a_recipe():
    from omegaconf import OmegaConf

    from bnexp.config.compose import CONF_DIR

    recipe = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "sweep" / "recipe" / "cpu_study.yaml"))
    text = build_spec(report_filter={"tag": "cpu_study"}).report.text
    assert "`conf/sweep/cpu_study.yaml`: 4 variants (correct_bn, grouped_bn_g2, shared_bn, no_bn)" in text
    assert f"x {len(recipe['seeds'])} seeds" in text
    assert all(f"`{override}`" in text for override in recipe["train_overrides"] if override.startswith("data"))


def test_preview_draws_local_runs(logged_run, tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert main(["--runs", str(logged_run["run_dir"]), "--preview", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert main(["--runs", str(logged_run["run_dir"]), "--preview", str(tmp_path / "x.png"), "--lr", "9.9"]) == 2
    assert "no runs to draw" in capsys.readouterr().err


def _sharpness_run(root, variant, lr, seed, sharpness_every):
    """A run dir as make_run_dir writes it; with sharpness_every > 0, the sharpness probe's two keys are added to
    every sharpness_every-th step record (top eigenvalue (1 + seed) * (step + 1), threshold 2/lr)."""
    run_dir = make_run_dir(root / f"{variant}_lr{lr}_seed{seed}", variant, lr, seed,
                           extra_config={"instrument": {"sharpness_every": sharpness_every}})
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        if sharpness_every and record["kind"] == "step" and record["step"] % sharpness_every == 0:
            record.update({"sharpness/top_eig": (1 + seed) * (record["step"] + 1), "sharpness/threshold": 2 / lr})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return run_dir


def _panel_axes(figure, panel):
    (axes,) = [ax for ax in figure.axes if ax.get_title(loc="left").startswith(panel.title[:40])]
    return axes


def test_sharpness_section_lists_its_keys_and_the_preview_draws_it(tmp_path):
    from bnexp.report.records import discover_runs

    for seed in (0, 1):
        _sharpness_run(tmp_path / "runs", "correct_bn", 0.1, seed, sharpness_every=2)
    _sharpness_run(tmp_path / "runs", "no_bn", 0.1, 0, sharpness_every=0)
    runs = discover_runs([tmp_path / "runs"])
    spec = build_spec(runs=runs)

    section = json.loads(spec.to_json())["sections"][SECTION_ORDER.index("Sharpness")]
    assert section["name"] == "Sharpness" and section["logged_when"] == "instrument.sharpness_every"
    (panel,) = section["panels"]
    assert panel["kind"] == "line" and panel["x"]["name"] == "step" and panel["log_y"]
    assert [key["name"] for key in panel["y"]] == SHARPNESS_KEYS

    figure = draw_preview(spec, runs)
    axes = _panel_axes(figure, spec.section("Sharpness").panels[0])
    # correct_bn: its two seeds' mean top eigenvalue (solid) and threshold (dashed); no_bn logged neither
    lines = {line.get_linestyle(): line for line in axes.get_lines()}
    assert sorted(lines) == ["-", "--"] and len(axes.get_lines()) == 2
    assert list(lines["-"].get_xdata()) == [0, 2, 4] and list(lines["-"].get_ydata()) == [1.5, 4.5, 7.5]
    assert list(lines["--"].get_xdata()) == [0, 2, 4] and list(lines["--"].get_ydata()) == pytest.approx([20] * 3)
    assert lines["-"].get_color() == lines["--"].get_color()  # both in the group's colour
    assert [text.get_text() for text in axes.get_legend().get_texts()] == SHARPNESS_KEYS
    assert axes.get_yscale() == "log"

    # Runs that do not measure sharpness: the panel says so, and the preview is still drawn.
    figure = draw_preview(spec, [run for run in runs if run.variant == "no_bn"])
    axes = _panel_axes(figure, spec.section("Sharpness").panels[0])
    assert not axes.get_lines() and any("instrument.sharpness_every" in t.get_text() for t in axes.texts)
    assert "Sharpness (runs with instrument.sharpness_every > 0)" in describe(spec)


@pytest.mark.parametrize("args, message", [
    (["--report"], "--report needs"),
    (["--tag", "x"], "add --report"),
    (["--preview", "x.png"], "--runs"),
    (["--lr", "0.1", "--split-lr"], "not allowed with"),
])
def test_bad_arguments_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--dry-run"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_missing_runs_dir_exits_2(tmp_path, capsys):
    assert main(["--dry-run", "--runs", str(tmp_path / "nope")]) == 2
    assert "no such path" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Imports and the network
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_only_the_dashboard_command_imports_wandb_workspaces():
    script = ("import sys\n"
              "import bnexp.train, bnexp.train.run, bnexp.sweep, bnexp.report, bnexp.train.wandb_sink, bnexp.dashboard\n"
              "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('wandb_workspaces', 'wandb'))}))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=repo_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wandb_workspaces" not in result.stdout  # wandb itself: bnexp.train.wandb_sink, imported here on purpose


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_dashboard(tmp_path, env_changes, *args, timeout=300):
    env = repo_env({"HOME": str(tmp_path), "WANDB_DIR": str(tmp_path / "wandb"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), **env_changes})
    for name in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        if name not in env_changes:
            env.pop(name, None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bnexp.dashboard", "--project", "bnexp-test", *args], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


def test_no_credentials_fails_at_once_pointing_to_dry_run(tmp_path):
    result, elapsed = _run_dashboard(tmp_path, {"WANDB_BASE_URL": f"http://127.0.0.1:{_closed_port()}"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no W&B credentials" in result.stderr and "--dry-run" in result.stderr
    assert "Traceback" not in result.stderr and elapsed < 120


def test_unreachable_host_fails_fast_pointing_to_dry_run(tmp_path):
    result, elapsed = _run_dashboard(tmp_path, {"WANDB_BASE_URL": f"http://127.0.0.1:{_closed_port()}",
                                                "WANDB_API_KEY": "a" * 40}, "--report", "--tag", "x")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot reach the W&B server" in result.stderr and "--dry-run" in result.stderr
    assert "Traceback" not in result.stderr and elapsed < 120


@pytest.mark.slow
def test_host_that_never_answers_is_given_up_after_the_timeout(tmp_path):
    """A server that accepts connections and never replies (a proxy or firewall that swallows traffic): wandb's
    own retries would take minutes; the command gives up after --timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []
    stop = threading.Event()

    def swallow():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=swallow, daemon=True)
    thread.start()
    try:
        result, elapsed = _run_dashboard(tmp_path, {"WANDB_BASE_URL": f"http://127.0.0.1:{listener.getsockname()[1]}",
                                                    "WANDB_API_KEY": "a" * 40}, "--timeout", "6")
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--dry-run" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert accepted  # it did get past the connection probe
    assert elapsed < 120


def test_credentials_for_the_configured_host_count(tmp_path, monkeypatch):
    from bnexp.train.wandb_sink import has_wandb_credentials

    for name in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    (tmp_path / "netrc").write_text("machine wandb.example.org\n  login user\n  password " + "k" * 40 + "\n")
    assert has_wandb_credentials("https://wandb.example.org")
    assert not has_wandb_credentials("https://other.example.org")
    # wandb reads $NETRC alone when it is set: a key in ~/.netrc would still leave it prompting
    (tmp_path / ".netrc").write_text("machine other.example.org\n  login user\n  password " + "k" * 40 + "\n")
    assert not has_wandb_credentials("https://other.example.org")
    monkeypatch.delenv("NETRC")
    assert has_wandb_credentials("https://other.example.org")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert has_wandb_credentials("https://other.example.org")
