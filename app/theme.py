"""PruneScope's look: the Plotly template applied to every chart and the CSS injected into every page.

Colours and fonts come from `pruning_core.outputs.figures` (the single source of the palette, shared with the
report), so a chart looks the same in the dashboard and in the exported report. The Streamlit-wide theme
(primary colour, font, toolbar) lives in `.streamlit/config.toml`; keep `PRIMARY_COLOR` in step with it.
"""

from __future__ import annotations

from pruning_core.outputs.figures import (
    BASE_FONT_SIZE,
    COLORWAY,
    FONT_FAMILY,
    HOVER_FONT_SIZE,
    PALETTE,
    SEQUENTIAL_COLORSCALE,
    TITLE_FONT_SIZE,
)

#: Same as `theme.primaryColor` in .streamlit/config.toml (Okabe-Ito blue).
PRIMARY_COLOR = PALETTE["blue"]
TEXT_COLOR = "#262730"

#: A Plotly template as a plain dict (``plotly.graph_objects.layout.Template`` accepts it as is).
#: Figures from `pruning_core.outputs.figures` already set most of this; the template covers anything a page
#: builds by hand and keeps defaults (fonts, colourway, grid) consistent.
PLOTLY_TEMPLATE: dict = {
    "layout": {
        "font": {"family": FONT_FAMILY, "size": BASE_FONT_SIZE, "color": TEXT_COLOR},
        "title": {"font": {"size": TITLE_FONT_SIZE}, "x": 0.0, "xanchor": "left"},
        "colorway": list(COLORWAY),
        "colorscale": {"sequential": SEQUENTIAL_COLORSCALE},
        "paper_bgcolor": "#FFFFFF",
        "plot_bgcolor": "#FFFFFF",
        "hoverlabel": {"font": {"family": FONT_FAMILY, "size": HOVER_FONT_SIZE}, "align": "left"},
        "xaxis": {"gridcolor": "#E5E5E5", "linecolor": "#888888", "showline": True, "ticks": "outside",
                  "zeroline": False, "automargin": True},
        "yaxis": {"gridcolor": "#E5E5E5", "linecolor": "#888888", "showline": True, "ticks": "outside",
                  "zeroline": False, "automargin": True},
        "legend": {"font": {"size": BASE_FONT_SIZE - 1}},
    }
}

#: CSS injected once per page run by `app/main.py` (``st.markdown(CSS, unsafe_allow_html=True)``).
#: Only layout polish; colours and fonts come from the Streamlit theme.
CSS = f"""
<style>
  /* A little more room for wide charts, a little less empty space above the title. */
  .block-container {{ padding-top: 2.2rem; padding-bottom: 3rem; max-width: 1400px; }}
  h1 {{ letter-spacing: -0.01em; }}
  /* Cards used for short explanations on the home and summary pages. */
  /* A multiselect's chosen values wrap onto more lines: Streamlit keeps them on one scrolled line, which cut the
     first tag off at the left edge ("agnitude" for "magnitude") as soon as they did not fit. */
  [data-testid="stMultiSelect"] [data-testid="stMultiSelectTagsContainer"] {{
    flex-wrap: wrap; overflow-x: visible; height: auto; row-gap: 4px; align-content: center;
  }}
  [data-testid="stMultiSelect"] .react-aria-ComboBox [role="group"] {{ height: auto; max-height: none; }}
  .ps-card {{
    border: 1px solid #E3E6EA; border-radius: 0.6rem; padding: 1rem 1.2rem; height: 100%;
    background: #FFFFFF; box-shadow: 0 1px 2px rgba(0, 0, 0, 0.04);
  }}
  .ps-card h4 {{ margin: 0 0 0.35rem 0; color: {PRIMARY_COLOR}; font-size: 1.1rem; }}
  .ps-card p {{ margin: 0; color: #4A4F57; font-size: 0.98rem; line-height: 1.45; }}
  .ps-step {{ margin: 0; padding-bottom: 0.6rem; color: #4A4F57; font-size: 0.98rem; line-height: 1.45; }}
  .ps-lead {{ font-size: 1.2rem; color: #3A3F47; line-height: 1.5; max-width: 60rem; }}
  .ps-muted {{ color: #6B7079; font-size: 0.92rem; }}
  .ps-pill {{
    display: inline-block; padding: 0.1rem 0.6rem; border-radius: 999px; font-size: 0.85rem;
    background: #E8F1F8; color: {PRIMARY_COLOR}; font-weight: 600;
  }}
</style>
"""


def card_html(title: str, body: str) -> str:
    """A small bordered explanation card (title + one paragraph); both strings are trusted app text."""
    return f'<div class="ps-card"><h4>{title}</h4><p>{body}</p></div>'


def inject_css() -> None:
    """Add the PruneScope CSS to the current page (called by `app/main.py` on every run)."""
    import streamlit as st  # local: the rest of this module is importable without a Streamlit session

    st.html(CSS)
