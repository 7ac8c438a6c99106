"""The fractalflow command: it writes images, explains its options, and fails clearly."""

import argparse
import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from fractalflow.cli import build_parser, main
from fractalflow.data.emoji import is_eval


def run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_generate_writes_a_png_with_its_settings(tmp_path, tiny_model_folder, capsys):
    out = tmp_path / "img.png"
    status, stdout, _ = run(
        capsys,
        "generate",
        "two",
        "nine",
        "--model",
        str(tiny_model_folder),
        "--steps",
        "3",
        "--num-images",
        "2",
        "--seed",
        "4",
        "-o",
        str(out),
    )
    assert status == 0 and "wrote" in stdout
    with Image.open(out) as image:
        assert image.size == (32, 32)  # 2 prompts x 2 images of 16 px
        settings = json.loads(image.text["fractalflow"])
    assert settings["prompts"] == ["two", "nine"] and settings["seeds"] == [4, 5, 6, 7]
    assert settings["config"]["steps"] == 3


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--steps", "0"], "steps=0 must be from 1 to 1000"),
        (["--size", "18"], "multiples of 4"),
        (["--sampler", "ddim"], "unknown sampler"),
        (["-o", "x.jpg"], "must end in .png"),
        (["--num-images", "0"], "--num-images=0"),
        (["--model", "/no/such/folder"], "does not exist"),
        (["--guidance", "nan"], "guidance=nan must be a finite number"),
        (["--guidance", "1e999"], "guidance=inf must be"),
        (["--guidance", "-1"], "guidance=-1.0 must be"),
        (["--size", "0"], "size=0 must be from 1 to 2048"),
        (["--upscale", "17"], "upscale=17 must be from 1 to 16"),
        (["-o", "/no/such/folder/out.png"], "folder '/no/such/folder' does not exist"),
        (["--resolution", "standard", "--early-stop", "inf"], "early_stop=inf must be a finite number"),
        (["--resolution", "standard", "--scales", "0.5,inf"], "must be positive, finite"),
    ],
)
def test_generate_bad_input_is_one_clear_error_and_no_file(tmp_path, tiny_model_folder, capsys, extra, message):
    argv = ["generate", "one", "--model", str(tiny_model_folder), "-o", str(tmp_path / "out.png"), *extra]
    if "--model" in extra:
        argv[2:4] = []
    status, _, stderr = run(capsys, *argv)
    assert status == 2 and message in stderr and "Traceback" not in stderr
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    "extra,message",
    [
        ([], "no held-out set for a class model"),
        (["--data", "fashion-mnist"], "needs a model trained on the Fashion-MNIST classes"),
        (["--n", "1"], "num_images (1) must be >= 2"),
    ],
)
def test_eval_bad_input_is_one_clear_error(tmp_path, tiny_model_folder, capsys, extra, message):
    out = tmp_path / "eval.json"
    status, _, stderr = run(capsys, "eval", "--model", str(tiny_model_folder), "--out", str(out), *extra)
    assert status == 2 and message in stderr and "Traceback" not in stderr
    assert not out.exists()


# bad files given to --model-config / --config: (file name, content)
BAD_JSON = {
    "text.json": "not json",
    "empty.json": "",
    "list.json": "[1, 2]",
    "string-widths.json": '{"widths": "abc"}',
    "unknown.json": '{"nope": 1}',
    "lengths.json": '{"widths": [64, 128], "depths": [1]}',
    "float-port.json": '{"port": 80.5}',
}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--model-config", "text.json"], "text.json is not JSON text"),
        (["train", "--model-config", "empty.json"], "empty.json is not JSON text"),
        (["train", "--model-config", "list.json"], "must hold a JSON object of settings, not a list"),
        (["train", "--model-config", "string-widths.json"], 'wrong type for widths="abc" (expected tuple[int, ...])'),
        (["train", "--model-config", "unknown.json"], "FractalConfig: unknown field(s) ['nope']"),
        (["train", "--model-config", "lengths.json"], "need the same, non-zero length"),
        (["train", "--model-config", "missing.json"], "No such file or directory: 'missing.json'"),
        (["train", "--image-size", "0"], "image_size=0 must be >= 1"),
        (["train", "--image-size", "18"], "multiples of 8"),
        (["train", "--learning-rate", "nan"], "learning_rate=nan must be a finite number > 0"),
        (["train", "--ema-decay", "2"], "ema_decay=2.0 must be in [0, 1)"),
        (["train", "--warmup-steps", "-5"], "warmup_steps=-5 must be >= 0"),
        (["train", "--timestep-std", "0"], "timestep_std=0.0 must be a finite number > 0"),
        (["train", "--shift-fill", "255"], "shift_fill=255.0 must be from -1 to 1, or None (mirror)"),
        (["train", "--device", "tpu"], "device 'tpu' is not a device name"),
        (["train", "--out", "/proc/run"], "cannot write the run folder '/proc/run'"),
        (["serve", "--config", "text.json"], "text.json is not JSON text"),
        (["serve", "--config", "unknown.json"], "ServerConfig: unknown field(s) ['nope']"),
        (["serve", "--config", "float-port.json"], "wrong type for port=80.5 (expected int)"),
        (["serve", "--port", "99999"], "port=99999 must be in 1..65535"),
        (["serve", "--profile", "warp"], "profile='warp'; allowed: ['auto', 'gpu', 'cpu', 'edge']"),
        (["eval", "--guidance", "nan"], "guidance=nan must be a finite number"),
        (["eval", "--steps", "5000"], "steps=5000 must be from 1 to 1000"),
        (["eval", "--size", "100000"], "size=100000 must be from 1 to 2048"),
        (["eval", "--n", "99999999"], "num_images=99999999 must be at most 50000"),
        (["bench", "--early-stop", "nan", "--n", "0"], "early_stop (nan) a finite number >= 0"),
        (["bench", "--n", "-5"], "eval_images (-5) >= 0"),
        (["bench", "--resolutions", "huge"], "--resolutions 'huge': choose from"),
        (["generate", "one", "--steps", "1000000"], "steps=1000000 must be from 1 to 1000"),
        (["generate", "one", "--num-images", "100000"], "100000 images of 16 px are too many for one call"),
        (["generate", "one", "--resolution", "100000"], "100000 px is over the largest image side allowed"),
        (["generate", "one", "--adaptive", "9"], "adaptive=9.0: allowed are 'off', 'auto', a speed-up from 1 to 8"),
        (["generate", "one", "--adaptive", "2"], "this model has no adaptive.json; run 'fractalflow calibrate'"),
        (["eval", "--adaptive", "0.5"], "adaptive=0.5: allowed are 'off', 'auto', a speed-up from 1 to 8"),
        (["calibrate", "--targets", "0.5"], "targets=(0.5,) must be speed-ups above 1 and at most 8"),
        (["calibrate", "--auto", "2.5"], "auto=2.5 must be one of the targets or None"),
        (["calibrate", "--data", "missing"], "missing holds no prepared emoji set"),
    ],
)
def test_every_command_refuses_bad_input_in_one_line_before_any_work(
    tmp_path, tiny_model_folder, capsys, monkeypatch, argv, message
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name, content in BAD_JSON.items():
        (work / name).write_text(content)
    model = ["--model", str(tiny_model_folder)] if argv[0] in ("eval", "generate", "serve") else []
    train = ["--data", "digits", "--steps", "1", "--no-progress"] if argv[0] == "train" else []
    out = ["--out", "run"] if argv[0] == "train" and "--out" not in argv else []
    status, stdout, stderr = run(capsys, *argv, *model, *train, *out)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and message in lines[0], stderr
    assert "Traceback" not in stderr and not stdout
    assert sorted(path.name for path in work.iterdir()) == sorted(BAD_JSON)  # nothing written


def test_eval_of_a_text_model_needs_the_prepared_set(tmp_path, capsys):
    status, _, stderr = run(capsys, "eval", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "e.json"))
    assert status == 2 and "holds no prepared emoji set" in stderr


def test_every_option_of_every_command_has_help():
    def check(parser, path):
        for action in parser._actions:
            assert action.help, f"{path} {action.option_strings or action.dest} has no help"
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    check(sub, f"{path} {name}")

    check(build_parser(), "fractalflow")


def test_data_prepare_prints_counts_and_what_it_skipped(tmp_path, capsys):
    from test_emoji_data import fake_node_modules

    sources = fake_node_modules(tmp_path / "nm")
    status, stdout, _ = run(
        capsys,
        "data",
        "prepare",
        "--out",
        str(tmp_path / "out"),
        "--sources",
        str(sources),
        "--sizes",
        "16",
        "--workers",
        "1",
    )
    assert status == 0
    assert "skipped openmoji: npm package 'openmoji' not found" in stdout
    rows = {
        line.split()[0]: line.split()[1:]
        for line in stdout.splitlines()
        if line.startswith(("noto ", "tabler ", "total "))
    }
    noto_eval = sum(is_eval("noto", key) for key in ("1f600", "2764"))
    tabler_eval = int(is_eval("tabler", "bell-outline"))
    assert rows["noto"][:3] == ["2", str(2 - noto_eval), str(noto_eval)]  # found, train, eval
    assert rows["tabler"][:3] == ["1", str(1 - tabler_eval), str(tabler_eval)]
    assert float(rows["tabler"][3]) == pytest.approx(0.3)  # the icons' share of training draws
    held_out = noto_eval + tabler_eval + int(is_eval("noto-blob", "2764"))
    assert rows["total"][1:] == [str(4 - held_out), str(held_out)]
    assert "held-out concepts:" in stdout and (tmp_path / "out" / "CREDITS.md").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cap", "material"], "expected SOURCE=N"),
        (["--cap", "pixabay=10"], "unknown sources ['pixabay']"),
        (["--max-images", "0"], "--max-images must be >= 1"),
    ],
)
def test_data_prepare_rejects_a_bad_budget_in_one_line(tmp_path, capsys, args, message):
    from test_emoji_data import fake_node_modules

    sources = fake_node_modules(tmp_path / "nm")
    status, _, stderr = run(capsys, "data", "prepare", "--out", str(tmp_path / "out"), "--sources", str(sources), *args)
    assert status == 2 and message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_data_pack_without_a_prepared_set_is_a_clear_error(tmp_path, capsys):
    status, _, stderr = run(capsys, "data", "pack", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "p"))
    assert status == 2 and "holds no prepared emoji set" in stderr
    assert not (tmp_path / "p").exists()


def test_train_then_generate_from_the_trained_model(tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, _ = run(
        capsys,
        "train",
        "--data",
        "digits",
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--image-size",
        "16",
        "--checkpoint-every",
        "3",
        "--no-progress",
    )
    assert status == 0 and (out / "model" / "model.safetensors").is_file()
    assert json.loads((out / "model" / "config.json").read_text())["class_names"][0] == "zero"
    status, stdout, _ = run(
        capsys,
        "train",
        "--data",
        "digits",
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--steps",
        "8",
        "--batch-size",
        "4",
        "--image-size",
        "16",
        "--checkpoint-every",
        "3",
        "--no-progress",
    )
    assert status == 0 and "resumed from step 6" in stdout
    status, _, _ = run(
        capsys, "generate", "eight", "--model", str(out / "model"), "--steps", "2", "-o", str(tmp_path / "eight.png")
    )
    assert status == 0 and (tmp_path / "eight.png").is_file()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not available")
def test_default_model_generates_with_no_network_at_all(tmp_path):
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("this kernel does not let us make a network namespace")
    out = tmp_path / "offline.png"
    command = [
        "unshare",
        "-n",
        sys.executable,
        "-m",
        "fractalflow.cli",
        "generate",
        "red heart",
        "--steps",
        "4",
        "-o",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert out.is_file()
