// A small line chart drawn as SVG (no library): the latest value in text, the series as a line,
// and a text alternative for screen readers.
import { h } from './dom.js';

const NS = 'http://www.w3.org/2000/svg';
const W = 300;
const H = 90;
const PAD = 4;

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** Rounds for display: whole numbers stay whole, rates get one or two decimals. */
export function format(v) {
  if (!Number.isFinite(v)) return '—';
  if (Number.isInteger(v)) return String(v);
  return v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** A card with `title`, the latest value and a line over `data` (`[{at, value}]`, oldest first). */
export function lineChart({ title, unit, data }) {
  const values = data.map((d) => d.value);
  const latest = values.at(-1);
  const max = Math.max(1, ...values);
  const span = data.length > 1 ? data.at(-1).at - data[0].at : 0;
  const summary = data.length
    ? `${title}: ${format(latest)}${unit} now, at most ${format(Math.max(...values))}${unit} over the last ${Math.round(span / 1000)} s`
    : `${title}: no figures yet`;
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': summary, preserveAspectRatio: 'none' });
  chart.append(svg('rect', { x: 0, y: 0, width: W, height: H, fill: '#f9fafb', stroke: '#d1d5db' }));
  for (const f of [0.5]) {
    chart.append(svg('line', { x1: 0, x2: W, y1: H * f, y2: H * f, stroke: '#e5e7eb' }));
  }
  if (data.length > 1) {
    const t0 = data[0].at;
    const x = (d) => PAD + ((d.at - t0) / span) * (W - 2 * PAD);
    const y = (v) => H - PAD - (v / max) * (H - 2 * PAD);
    const points = data.map((d) => `${x(d).toFixed(1)},${y(d.value).toFixed(1)}`).join(' ');
    chart.append(svg('polyline', { points, fill: 'none', stroke: '#1d4ed8', 'stroke-width': 2, 'vector-effect': 'non-scaling-stroke' }));
  }
  return h('section', { class: 'card chart', 'aria-label': title },
    h('h3', { text: title }),
    h('p', { class: 'value' }, data.length ? `${format(latest)}${unit}` : '—'),
    chart,
    h('p', { class: 'hint', text: `scale 0 to ${format(max)}${unit}` }));
}
