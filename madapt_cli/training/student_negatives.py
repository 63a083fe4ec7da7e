"""L_distill with the student's own mistakes among the candidates (``--objective distill``).

The teacher's candidates of an anchor are its top-K corpus rows at full size plus a few
random rows. A short prefix's errors are mostly rows *outside* that set which the prefix
ranks near the top: the random draw rarely meets them. So every epoch the current student
retrieves each anchor's top ``config.distill_student_negatives`` rows at each of the
smallest trained sizes, and those rows join the anchor's candidates, scored by the teacher
(their full-size cosine) like the others. Re-mining one's own hard negatives is the usual
remedy when a retriever's negatives go stale (Xiong et al., "Approximate Nearest Neighbor
Negative Contrastive Learning for Dense Text Retrieval" (ANCE), ICLR 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from madapt_cli.retrieval.search import search_topk_prefixes
from madapt_cli.training.config import TrainConfig
from madapt_cli.training.objectives import DistillationObjective, adapt_all, self_exclusions


class StudentNegativesObjective(DistillationObjective):
    """:class:`DistillationObjective` plus, per anchor, the rows that the student currently
    ranks in its top ``count`` at each size of ``mined_dims`` (refreshed by :meth:`refresh`;
    none before the first refresh). A mined row that is already a candidate, or the anchor
    itself, is masked out."""

    def __init__(
        self,
        corpus: torch.Tensor,
        anchors: torch.Tensor,
        dims: Sequence[int],
        config: TrainConfig,
        dim_weights: Sequence[float] | None = None,
        anchor_rows: torch.Tensor | None = None,
        mined_dims: Sequence[int] = (),
        count: int = 0,
    ) -> None:
        super().__init__(corpus, anchors, dims, config, dim_weights, anchor_rows)
        self.mined_dims, self.count = list(mined_dims), count
        self.mined: torch.Tensor | None = None  # (A, |mined_dims| * count) corpus rows

    @torch.no_grad()
    def refresh(self, module: torch.nn.Module) -> None:
        """Re-mine each anchor's student top ``count`` at every size of ``mined_dims``."""
        if not self.mined_dims or self.count <= 0:
            return
        was_training = module.training
        module.eval()
        corpus = adapt_all(module, self.corpus)
        anchors = torch.cat([module(a) for a in self.anchors.split(65_536)])
        module.train(was_training)
        found = search_topk_prefixes(
            anchors,
            corpus,
            self.mined_dims,
            min(self.count, self.corpus.shape[0]),
            device=self.corpus.device,
            exclude=self_exclusions(self.anchor_rows),
        )
        rows = np.concatenate([found[d][1] for d in self.mined_dims], axis=1)
        self.mined = torch.from_numpy(rows).to(self.corpus.device)

    def candidates(
        self, batch: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, teacher, valid = super().candidates(batch, generator)
        if self.mined is None:
            return rows, teacher, valid
        mined = self.mined[batch]  # (B, M); -1 pads
        # a row once: not a candidate yet (seen), nor mined in an earlier column
        seen = rows.masked_fill(~valid, -2)
        known = (mined.unsqueeze(2) == seen.unsqueeze(1)).any(2)
        earlier = torch.ones(mined.shape[1], mined.shape[1], dtype=torch.bool, device=mined.device)
        repeated = ((mined.unsqueeze(2) == mined.unsqueeze(1)) & earlier.tril(-1)).any(2)
        mined_valid = (mined >= 0) & ~known & ~repeated
        safe = mined.clamp_min(0)
        mined_teacher = (self.anchors[batch].unsqueeze(1) * self.corpus[safe]).sum(-1)
        return (
            torch.cat([rows, safe], dim=1),
            torch.cat([teacher, torch.where(mined_valid, mined_teacher, 0.0)], dim=1),
            torch.cat([valid, mined_valid], dim=1),
        )
