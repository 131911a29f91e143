"""FLUX.1, FLUX.2 and SD3 runs of ai-toolkit, kohya sd-scripts and SimpleTuner, ingested into the record
with their base-model facts (extra["training_facts"]), and no false training findings."""

from __future__ import annotations

import json

import pytest

from lora_pipeline.config import ChecksConfig
from lora_pipeline.training.checkpoints import analyse_checkpoint
from lora_pipeline.training.checks import training_findings
from lora_pipeline.training.common import architecture
from lora_pipeline.training.header_facts import header_facts
from lora_pipeline.training.ingest import ingest_run
from lora_pipeline.training.record import RunRecord
from tests.training import fixtures as fx
from tests.training import fixtures_dit as dx

STEPS = [("step-00000250", 250), ("step-00000500", 500)]


def _ingest(workspace, folder):
    r = ingest_run(folder, workspace[1]).record
    assert [(c.checkpoint_id, c.step) for c in r.checkpoints] == STEPS
    assert r.checkpoints[-1].final and r.checkpoints[-1].aliases  # the final file == the last step's
    bad = sorted(f.code for f in r.findings if f.layer in ("training", "provenance", "runtime"))
    assert bad == [], [f.message for f in r.findings]
    assert not r.conflicts
    return r, r.extra.get("training_facts", {})


def test_kohya_flux(runs_dir, workspace):
    r, tf = _ingest(workspace, dx.kohya_flux(runs_dir))
    assert (r.format, r.base_model.name, r.base_model.architecture) == ("kohya", "flux1-dev.safetensors", "flux1")
    assert (r.rank, r.alpha, r.learning_rate, r.steps, r.name) == (16, 8.0, 1e-4, 500, "chairs")
    # a dataset config: the resolution is ss_datasets', not modelspec's family default (1024)
    assert r.resolution == 512 and r.images == 8 and len(r.loss) == len(dx.LOSS)
    # kohya records no trigger: the linked dataset's
    assert (r.trigger, r.sources["trigger"]) == (fx.TRIGGER, "config:datasets.products.trigger")
    assert tf == {"model_variant": "dev", "guidance_scale": 1.0, "t5_attn_mask": False, "timestep_sampling": "shift",
                  "flow_shift": 3.1582, "prediction_type": "raw", "network_module": "networks.lora_flux"}
    assert "t5_max_tokens" not in tf  # flux_train_network.py does not write --t5xxl_max_token_length


def test_kohya_sd3(runs_dir, workspace):
    r, tf = _ingest(workspace, dx.kohya_sd3(runs_dir))
    assert (r.format, r.base_model.architecture, r.sources["base_model.name"]) == ("kohya", "sd3", "config.toml")
    assert r.base_model.name == "/models/sd3.5_large.safetensors"  # the header's basename agrees
    assert (r.rank, r.alpha, r.learning_rate, r.steps, r.resolution) == (16, 8.0, 1e-4, 500, 512)
    assert r.trigger == fx.TRIGGER and r.sources["trigger"].startswith("header:")  # --metadata_trigger_phrase
    assert (tf["model_variant"], tf["t5_max_tokens"], tf["t5_attn_mask"]) == ("5-large", 256, True)
    assert tf["network_module"] == "networks.lora_sd3" and "guidance_scale" not in tf
    assert r.extra["training_fact_sources"]["t5_max_tokens"] == "config.toml"


@pytest.mark.parametrize("kind, base, arch", [
    ("flux1", "black-forest-labs/FLUX.1-dev", "flux1"),
    ("flux2", "black-forest-labs/FLUX.2-dev", "flux2"),
    ("sd3", "stabilityai/stable-diffusion-3.5-large", "sd3")])
def test_aitoolkit(runs_dir, workspace, toy_dataset, kind, base, arch):
    r, tf = _ingest(workspace, dx.aitoolkit(runs_dir, toy_dataset, kind))
    assert (r.format, r.base_model.name, r.base_model.architecture) == ("ai-toolkit", base, arch)
    assert (r.trigger, r.rank, r.learning_rate, r.optimizer, r.steps) == (fx.TRIGGER, 16, 1e-4, "adamw8bit", 500)
    assert r.resolution == 1024 and r.name == f"chairs_{kind}" and r.dataset.name == "products"
    # PEFT-format LoRAs (no alpha tensor) train at alpha = rank, whatever linear_alpha says
    assert r.alpha == 16.0 and r.sources["alpha"].startswith("config.yaml")
    assert (tf["sample_guidance_scale"], tf["sample_steps"]) == (4.0, 20)
    if kind == "sd3":
        assert tf["config_alpha_ignored"] == 8.0 and "guidance_scale" not in tf
    else:  # train.cfg_scale unset: the guidance embedding trains at ai-toolkit's default 1.0
        assert tf["guidance_scale"] == 1.0 and "config_alpha_ignored" not in tf
    assert (tf.get("t5_max_tokens"), tf.get("model_variant")) == {
        "flux1": (512, None), "flux2": (None, "flux2"), "sd3": (None, None)}[kind]


def test_simpletuner_flux(runs_dir, workspace):
    r, tf = _ingest(workspace, dx.simpletuner_flux(runs_dir))
    assert (r.format, r.base_model.name, r.base_model.architecture) == (
        "simpletuner", "black-forest-labs/flux.1-dev", "flux1")
    assert r.sources["rank"] == "logs/lora-training/1795800000.25/hparams.yml"
    assert (r.rank, r.alpha, r.learning_rate, r.optimizer, r.steps, r.resolution) == (16, 16.0, 1e-4, "adamw_bf16",
                                                                                       500, 1024)
    assert r.trigger == fx.TRIGGER and r.sources["trigger"].startswith("header:")  # trained_words
    assert r.loss == [(s, pytest.approx(v)) for s, v in dx.LOSS]  # tensorboard train_loss
    assert tf == {"model_variant": "dev", "guidance_mode": "constant", "guidance_scale": 1.0, "t5_max_tokens": 512,
                  "t5_attn_mask": False, "flow_shift": 3.0, "validation_prompt": f"{fx.TRIGGER} in a living room",
                  "sample_guidance_scale": 4.0, "sample_steps": 20}


def test_simpletuner_flux2_manifest_only(runs_dir, workspace):
    r, tf = _ingest(workspace, dx.simpletuner_flux2(runs_dir))
    assert (r.base_model.name, r.base_model.architecture) == ("black-forest-labs/FLUX.2-klein-base-9B", "flux2")
    assert r.resolution == 1024  # the manifest's 1.0 (megapixels); the header's `1x1` is no size
    # the manifest keeps no LoRA settings: rank/alpha from the header's lora_adapter_metadata
    assert (r.rank, r.alpha) == (16, 16.0) and r.sources["alpha"].startswith("header:")
    assert (r.trigger, r.steps, r.name, r.started_at[:16]) == (fx.TRIGGER, 500, "chairs-klein", "2026-11-27T10:00")
    assert tf == {"model_variant": "klein-9b"}  # klein has no guidance embedding; not T5


def test_simpletuner_sd3_user_config(runs_dir, workspace):
    r, tf = _ingest(workspace, dx.simpletuner_sd3(runs_dir))
    assert r.base_model.name == "stabilityai/stable-diffusion-3.5-large"  # the flavour's model
    assert r.sources["base_model.name"].startswith("config.json (pretrained_model_name_or_path unset")
    assert (r.base_model.architecture, r.rank, r.alpha, r.resolution, r.trigger) == ("sd3", 16, 16.0, 1024,
                                                                                      fx.TRIGGER)
    assert (tf["model_variant"], tf["t5_max_tokens"]) == ("large", 154)


def test_kohya_headers_give_the_family(runs_dir):
    flux, sd3 = dx.kohya_flux(runs_dir), dx.kohya_sd3(runs_dir)

    def arch(path):
        facts = header_facts(analyse_checkpoint(path), "h")
        return next(v for f, v, _ in facts if f == "base_model.architecture")

    assert arch(flux / "chairs.safetensors") == "flux1"
    assert arch(sd3 / "chairs.safetensors") == "sd3"
    # --no_metadata keeps only the minimum keys: sd3's ss_base_model_version ("5-large") names no family,
    # its network module does
    minimal = {"ss_v2": "False", "ss_base_model_version": "5-large", "ss_network_module": "networks.lora_sd3",
               "ss_network_dim": "16", "ss_network_alpha": "8.0"}
    fx._save(runs_dir / "min" / "sd3.safetensors", dx.lora("sd3-kohya", 1.0, 8.0), minimal)
    assert arch(runs_dir / "min" / "sd3.safetensors") == "sd3"


@pytest.mark.parametrize("value, arch", [
    ("flux1", "flux1"), ("flux.1", "flux1"), ("flux-1-dev/lora", "flux1"), ("flux-dev/lora", "flux1"),
    ("flux.1_kontext", "flux1"), ("black-forest-labs/FLUX.1-dev", "flux1"), ("flux2", "flux2"),
    ("flux2_klein_9b", "flux2"), ("flux2-klein-9b/lora", "flux2"), ("black-forest-labs/FLUX.2-dev", "flux2"),
    ("sd_3", "sd3"), ("sd3-large/lora", "sd3"), ("stable-diffusion-3-5-large/lora", "sd3"),
    ("stable-diffusion-3-medium/lora", "sd3"), ("stabilityai/stable-diffusion-3.5-large", "sd3"),
    ("stable-diffusion-v1/lora", "sd1"), ("sdxl_base_v1-0", "sdxl"), ("sd_v2", "sd2"), ("5-large", None),
    ("chroma", None)])
def test_architecture_strings(value, arch):
    assert architecture(value) == arch


def test_typical_flux_settings_are_not_aggressive():
    """FLUX LoRAs: lr 1e-4 (adamw8bit / adafactor / lion 1e-4?) or prodigy 1.0, rank 16-32, 1-3k steps
    on 15-30 images: none is above the thresholds."""
    checks = ChecksConfig()
    for opt, lr, rank, steps, images in (("adamw8bit", 1e-4, 16, 2000, 20), ("adamw_bf16", 1e-4, 32, 3000, 15),
                                         ("Adafactor", 1e-4, 16, 1500, 10), ("prodigy", 1.0, 16, 2000, 20),
                                         ("bitsandbytes.optim.adamw.AdamW8bit", 4e-4, 16, 1000, 8)):
        r = RunRecord(run_id="flux", folder="/x", format="ai-toolkit", rank=rank, learning_rate=lr, optimizer=opt,
                      steps=steps, images=images)
        assert [f.code for f in training_findings(r, checks)] == [], (opt, lr)


def test_broken_trainer_files_are_findings(runs_dir, workspace):
    """A torn hparams.yml, a config.json that is a list, odd header values: findings or nothing, no traceback."""
    st = dx.simpletuner_flux(runs_dir)
    hp = next((st / "logs").rglob("hparams.yml"))
    hp.write_text("model_family: flux\nlora_rank: [unclosed\n")
    (st / "config.json").write_text(json.dumps(["--model_family", "flux"]))
    r = ingest_run(st, workspace[1]).record
    unknown = " | ".join(f.message for f in r.findings if f.code == "TRAINING.CONFIG_UNKNOWN")
    assert "hparams.yml: cannot parse" in unknown and "config.json: not a table of arguments" in unknown
    assert (r.base_model.architecture, r.rank) == ("flux1", 16)  # the header and weights still speak

    kohya = dx.kohya_flux(runs_dir)
    md = dx._kohya_header(500, ss_guidance_scale="abc", ss_apply_t5_attn_mask="maybe", ss_timestep_sampling="None",
                          ss_network_module="networks.lora_flux", ss_base_model_version="flux1")
    fx._save(kohya / "chairs.safetensors", dx.lora("flux1-kohya", 1.0, 8.0), md)
    r = ingest_run(kohya, workspace[1]).record
    tf = r.extra["training_facts"]
    assert not {"guidance_scale", "t5_attn_mask", "timestep_sampling"} & set(tf)  # str(None): unset
    assert r.base_model.architecture == "flux1" and tf["network_module"] == "networks.lora_flux"
