"""environment.yml and pip read one list of requirements; the configs parse against the schema."""

import re

import jsonschema
import yaml

from tests.conftest import ROOT


def test_environment_yml_reads_requirements_txt_and_adds_no_packages():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert sorted(re.split(r"[=<>]", d)[0] for d in conda) == ["pip", "python"]
    assert pip == [{"pip": ["-r requirements.txt"]}]


def test_requirements_pin_nothing_the_cpu_constraints_contradict():
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[=<>\[ ]", r)[0].lower() for r in reqs if r}
    assert {"torch", "transformers", "trl", "datasets", "snakemake", "scipy", "matplotlib", "pandas"} <= names
    constraints = (ROOT / "constraints-cpu.txt").read_text()
    assert "torch==2.13.0" in constraints


def test_every_profile_matches_the_schema():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    base = yaml.safe_load((ROOT / "workflow/config/config.yaml").read_text())
    for name in ["config.yaml", "test.yaml", "paper.yaml"]:
        profile = yaml.safe_load((ROOT / "workflow/config" / name).read_text())
        merged = {**base, **profile}
        jsonschema.validate(merged, schema)


def test_bf16_auto_follows_the_hardware(monkeypatch):
    """`bf16: auto` in a method.yaml becomes bf16 only where the hardware runs it natively."""
    from core import config
    from methods.quark.quark import QuarkConfig

    for native in (True, False):
        monkeypatch.setattr(config, "native_bf16", lambda native=native: native)
        assert config.from_dict(QuarkConfig, {"bf16": "auto", "lr": 0.1}, "x").bf16 is native
        assert config.from_dict(QuarkConfig, {"bf16": True}, "x").bf16 is True
    quark = yaml.safe_load((ROOT / "methods/quark/method.yaml").read_text())
    assert quark["hparams"]["mini"]["bf16"] == "auto"
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    typing = schema["properties"]["sentiment_prompts"]["properties"]["bf16"]
    validator = jsonschema.validators.validator_for(schema)(typing)
    assert [validator.is_valid(v) for v in ("auto", False, "yes")] == [True, True, False]
