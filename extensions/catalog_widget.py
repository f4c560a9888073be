"""CatalogQuery: the ipywidgets + bokeh view of :class:`CatalogQueryModel`."""

from __future__ import annotations

import html
import os
from typing import Any

import ipywidgets as w

from .catalog_query import EXAMPLES, CatalogQueryModel


def _table_html(table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.colnames)
    rows = []
    for row in table:
        cells = "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row)
        rows.append(f"<tr>{cells}</tr>")
    return (
        "<div style='max-height:360px;overflow:auto'><table class='desilab-result'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _cell(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


#: ipywidgets has no font trait for a Textarea: a class on the widget and one CSS rule.
EDITOR_CSS = (
    "<style>.desilab-sql textarea {font-family: var(--jp-code-font-family, monospace);"
    " font-size: var(--jp-code-font-size, 13px);}</style>"
)


class CatalogQuery(w.VBox):
    """SQL editor, schema browser, examples, Run/Cancel, paged results, plots.

    ``CatalogQuery()`` connects with the user's own role (DESILAB_DATABASE_URL).
    The last result is ``.result`` (an astropy Table; ``.result.to_pandas()``).
    """

    def __init__(self, catalog: Any = None, **model_kwargs: Any):
        if catalog is None:
            from ..desi import Catalog

            dsn = os.environ.get("DESILAB_DATABASE_URL")
            if not dsn:
                raise RuntimeError(
                    "no database: DESILAB_DATABASE_URL is not set "
                    "(open this notebook in a desilab server)"
                )
            catalog = Catalog(dsn)
        self.model = CatalogQueryModel(catalog, **model_kwargs)
        self.editor = w.Textarea(
            value=next(iter(EXAMPLES.values())),
            layout=w.Layout(width="100%", height="140px"),
        )
        self.editor.add_class("desilab-sql")
        self.examples = w.Dropdown(options=["examples…", *EXAMPLES], value="examples…")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = w.Button(description="Cancel", icon="stop", disabled=True)
        self.limits = w.HTML(
            f"<small>row cap {self.model.limit:,} · "
            f"timeout {html.escape(self.model.timeout)}</small>"
        )
        self.status = w.HTML()
        self.results = w.HTML()
        self.prev_page = w.Button(description="◀", layout=w.Layout(width="40px"))
        self.next_page = w.Button(description="▶", layout=w.Layout(width="40px"))
        self.page_label = w.Label()
        self.x_column = w.Dropdown(description="x")
        self.y_column = w.Dropdown(description="y")
        self.hist_button = w.Button(description="Histogram of x")
        self.scatter_button = w.Button(description="Scatter y vs x")
        self.plot_area = w.Output()
        self.schema_tables = w.Select(rows=8, layout=w.Layout(width="30%"))
        self.schema_columns = w.HTML(layout=w.Layout(width="70%"))
        self.history = w.Select(rows=6, layout=w.Layout(width="100%"))
        self._schema: dict = {}
        tabs = w.Tab(
            [
                w.VBox(
                    [
                        self.results,
                        w.HBox([self.prev_page, self.page_label, self.next_page]),
                        w.HBox(
                            [self.x_column, self.y_column, self.hist_button, self.scatter_button]
                        ),
                        self.plot_area,
                    ]
                ),
                w.HBox([self.schema_tables, self.schema_columns]),
                self.history,
            ]
        )
        for i, title in enumerate(("Results", "Schema", "History")):
            tabs.set_title(i, title)
        super().__init__(
            [
                w.HTML(EDITOR_CSS),
                w.HBox([self.examples, self.run_button, self.cancel_button, self.limits]),
                self.editor,
                self.status,
                tabs,
            ]
        )
        self.examples.observe(self._pick_example, "value")
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button.on_click(lambda _: self.model.cancel())
        self.prev_page.on_click(lambda _: self._page(-1))
        self.next_page.on_click(lambda _: self._page(+1))
        self.hist_button.on_click(lambda _: self._plot("hist"))
        self.scatter_button.on_click(lambda _: self._plot("scatter"))
        self.schema_tables.observe(self._show_columns, "value")
        self.history.observe(self._recall, "value")
        self._load_schema()
        self._load_history()

    @property
    def result(self):
        return self.model.result

    def run(self, sql: str | None = None):
        """Run the editor's SQL (or ``sql``) without blocking the kernel."""
        if sql is not None:
            self.editor.value = sql
        if self.model.running:
            self._say("a query is already running: wait for it or press Cancel", error=True)
            return None
        # before the query starts: a fast one finishes (and says so) before run() returns
        self.run_button.disabled, self.cancel_button.disabled = True, False
        self._say("running…")
        try:
            return self.model.run(self.editor.value, on_done=lambda _: self._finished())
        except (RuntimeError, ValueError) as e:
            self.run_button.disabled, self.cancel_button.disabled = False, True
            self._say(str(e), error=True)
            return None

    def _finished(self) -> None:
        self.run_button.disabled, self.cancel_button.disabled = False, True
        m = self.model
        self._say(m.summary(), error=m.error is not None)
        if m.result is not None:
            cols = m.numeric_columns()
            self.x_column.options = cols
            self.y_column.options = cols
            if len(cols) > 1:
                self.y_column.value = cols[1]
            self._render_page()
        else:
            self.results.value = ""
        self._load_history()

    def _render_page(self) -> None:
        m = self.model
        self.results.value = _table_html(m.current_page())
        self.page_label.value = f"page {m.page + 1} of {m.pages}"

    def _page(self, step: int) -> None:
        if self.model.result is None:
            return
        self.model.go_page(self.model.page + step)
        self._render_page()

    def _plot(self, kind: str) -> None:
        try:
            if kind == "hist":
                fig = self.model.histogram(self.x_column.value)
            else:
                fig = self.model.scatter(self.x_column.value, self.y_column.value)
        except Exception as e:
            self._say(str(e), error=True)
            return
        from jupyter_bokeh import BokehModel

        self.plot_area.clear_output()
        with self.plot_area:
            from IPython.display import display

            from .spectrum_widget import ensure_bokehjs

            ensure_bokehjs()
            display(BokehModel(fig))

    def _say(self, text: str, error: bool = False) -> None:
        colour = "#a94442" if error else "#31708f"
        self.status.value = (
            f"<pre style='color:{colour};white-space:pre-wrap;margin:0'>{html.escape(text)}</pre>"
        )

    def _pick_example(self, change) -> None:
        if change["new"] in EXAMPLES:
            self.editor.value = EXAMPLES[change["new"]]

    def _load_schema(self) -> None:
        try:
            self._schema = self.model.schema()
        except Exception as e:
            self._say(f"could not read the schema: {e}", error=True)
            return
        self.schema_tables.options = list(self._schema)

    def _show_columns(self, change) -> None:
        cols = self._schema.get(change["new"], [])
        rows = "".join(
            f"<tr><td><code>{html.escape(n)}</code></td><td>{html.escape(t)}</td>"
            f"<td>{html.escape(d)}</td></tr>"
            for n, t, d in cols
        )
        header = "<tr><th>column</th><th>type</th><th>unit and description</th></tr>"
        self.schema_columns.value = f"<table>{header}{rows}</table>"

    def _load_history(self) -> None:
        entries = self.model.history.entries()[:50]
        self._history = {f"{e['when'][:19]}  {e['sql'][:80]!r}": e["sql"] for e in entries}
        self.history.options = list(self._history)

    def _recall(self, change) -> None:
        if change["new"] in self._history:
            self.editor.value = self._history[change["new"]]
