"""Plain frozen objects that cross the feedback layer's boundary (to the UI and to rlhf/), never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class AnnotatorInfo:
    id: int
    name: str
    role: str  # annotator | admin

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class VersionInfo:
    id: int
    name: str
    adapter_path: str | None  # None: the base model (the reference policy)
    parent_id: int | None
    is_current: bool
    created: datetime


@dataclass(frozen=True)
class PromptRef:
    id: int
    text: str
    summary: str | None = None


@dataclass(frozen=True)
class Item:
    """One generation to rate: the prompt (dialogue) and the policy's response."""

    generation_id: int
    prompt_id: int
    prompt: str
    response: str
    model_score: float | None
    policy_version_id: int
    rated_as: str | None = None  # set by undo: the kind of the rating taken back (binary or scale)


@dataclass(frozen=True)
class PairItem:
    """Two responses of one policy version to one prompt, for a pairwise preference."""

    prompt_id: int
    prompt: str
    a: Item
    b: Item


@dataclass(frozen=True)
class Receipt:
    """What a submit stored. `duplicate` is true when a retried submit found its first attempt's row."""

    id: int
    annotator_id: int
    kind: str
    value: int | str
    duplicate: bool = False


@dataclass(frozen=True)
class Progress:
    rated_items: int  # generations of the current version with at least one human judgement
    total_items: int  # generations of the current version
    mine: int  # this annotator's ratings and comparisons, all versions
    left_for_me: int  # current-version items this annotator has not rated or skipped


@dataclass(frozen=True)
class NewGeneration:
    """A response of the policy (`feedback.model.PolicyGenerator`), with what an on-policy PPO update needs later."""

    prompt_id: int
    query_text: str
    response: str
    query_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    model_score: float | None
    model_logit: float | None
    scorer: str | None


@dataclass(frozen=True)
class PreviewRow:
    """One labeled item and the reward each mode gives it (None: the mode leaves it out)."""

    generation_id: int
    prompt: str
    response: str
    n_human: int
    model_score: float | None  # the classifier's P(not offensive)
    human_score: float | None
    model: float | None
    human: float | None
    blend: float | None


@dataclass(frozen=True)
class PPOSample:
    generation_id: int
    query_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    reward: float


@dataclass(frozen=True)
class ImportReport:
    added: int
    duplicates: int  # rows skipped: already in the store, or repeated within the file
    rows: int


@dataclass(frozen=True)
class RoundInfo:
    id: int
    status: str
    reward_mode: str
    reward_weight: float
    config: dict
    metrics: list
    evaluation: dict | None
    error: str | None
    input_version_id: int
    output_version_id: int | None
    created: datetime
    started: datetime | None
    finished: datetime | None
