"""Bad input as a new user gives it: each case is one clear error (or is accepted as meant), and
nothing reads or writes outside the dataset root and the output root (issue 19's cases)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from click.testing import CliRunner
from clitools import cli, one_error_line
from datatrees import make_mvtec, make_visa, save_image, save_mask, write_visa_csv
from PIL import Image

from raydiff.cli import main
from raydiff.config import load_config, parse_overrides
from raydiff.data.manifest import scan_dataset, scan_visa
from raydiff.errors import ConfigError, DatasetError, OutputError

REPO = Path(__file__).resolve().parents[1]




def small_config(tmp_path: Path, root: Path, **sections: dict) -> Path:
    data = {"dataset": {"layout": "mvtec", "root": str(root), "image_size": 16, "holdout_min": 1},
            "models": {"preset": "tiny"}, "output": {"root": str(tmp_path / "out")}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------------------------
# Security: nothing outside the dataset root / output root
# --------------------------------------------------------------------------------------------


def test_visa_row_that_climbs_out_of_its_object_folder_is_refused(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    save_image(tmp_path / "elsewhere" / "x.png", (24, 16))
    rows = [["candle", "train", "normal", "candle/../../elsewhere/x.png", ""]]
    write_visa_csv(root, rows)
    with pytest.raises(DatasetError, match="not inside the object folder"):
        scan_visa(root)


def test_visa_mask_outside_the_object_folder_is_refused(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    save_mask(tmp_path / "m.png", (24, 16))
    rows = [["candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""],
            ["candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", "candle/../../m.png"]]
    write_visa_csv(root, rows)
    with pytest.raises(DatasetError, match="mask .* not inside"):
        scan_visa(root)


def test_visa_row_naming_a_system_file_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import raydiff.data.images as images

    root = make_visa(tmp_path / "visa")
    opened: list[str] = []
    monkeypatch.setattr(images, "open_image", lambda p: opened.append(str(p)))
    for bad in ("../../etc/passwd", "/etc/passwd"):
        write_visa_csv(root, [["candle", "train", "normal", bad, ""]])
        with pytest.raises(DatasetError, match="not inside the object folder"):
            scan_visa(root)
    assert opened == []


@pytest.mark.parametrize("override", [["--categories", "../base/brick"], ["--set", "dataset.name=../../x"],
                                      ["--set", "dataset.categories=[.hidden]"]])
def test_category_and_dataset_names_must_be_plain(tmp_path: Path, override: list[str]) -> None:
    root = make_mvtec(tmp_path / "data", categories=("brick",))
    code, out = cli("validate", "--config", str(small_config(tmp_path, root)), *override)
    assert code == 2 and "not a plain name" in one_error_line(out)
    assert not (tmp_path / "out").exists()


def test_single_category_commands_check_the_name(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data", categories=("brick",))
    code, out = cli("train", "--config", str(small_config(tmp_path, root)), "--category", "../../brick")
    assert code == 2 and "not a plain name" in one_error_line(out)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# Silent data loss / wrong data
# --------------------------------------------------------------------------------------------


def validate_dir(root: Path, *extra: str) -> tuple[int, str]:
    return cli("validate", str(root), *extra)


def test_images_in_a_sub_folder_are_not_dropped_silently(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "d", n_train=6)
    for i in range(5):
        save_image(root / "bottle" / "train" / "good" / "more" / f"{i}.png")
    code, out = validate_dir(root)
    line = one_error_line(out)
    assert code == 2 and "more" in line and "5 image(s)" in line and "skipped" in line


def test_a_stray_folder_beside_the_class_folders_is_an_error(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "d", n_train=6)
    save_image(root / "bottle" / "train" / "extra" / "0.png")
    code, out = validate_dir(root)
    assert code == 2 and "extra" in one_error_line(out)


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_dangling_symlinks_are_an_error(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "d", n_train=6)
    (root / "bottle" / "train" / "good" / "009.png").symlink_to(tmp_path / "gone.png")
    code, out = validate_dir(root)
    assert code == 2 and "broken symbolic link" in one_error_line(out) and "009.png" in out


def test_a_category_listed_twice_is_an_error(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data", categories=("brick",))
    code, out = cli("validate", "--config", str(small_config(tmp_path, root)), "--categories", "brick,brick")
    assert code == 2 and "twice" in one_error_line(out)


def test_a_duplicated_visa_row_is_an_error(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    row = ["candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""]
    write_visa_csv(root, [row, ["candle", "train", "normal", "candle/Data/Images/Normal/0001.JPG", ""], row])
    with pytest.raises(DatasetError, match=r"listed twice \(lines 2 and 4\)"):
        scan_visa(root)


def test_an_image_in_both_train_and_test_is_leakage(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    rel = "candle/Data/Images/Normal/0000.JPG"
    write_visa_csv(root, [["candle", "train", "normal", rel, ""], ["candle", "test", "normal", rel, ""]])
    with pytest.raises(DatasetError, match="both train .* and test"):
        scan_visa(root)


def test_the_validator_also_refuses_a_manifest_listing_an_image_twice(tmp_path: Path) -> None:
    from raydiff.data.validate import validate_dataset

    root = make_mvtec(tmp_path / "d")
    manifest = scan_dataset("mvtec", root)
    leaked = manifest.filter(pl.col("split") == "test").head(1).with_columns(pl.lit("train").alias("split"))
    with pytest.raises(DatasetError, match="both the train and the test split"):
        validate_dataset(pl.concat([manifest, leaked]), root, "mvtec")


def test_jpeg_masks_are_refused(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "d", n_train=6, defects={"crack": 1})
    png = root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    Image.open(png).save(png.with_suffix(".jpg"), quality=75)
    png.unlink()
    code, out = validate_dir(root)
    assert code == 2 and "JPEG mask" in one_error_line(out) and "000_mask.jpg" in out


# --------------------------------------------------------------------------------------------
# Config: numbers as the user means them, no silent duplicates, no NaN
# --------------------------------------------------------------------------------------------


def test_exponent_floats_without_a_dot_are_floats(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  lr: 1e-3\n  weight_decay: 5E-2\n")
    cfg = load_config(path, parse_overrides(["models.ema_decay=9.99e-1", "features.domain_adaptation_lr=3e-4"]))
    spec = cfg.model_spec("pixel")
    assert spec.lr == 1e-3 and spec.weight_decay == 0.05
    assert spec.ema_decay == 0.999 and cfg.features.domain_adaptation_lr == 3e-4
    assert parse_overrides(["a=1", "b=x1e3", "c=1e3"]) == {"a": 1, "b": "x1e3", "c": 1000.0}


def test_the_cli_docstring_example_works(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data", n_train=6)
    code, out = cli("config", "--config", str(small_config(tmp_path, root)), "--set", "models.lr=3e-4")
    assert code == 0, out
    assert any(ln.split()[:2] == ["models.pixel.lr", "0.0003"] and "--set models.lr" in ln for ln in out.splitlines())


def test_duplicate_yaml_keys_name_the_key_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  lr: 0.1\n  batch_size: 4\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"key 'lr' appears twice .*lines 2 and 4"):
        load_config(path)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"models:\n  grad_clip: {value}\n")
    with pytest.raises(ConfigError, match="finite number"):
        load_config(path)


def test_empty_variant_list_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'variants.enabled' is empty"):
        load_config(None, {"variants.enabled": []})


# --------------------------------------------------------------------------------------------
# validate says what the pipeline would refuse later
# --------------------------------------------------------------------------------------------


def test_validate_refuses_float_tiffs(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "d", n_train=6)
    victim = root / "bottle" / "train" / "good" / "000.png"
    Image.fromarray(np.random.default_rng(0).random((16, 16)).astype(np.float32), mode="F").save(victim.with_suffix(".tif"))
    victim.unlink()
    code, out = validate_dir(root)
    assert code == 2 and "floating-point" in one_error_line(out) and "000.tif" in out


def test_validate_refuses_an_image_size_the_preset_cannot_halve(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data", n_train=6)
    code, out = cli("validate", "--config", str(small_config(tmp_path, root)), "--set", "dataset.image_size=50")
    assert code == 2 and "not divisible" in one_error_line(out)


def test_validate_refuses_a_single_training_image(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data", n_train=1)
    code, out = cli("validate", "--config", str(small_config(tmp_path, root)))
    line = one_error_line(out)
    assert code == 2 and "1 normal training image" in line and "held-out" in line


def test_validate_follows_dataset_channels(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data", n_train=6)
    save_image(root / "bottle" / "train" / "good" / "009.png", mode="L")
    cfg = small_config(tmp_path, root)
    code, out = cli("validate", "--config", str(cfg))
    assert code == 2 and "dataset.channels" in one_error_line(out)  # the fix it recommends ...
    code, out = cli("validate", "--config", str(cfg), "--set", "dataset.channels=rgb")
    assert code == 0, out  # ... works


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_inspect_and_metrics_on_an_output_root_name_the_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "abc123").mkdir(parents=True)
    (out / "abc123" / "config.yaml").write_text("seed: 0\n")
    (out / "abc123" / "versions.json").write_text("{}")
    code, text = cli("inspect", str(out))
    line = one_error_line(text)
    assert code == 2 and "output root, not a run folder" in line and "abc123" in line
    code, text = cli("inspect", str(out / "abc123"))
    assert code == 2 and "no complete scores" in one_error_line(text)
    code, text = cli("report", str(tmp_path))
    assert code == 2 and "not a raydiff run folder" in one_error_line(text)


@pytest.mark.parametrize("args", [["--fpr", "1.5"], ["--fpr", "0"], ["--top", "-3"], ["--coverage-below", "5"]])
def test_inspect_options_out_of_range_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    code, out = cli("inspect", str(tmp_path), *args)
    assert code == 2 and "Invalid value" in out and "Traceback" not in out


@pytest.mark.parametrize("bad", ["models.lr", "models.lr=[1,", "seed.x=1", "models..lr=1"])
def test_malformed_set_values_are_one_line(bad: str) -> None:
    code, out = cli("validate", "--set", bad)
    assert code == 2 and "--set" in one_error_line(out)


def test_device_choice_is_checked() -> None:
    code, out = cli("fit", "--device", "tpu")
    assert code == 2 and "tpu" in out and "Traceback" not in out
    for sub in ("engine", "train", "noise"):  # the benchmarks' own parsers
        result = CliRunner().invoke(main, ["bench", sub, "--device", "tpu"])
        assert result.exit_code == 2 and "Traceback" not in result.output, sub
        assert "invalid choice: 'tpu'" in result.output, sub


def test_validate_visa_folder_with_visa_config_reads_it_as_visa(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    code, out = cli("validate", str(root), "--config", str(REPO / "configs" / "visa.yaml"))
    assert code == 0, out
    assert "visa layout" in out and "candle" in out
    code, out = cli("validate", str(root))  # no config: the layout is detected from the folder
    assert code == 0 and "visa layout" in out, out


def test_errors_from_set_or_the_environment_name_them(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, tmp_path)
    code, out = cli("validate", "--config", str(cfg), "--set", "models.lr=fast")
    line = one_error_line(out)
    assert code == 2 and line.startswith("error: --set models.lr") and str(cfg) not in line.split(":")[1]
    path = tmp_path / "env.yaml"
    path.write_text("output:\n  root: ${RAYDIFF_TEST_OUT}\n")
    code, out = cli("validate", "--config", str(path), env={"RAYDIFF_TEST_OUT": "s3://bucket/x"})
    line = one_error_line(out)
    assert code == 2 and "environment variable RAYDIFF_TEST_OUT" in line and "URI" in line


def test_tilde_in_dataset_root_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_mvtec(tmp_path / "home" / "data", n_train=6)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = small_config(tmp_path, tmp_path / "nowhere")
    code, out = cli("validate", "--config", str(cfg), "--dataset-root", "~/data")
    assert code == 0, out


def test_warnings_are_one_line_not_source_lines(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "d", n_train=6, defects={"crack": 1})
    save_mask(root / "bottle" / "ground_truth" / "crack" / "000_mask.png", value=3)  # a label map: warned
    code, out = validate_dir(root)
    assert code == 0, out
    warned = [ln for ln in out.splitlines() if "not binary" in ln]
    assert warned and all(ln.startswith("warning: ") for ln in warned)
    assert "warnings.warn" not in out and "UserWarning" not in out


def test_errors_mention_debug_which_works_after_the_subcommand(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  learning_rate: 1\n")
    code, out = cli("validate", "--config", str(path))
    assert code == 2 and "--debug" in one_error_line(out)
    result = CliRunner().invoke(main, ["validate", "--config", str(path), "--debug"])
    assert isinstance(result.exception, ConfigError)  # raised: the traceback is shown


# --------------------------------------------------------------------------------------------
# Usability
# --------------------------------------------------------------------------------------------


def test_one_output_option_everywhere() -> None:
    for name in ("report", "inspect", "demo", "validate", "sweep", "metrics"):
        opts = {o for p in main.commands[name].params for o in getattr(p, "opts", [])}
        assert "--output" in opts, name
        assert not opts & {"--out", "--save"}, name


def test_single_category_commands_have_no_categories_option() -> None:
    for name in ("train", "fit", "score"):
        code, out = cli(name, "--categories", "a,b")
        assert code == 2 and "No such option '--categories'" in out, name


def test_config_command_says_where_each_value_came_from(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset:\n  root: ${RAYDIFF_TEST_ROOT}\nmodels:\n  train_steps: 7\n")
    code, out = cli("config", "--config", str(cfg), "--seed", "5", "--set", "models.lr=2e-4",
                    env={"RAYDIFF_TEST_ROOT": str(root)})
    assert code == 0, out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    # Shared model settings are shown per model, with the shared key's origin.
    assert f"file {cfg}" in rows["models.pixel.train_steps"] and f"file {cfg}" in rows["models.latent.train_steps"]
    assert "--seed" in rows["seed"] and "--set models.lr" in rows["models.pixel-gmm.lr"]
    assert "environment variable RAYDIFF_TEST_ROOT" in rows["dataset.root"]
    assert rows["models.pixel.batch_size"].rstrip().endswith("default")
    code, out = cli("config", "--config", str(cfg), "--format", "yaml", env={"RAYDIFF_TEST_ROOT": str(root)})
    assert yaml.safe_load(out)["models"]["pixel"]["train_steps"] == 7


def test_default_config_data_follows_the_output_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raydiff.config import DEFAULT_CONFIG

    monkeypatch.delenv("RAYDIFF_TEXTURES", raising=False)
    cfg = load_config(DEFAULT_CONFIG, {"output.root": str(tmp_path / "X")})
    assert Path(cfg.dataset.root) == tmp_path / "X" / "data" / "textures"
    monkeypatch.setenv("RAYDIFF_TEXTURES", str(tmp_path / "elsewhere"))
    assert Path(load_config(DEFAULT_CONFIG).dataset.root) == tmp_path / "elsewhere"


def test_shipped_configs_resolve_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/visa.yaml", {"dataset.root": str(tmp_path)})
    assert cfg.dataset.layout == "visa"
    with pytest.raises(ConfigError, match="shipped configs .* mvtec.yaml"):
        load_config("configs/nope.yaml")


def test_metrics_fail_naming_incomplete_pairs_unless_allowed(tmp_path: Path) -> None:
    from raydiff.config import config_from_dict
    from raydiff.paths import partition_dir, run_dir
    from raydiff.runs import IMAGE_SCHEMA, PIXEL_SCHEMA, PartitionWriter, image_table, pixel_table, write_run_metadata
    from raydiff.workflow import evaluate

    cfg = config_from_dict({"output": {"root": str(tmp_path)}, "dataset": {"name": "tex", "categories": ["brick", "grass"]},
                            "variants": {"enabled": ["kl"]}})
    write_run_metadata(cfg)
    rng = np.random.default_rng(0)
    gt = np.zeros((2, 4, 4), np.int8)
    gt[1, 1:3, 1:3] = 1
    batch = {"image_id": np.array(["test/good/0.png", "test/crack/0.png"], dtype=object),
             "defect_type": np.array(["good", "crack"], dtype=object), "label": np.array([0, 1], np.int8),
             "gt": gt, "region": gt.astype(np.int32), "map:kl": rng.random((2, 4, 4)).astype(np.float32),
             "score:kl": np.array([0.1, 0.9], np.float32), "forwards:kl": np.full(2, 3, np.float32),
             "seconds:kl": np.full(2, 0.5, np.float32)}
    for table, schema, build in (("pixels", PIXEL_SCHEMA, pixel_table), ("images", IMAGE_SCHEMA, image_table)):
        w = PartitionWriter(partition_dir(cfg, table, "brick", "kl"), schema)
        w.write(build(batch, "kl"))
        w.commit({"images": 2})
    with pytest.raises(OutputError, match="grass/kl"):
        evaluate(cfg)
    assert not (run_dir(cfg) / "metrics.csv").exists()
    table, _, missing = evaluate(cfg, allow_incomplete=True)
    assert missing == ["grass/kl"] and table["category"].to_list() == ["brick"]


@pytest.mark.slow
def test_a_non_editable_install_ships_the_configs(tmp_path: Path) -> None:
    """``pip install .`` (a wheel, not the checkout) still finds configs/textures.yaml, inside the
    installed package (``raydiff.configs``, read with importlib.resources)."""
    import subprocess
    import sys

    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "raydiff-out", "build", "*.egg-info",
                                                             "__pycache__", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(wheels)], check=True, capture_output=True, timeout=600)
    prefix = tmp_path / "prefix"
    wheel = next(wheels.glob("raydiff-*.whl"))
    # --ignore-installed: install beside the environment's editable raydiff, never uninstalling it.
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
                    "--prefix", str(prefix), str(wheel)], check=True, capture_output=True, timeout=600)
    site = next(prefix.glob("lib/python*/site-packages"))
    probe = ("import sys, raydiff.config as c; sys.prefix = sys.argv[1]; import importlib, raydiff.config.schema as s; "
             "importlib.reload(s); print(s.DEFAULT_CONFIG, s.DEFAULT_CONFIG.is_file(), s.__file__)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe, str(prefix)], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, check=True).stdout.split()
    assert out[0] == str(site / "raydiff" / "configs" / "textures.yaml") and out[1] == "True"  # package data
    assert out[2].startswith(str(site))  # the installed copy, not the checkout
    shutil.rmtree(prefix)
