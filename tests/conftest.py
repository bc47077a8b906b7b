"""Shared fixtures: tiny models of each architecture, built once per session in a temp dir."""

import os

import pytest

# Tests never reach the hub: a bad model name must fail fast with our message, not wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny_models import build_tiny_llama, build_tiny_roberta_classifier, build_tiny_t5


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    return build_tiny_t5(tmp_path_factory.mktemp("models") / "tiny-t5")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    return build_tiny_roberta_classifier(tmp_path_factory.mktemp("models") / "tiny-roberta")


@pytest.fixture(scope="session")
def dialogsum_jsonl():
    """DialogSum dev split from ../shared/data: real prompts in the seed's format, read in place."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dialogsum" / "dialogsum.dev.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found (the shared data folder sits beside the project checkout)")
    return path


@pytest.fixture(scope="session")
def chitchat_jsonl(tmp_path_factory):
    """Real prompts every checkout has: the embedded chitchat dialogues (requirements.txt installs them), written
    as a JSONL file with a dialogue column, as a user's file would be. Tests that need DialogSum's reference
    summaries, or the labelled tweets, use ../shared instead."""
    import json

    from rlhf.config import offline_preset
    from rlhf.prompts import load_prompts

    path = tmp_path_factory.mktemp("prompts") / "chitchat.jsonl"
    rows = [{"id": p.id, "dialogue": p.dialogue} for p in load_prompts(offline_preset().data)[:200]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_studio_options(tmp_path, tiny_llama, tiny_classifier, chitchat_jsonl):
    """App options on the tiny models and the embedded chitchat prompts, with a fresh SQLite store in tmp_path."""
    from feedback.studio import StudioOptions

    def make(**overrides):
        options = StudioOptions(
            data_dir=tmp_path / "data",
            database_url=f"sqlite:///{tmp_path / 'studio.db'}",
            policy=str(tiny_llama),
            lora_targets=["q_proj", "v_proj"],
            reward=str(tiny_classifier),
            prompts=str(chitchat_jsonl),
            heldout=4,
            pool_size=8,
            max_new_tokens=5,
            device="cpu",
        )
        for key, value in overrides.items():
            setattr(options, key, value)
        return options

    return make
