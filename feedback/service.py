"""The labeling service: one object the app and the learning side call, composed of four parts, one module each:

- `feedback.accounts`: annotators, roles, passwords and login;
- `feedback.pool`: generations, prompts, and the refill that asks the policy for more;
- `feedback.labeling`: the rating queue, submits (idempotent), skip and undo, pairs, progress, deleting ratings;
- `feedback.versions`: policy versions, training rounds, reward previews and PPO samples.

Each public method is one user action and one transaction (`with self.Session.begin()`); what it returns are
the frozen objects of `feedback.types`, never ORM rows. The service is safe to share between threads: it holds
a session factory, not a session.
"""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from feedback.accounts import AccountsMixin
from feedback.labeling import LabelingMixin
from feedback.pool import Generator, PoolMixin
from feedback.versions import VersionsMixin


class FeedbackService(AccountsMixin, PoolMixin, LabelingMixin, VersionsMixin):
    """Args:
    session_factory: from `db.session.make_session_factory`.
    generator: the policy side that produces new generations (`feedback.model.PolicyGenerator`; None: the pool
        is filled by hand).
    lease_seconds: how long an item handed to one annotator is kept from the others.
    low_water: refill when fewer unrated items of the current version remain.
    refill_size: prompts per refill.
    use_logit: the run config's `reward.use_logit`: model mode rewards with the classifier's logit (margin), as
        `rlhf train` does (`rlhf.scorers.reward_of`); Blend mixes its probability with the human [0, 1] score.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        generator: Generator | None = None,
        lease_seconds: float = 600,
        low_water: int = 8,
        refill_size: int = 16,
        use_logit: bool = False,
    ):
        self.Session = session_factory
        self.generator = generator
        self.lease = timedelta(seconds=lease_seconds)
        self.low_water = low_water
        self.refill_size = refill_size
        self.use_logit = use_logit
        self._refill_lock = threading.Lock()
        self._refill_stop = threading.Event()  # set by `hand_over`: a running refill stops after its chunk
        self.last_refill_error: str | None = None
