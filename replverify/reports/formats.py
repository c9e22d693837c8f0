"""The registry of renderers: every report kind's ``--format`` choices (text, JSON,
Markdown, HTML). It sits above the per-kind renderers and the HTML page, which never
import it, so the renderers import one another in one direction only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from replverify.reports.diff import diff_to_dict, diff_to_markdown, diff_to_text
from replverify.reports.formatting import PLAIN, Marks, to_json
from replverify.reports.lag import lag_to_dict, lag_to_markdown, lag_to_text
from replverify.reports.ops import (
    failback_to_dict,
    failback_to_markdown,
    failback_to_text,
    files_to_dict,
    files_to_markdown,
    files_to_text,
    gate_to_dict,
    gate_to_markdown,
    gate_to_text,
    health_to_dict,
    health_to_markdown,
    health_to_text,
)
from replverify.reports.pages import (
    diff_to_html,
    failback_to_html,
    files_to_html,
    gate_to_html,
    health_to_html,
    lag_to_html,
    reconcile_to_html,
)
from replverify.reports.reconcile import reconcile_to_dict, reconcile_to_markdown, reconcile_to_text

R = TypeVar("R")


class Renderers(dict[str, Callable[[R], str]]):
    """The ``--format`` choices of one report kind: text, JSON of ``as_dict``, Markdown,
    and a self-contained HTML page (:mod:`replverify.reports.html`); ``marked`` is the
    text with its verdicts marked by their tone (the CLI's colour on a terminal)."""

    def __init__(
        self,
        text: Callable[[R, Marks], str],
        as_dict: Callable[[R], dict[str, Any]],
        markdown: Callable[[R], str],
        html: Callable[[R], str],
    ) -> None:
        super().__init__(
            text=lambda r: text(r, PLAIN),
            json=lambda r: to_json(as_dict(r)),
            markdown=markdown,
            html=html,
        )
        self.marked = text


DIFF_RENDERERS = Renderers(diff_to_text, diff_to_dict, diff_to_markdown, diff_to_html)
LAG_RENDERERS = Renderers(lag_to_text, lag_to_dict, lag_to_markdown, lag_to_html)
RECONCILE_RENDERERS = Renderers(
    reconcile_to_text, reconcile_to_dict, reconcile_to_markdown, reconcile_to_html
)
GATE_RENDERERS = Renderers(gate_to_text, gate_to_dict, gate_to_markdown, gate_to_html)
FAILBACK_RENDERERS = Renderers(
    failback_to_text, failback_to_dict, failback_to_markdown, failback_to_html
)
HEALTH_RENDERERS = Renderers(health_to_text, health_to_dict, health_to_markdown, health_to_html)
FILES_RENDERERS = Renderers(files_to_text, files_to_dict, files_to_markdown, files_to_html)
