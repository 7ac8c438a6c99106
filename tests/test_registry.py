"""The model registry: versions with their provenance, aliases that move and roll back."""

import json

import pytest

from fractalflow import FractalFlowPipeline
from fractalflow.cli import main
from fractalflow.serving.registry import ModelRegistry, weights_sha256


def test_versions_keep_their_provenance_and_a_copy_of_the_folder(tmp_path, tiny_model_folder):
    registry = ModelRegistry(tmp_path / "reg")
    first = registry.register(tiny_model_folder, "emoji", data="data/emoji", commit="abc", metrics={"fd": 300.0})
    second = registry.register(tiny_model_folder, "emoji", parent="emoji:1")
    assert (first.ref, second.ref, second.parent) == ("emoji:1", "emoji:2", "emoji:1")
    assert first.sha256 == weights_sha256(tiny_model_folder) and first.metrics == {"fd": 300.0}
    assert registry.get("emoji").version == 2  # a bare name is its newest version
    loaded = FractalFlowPipeline.from_pretrained(registry.folder("emoji:1"), device="cpu")
    assert loaded.config.sample_size == 16
    assert ModelRegistry(tmp_path / "reg").versions() == registry.versions()  # it is all on disk


def test_an_alias_moves_rolls_back_and_is_seen_by_another_reader_without_a_restart(tmp_path, tiny_model_folder):
    writer, reader = ModelRegistry(tmp_path / "reg"), ModelRegistry(tmp_path / "reg")
    for _ in range(3):
        writer.register(tiny_model_folder, "emoji")
    writer.alias("production", "emoji:1")
    assert reader.get("production").ref == "emoji:1"
    writer.alias("production", "emoji:3")
    assert reader.get("production").ref == "emoji:3" and reader.folder("production").name == "v3"
    assert writer.rollback("production").ref == "emoji:1"
    with pytest.raises(ValueError, match="alias 'production' has no earlier version to roll back to"):
        writer.rollback("production")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r, f: r.register(f, "Bad Name"), "model name 'Bad Name': use 1-64 lower-case"),
        (lambda r, f: r.register(f.parent, "x"), "is not a model folder: config.json is missing"),
        (lambda r, f: r.get("nope"), "no model 'nope' in"),
        (lambda r, f: r.alias("canary", "emoji:9"), "no model 'emoji:9'"),
        (lambda r, f: r.alias("emoji", "emoji:1"), "alias 'emoji' is also a model name"),
    ],
)
def test_bad_registry_input_is_one_clear_error(tmp_path, tiny_model_folder, call, message):
    registry = ModelRegistry(tmp_path / "reg")
    registry.register(tiny_model_folder, "emoji")
    with pytest.raises(ValueError, match=message):
        call(registry, tiny_model_folder)


def test_models_commands_register_list_promote_and_roll_back(tmp_path, tiny_model_folder, capsys):
    reg = ["--registry", str(tmp_path / "reg")]
    (tmp_path / "eval.json").write_text(json.dumps({"metrics": {"fd_effnet_l0": 322.3, "note": "text"}}))
    assert main(["models", "register", str(tiny_model_folder), "--name", "emoji", *reg]) == 0
    assert main(["models", "register", str(tiny_model_folder), "--name", "emoji", "--parent", "emoji:1",
                 "--eval", str(tmp_path / "eval.json"), *reg]) == 0  # fmt: skip
    assert main(["models", "promote", "emoji:1", *reg]) == 0
    assert main(["models", "promote", "emoji:2", *reg]) == 0
    assert main(["models", "alias", "canary", "emoji:1", *reg]) == 0
    assert main(["models", "rollback", *reg]) == 0
    capsys.readouterr()
    assert main(["models", "list", *reg]) == 0
    listing = capsys.readouterr().out
    assert "emoji:1" in listing and "production,canary" in listing and "fd_effnet_l0=322.3" in listing
    assert main(["models", "alias", "canary", *reg]) == 2
    assert "models alias takes 2 argument(s), got 1" in capsys.readouterr().err
