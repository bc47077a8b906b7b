"""Policy versions, training rounds, and the rewards of stored generations (the preview and the PPO samples): the
part of `FeedbackService` that the learning side reads and writes."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from db import queries as q
from db.models import Generation, PolicyVersion, TrainingRound, utcnow
from feedback.human_reward import HumanReward
from feedback.rewards import blend, comparison_scores, mean_or_none
from feedback.types import PPOSample, PreviewRow, RoundInfo, VersionInfo
from rlhf.scorers import reward_of

# App processes may share one database. A queued or running round is alive while its process beats (every
# `feedback.rounds.HEARTBEAT_S`); one silent for ROUND_LEASE, or owned by a process of this host that no longer
# exists, was cut off and is marked interrupted. Only one round runs at a time across all processes.
ROUND_LEASE = timedelta(seconds=60)
OWNER = f"{socket.gethostname()}:{os.getpid()}"


def owner_died(owner: str | None) -> bool:
    """The app process `owner` ("host:pid") ran on this host and exists no more (False when it is elsewhere: only
    its heartbeat can tell then).

    >>> owner_died(f"{socket.gethostname()}:{os.getpid()}"), owner_died("some-other-host:1")
    (False, False)
    """
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        pass
    return False


class VersionsMixin:
    """Versions, rounds, rewards and samples (see `FeedbackService` for the settings it reads)."""

    Session: sessionmaker[Session]
    use_logit: bool

    # ---- policy versions ------------------------------------------------------------------------------------
    def ensure_base_version(self) -> VersionInfo:
        """The current version, creating 'v0 (base)' (the reference policy) in an empty store."""
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            if cur is None:
                cur = PolicyVersion(name="v0 (base)", adapter_path=None, parent_id=None, is_current=True)
                s.add(cur)
                s.flush()
            return _version(cur)

    def current_version(self) -> VersionInfo:
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            if cur is None:
                raise ValueError("the store has no policy version yet; call ensure_base_version() first")
            return _version(cur)

    def versions(self) -> list[VersionInfo]:
        with self.Session.begin() as s:
            return [_version(v) for v in q.list_versions(session=s)]

    def version(self, version_id: int) -> VersionInfo:
        with self.Session.begin() as s:
            v = s.get(PolicyVersion, version_id)
            if v is None:
                raise ValueError(f"no policy version {version_id}")
            return _version(v)

    def set_current(self, version_id: int) -> VersionInfo:
        """Make `version_id` current (a rollback to an earlier version is this too)."""
        with self.Session.begin() as s:
            v = s.get(PolicyVersion, version_id)
            if v is None:
                raise ValueError(f"no policy version {version_id}")
            q.set_current_version(version_id, session=s)
            s.flush()
            s.refresh(v)
            return _version(v)

    # ---- rewards ------------------------------------------------------------------------------------------
    def rated_items(self) -> tuple[list[str], list[float], list[float]]:
        """Every rated response of any version that the classifier scored: (texts, mean human scores in [0, 1],
        classifier rewards as model mode has them), oldest first; what the human reward is fitted on."""
        with self.Session.begin() as s:
            humans = _human_scores(s)
            gens = q.generations_by_ids(sorted(humans), session=s)
            texts, labels, model = [], [], []
            for g in gens:
                r = self.model_reward(g.model_score, g.model_logit)
                if r is not None:
                    texts.append(g.response)
                    labels.append(mean_or_none(humans[g.id]))
                    model.append(r)
            return texts, labels, model

    def preview(
        self, mode: str = "blend", weight: float = 0.5, limit: int | None = None, human: HumanReward | None = None
    ) -> list[PreviewRow]:
        """The labeled items of the current version and the reward each mode gives them (`human`: the learned
        reward, None while too few ratings exist to fit one; Human and Blend are then empty)."""
        blend([], [], mode, weight)  # validates mode and weight before any work
        with self.Session.begin() as s:
            cur = q.current_version(session=s)
            if cur is None:
                return []
            humans = _human_scores(s)
            gens = [g for g in q.generations_of(cur.id, session=s, newest_first=True) if g.id in humans][:limit]
            by_mode = self._rewards_by_mode(gens, weight, human)
            return [
                PreviewRow(
                    g.id,
                    g.prompt.text,
                    g.response,
                    len(humans[g.id]),
                    g.model_score,
                    mean_or_none(humans[g.id]),
                    by_mode["model"][i],
                    by_mode["human"][i],
                    by_mode["blend"][i],
                )
                for i, g in enumerate(gens)
            ]

    def model_reward(self, score: float | None, logit: float | None) -> float | None:
        """What model mode trains on for a stored item: `rlhf.scorers.reward_of`, as the CLI. None (the item is
        left out) when the item lacks the number: unscored, or stored without a logit by a scorer that has none."""
        if score is None or (self.use_logit and logit is None):
            return None
        return reward_of(score, logit, self.use_logit)

    def _rewards_by_mode(self, gens: Sequence[Generation], weight: float, human: HumanReward | None) -> dict:
        """Per mode, the reward of each generation, as a round in that mode would compute it for a fresh sample:
        model = the CLI's reward; human = the learned reward on the classifier's scale; blend = their mix."""
        model = [self.model_reward(g.model_score, g.model_logit) for g in gens]
        if human is None:
            return {"model": model, "human": [None] * len(gens), "blend": [None] * len(gens)}
        learned = human.human([g.response for g in gens])
        return {m: blend(model, learned, m, weight) for m in ("model", "human", "blend")}

    def ppo_samples(
        self, mode: str, weight: float = 0.5, version_id: int | None = None, human: HumanReward | None = None
    ) -> list[PPOSample]:
        """Stored generations of the policy version (default: current) with their rewards under `mode`: what a
        round replays when asked to (off-policy after its first update). Rated items come first; Human and Blend
        need `human`, and replay only the rated items."""
        blend([], [], mode, weight)
        if mode != "model" and human is None:
            raise ValueError(f"{mode} mode needs the human reward, learned from the ratings")
        with self.Session.begin() as s:
            vid = version_id if version_id is not None else q.current_version(session=s).id
            gens = q.generations_of(vid, session=s)
            humans = _human_scores(s, [g.id for g in gens])
            if mode != "model":
                gens = [g for g in gens if g.id in humans]
            rewards = self._rewards_by_mode(gens, weight, human)[mode]
            out = [
                (g.id not in humans, PPOSample(g.id, list(g.query_ids), list(g.response_ids), list(g.logprobs), r))
                for g, r in zip(gens, rewards, strict=True)
                if r is not None
            ]
            return [sample for _, sample in sorted(out, key=lambda x: x[0])]

    # ---- training rounds ------------------------------------------------------------------------------------
    def create_round(self, config: dict, mode: str, weight: float) -> RoundInfo:
        blend([], [], mode, weight)
        with self.Session.begin() as s:
            q.lock_rounds(session=s)  # one creator at a time, across processes
            self._mark_dead_rounds(s)
            live = q.live_round(ROUND_LEASE, session=s)
            if live is not None:
                raise ValueError(
                    f"round {live.id} is still running (in another app process on this database); wait for it or "
                    "cancel it there"
                )
            cur = q.current_version(session=s)
            if cur is None:
                raise ValueError("the store has no policy version yet")
            r = TrainingRound(
                config=config,
                reward_mode=mode,
                reward_weight=weight,
                status="queued",
                metrics=[],
                input_version_id=cur.id,
                heartbeat=utcnow(),
                owner=OWNER,
            )
            s.add(r)
            s.flush()
            return _round(r)

    def update_round(self, round_id: int, **fields) -> RoundInfo:
        """Set fields of a round (status, metrics, evaluation, error, started, finished, output_version_id)."""
        with self.Session.begin() as s:
            r = s.get(TrainingRound, round_id)
            if r is None:
                raise ValueError(f"no training round {round_id}")
            for k, v in fields.items():
                setattr(r, k, v)
            s.flush()
            return _round(r)

    def add_version(self, round_id: int, adapter_path: str, name: str) -> VersionInfo:
        """A round's trained policy as a new version, not yet current: the pool makes its first items from it
        (`hand_over`) before `finish_round` moves the annotators to it."""
        with self.Session.begin() as s:
            r = s.get(TrainingRound, round_id)
            v = PolicyVersion(name=name, adapter_path=adapter_path, parent_id=r.input_version_id, is_current=False)
            s.add(v)
            s.flush()
            s.refresh(v)
            return _version(v)

    def finish_round(self, round_id: int, version_id: int, metrics: list, evaluation: dict | None) -> VersionInfo:
        """Record a finished round and make its version (`add_version`) current, in one transaction."""
        with self.Session.begin() as s:
            r = s.get(TrainingRound, round_id)
            q.set_current_version(version_id, session=s)
            r.status, r.metrics, r.evaluation = "done", metrics, evaluation
            r.finished, r.output_version_id = utcnow(), version_id
            s.flush()
            v = s.get(PolicyVersion, version_id)
            s.refresh(v)
            return _version(v)

    def rounds(self) -> list[RoundInfo]:
        with self.Session.begin() as s:
            return [_round(r) for r in q.list_rounds(session=s)]

    def beat_round(self, round_id: int) -> None:
        """The running round's heartbeat: its process is alive."""
        with self.Session.begin() as s:
            q.beat_round(round_id, session=s)

    def mark_interrupted_rounds(self) -> int:
        """Mark the rounds whose process died (see ROUND_LEASE) interrupted; a round another live process runs on
        this database is left alone. Returns how many were marked."""
        with self.Session.begin() as s:
            return self._mark_dead_rounds(s)

    @staticmethod
    def _mark_dead_rounds(s: Session) -> int:
        dead = [r.id for r in q.unfinished_rounds(session=s) if owner_died(r.owner)]
        return q.mark_interrupted_rounds(ROUND_LEASE, dead, session=s)


def _human_scores(s: Session, generation_ids: Sequence[int] | None = None) -> dict[int, list[float]]:
    """Per generation, every human score in [0, 1]: its ratings' scores and its comparisons' outcomes."""
    out = q.rating_scores(generation_ids, session=s)
    wanted = set(generation_ids) if generation_ids is not None else None
    for a, b, winner in q.comparison_outcomes(session=s):
        for gid, score in zip((a, b), comparison_scores(winner), strict=True):
            if wanted is None or gid in wanted:
                out.setdefault(gid, []).append(score)
    return out


# ---- ORM row -> plain object ---------------------------------------------------------------------------------
def _version(v: PolicyVersion) -> VersionInfo:
    return VersionInfo(v.id, v.name, v.adapter_path, v.parent_id, bool(v.is_current), v.created)


def _round(r: TrainingRound) -> RoundInfo:
    return RoundInfo(
        r.id,
        r.status,
        r.reward_mode,
        r.reward_weight,
        dict(r.config or {}),
        list(r.metrics or []),
        r.evaluation,
        r.error,
        r.input_version_id,
        r.output_version_id,
        r.created,
        r.started,
        r.finished,
    )
