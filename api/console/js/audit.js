// The account's audit log (admin role): the latest lines, filtered in the page by action, actor
// and target.
import { api } from './api.js';
import { h, fill, field, table, progress } from './dom.js';

export async function renderAudit(page) {
  const { main, query } = page;
  const limit = Number(query.get('limit') ?? 500);
  const lines = await progress('Loading the audit log', () => api('GET', '/audit', { query: { limit } }));
  const actions = [...new Set(lines.map((l) => l.action))].sort();
  const action = h('select', { name: 'action' }, h('option', { value: '', text: 'any' }), actions.map((a) => h('option', { value: a, text: a })));
  action.value = query.get('action') ?? '';
  const text = h('input', { type: 'search', name: 'text', autocomplete: 'off' });
  text.value = query.get('q') ?? '';
  const out = h('div', {});
  const count = h('p', { role: 'status', class: 'muted' });
  const draw = () => {
    const q = text.value.trim().toLowerCase();
    const shown = lines.filter((l) => (!action.value || l.action === action.value)
      && (!q || `${l.actor} ${l.target} ${l.action}`.toLowerCase().includes(q)));
    count.textContent = `${shown.length} of the latest ${lines.length} lines`;
    fill(out, shown.length
      ? table('Audit log', ['When', 'Action', 'Target', 'Actor (API token id)'], shown.map((l) => h('tr', {},
        h('td', { text: new Date(l.at).toLocaleString() }),
        h('td', {}, h('code', { text: l.action })),
        h('td', { class: 'mono', text: l.target }),
        h('td', { class: 'mono', text: l.actor }))))
      : h('p', { class: 'muted', text: 'No line matches.' }));
  };
  action.addEventListener('change', draw);
  text.addEventListener('input', draw);
  const form = h('form', { class: 'row', role: 'search', 'aria-label': 'Filter the audit log' },
    field('Action', action), field('Actor or target contains', text));
  form.addEventListener('submit', (ev) => { ev.preventDefault(); draw(); });
  fill(main, h('h1', { text: 'Audit log' }), form, count, out);
  draw();
}
