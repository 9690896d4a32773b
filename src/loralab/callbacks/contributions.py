"""What a callback adds to summary.json: the declared protocol RunSummary reads."""

from __future__ import annotations


class SummaryContributor:
    """A callback whose figures go into summary.json. RunSummary collects `summary_fields()` from
    every callback that is one, in callback order (a later one's key wins)."""

    def summary_fields(self) -> dict:
        raise NotImplementedError
