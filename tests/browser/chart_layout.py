"""What a reader sees of a drawn Plotly chart, measured in the browser: text cut at the chart's edge and text
printed over other text. Shared by the browser tests of the dashboard's pages and of the chart specifications.

`LAYOUT_PROBLEMS_JS` runs in a page and returns, for every Plotly graph div, the problems found in its drawn SVG:
  * "cut": a title (chart, axis, colour bar), a tick label or the legend reaches past the chart's edge
    (the SVG clips it: "Perplexity on news against parameters remov");
  * "overlap": the legend's box crosses an axis title, a tick label or the chart title, or an axis title crosses
    its axis's tick labels (an axis title printed over the legend's entries).
The boxes are the browser's own (getBoundingClientRect of the SVG text), so this is what is on the screen.
"""

from __future__ import annotations

LAYOUT_PROBLEMS_JS = r"""
(selector) => {
  const within = (inner, outer, slack) => inner.left >= outer.left - slack && inner.right <= outer.right + slack &&
      inner.top >= outer.top - slack && inner.bottom <= outer.bottom + slack;
  const cross = (a, b, slack) => a.left < b.right - slack && b.left < a.right - slack &&
      a.top < b.bottom - slack && b.top < a.bottom - slack;
  const boxes = (root, css) => Array.from(root.querySelectorAll(css))
      .filter(el => (el.textContent || '').trim() !== '' || el.tagName !== 'text')
      .map(el => ({el, box: el.getBoundingClientRect(), text: (el.textContent || '').trim()}))
      .filter(b => b.box.width > 0 && b.box.height > 0);
  const found = [];
  document.querySelectorAll(selector || '.js-plotly-plot').forEach((gd, index) => {
    const svg = gd.querySelector('.main-svg');
    if (!svg) return;
    const frame = svg.getBoundingClientRect();
    const name = (gd.layout && gd.layout.title && gd.layout.title.text) || `chart ${index}`;
    const title = boxes(gd, '.g-gtitle text');
    const axisTitles = boxes(gd, '[class^="g-x"][class$="title"] text, [class^="g-y"][class$="title"] text');
    const ticks = boxes(gd, '.xtick text, .ytick text, .x2tick text, .y2tick text');
    const colorbarTitles = boxes(gd, '.cbtitle text');
    const legend = boxes(gd, '.legend .bg');
    for (const item of [...title, ...axisTitles, ...ticks, ...colorbarTitles, ...legend]) {
      if (!within(item.box, frame, 1)) found.push({chart: name, problem: 'cut', what: item.text || 'legend'});
    }
    for (const box of legend) {
      for (const other of [...title, ...axisTitles, ...ticks]) {
        if (cross(box.box, other.box, 1)) found.push({chart: name, problem: 'overlap', what: `legend over ${other.text}`});
      }
    }
    for (const item of axisTitles) {
      for (const tick of ticks) {
        if (cross(item.box, tick.box, 1)) found.push({chart: name, problem: 'overlap', what: `${item.text} over ${tick.text}`});
      }
    }
  });
  return found;
}
"""
