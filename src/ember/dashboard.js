// ember dashboard: draws report() (the numbers of `ember usage --json`) as plain SVG.
// Served, it asks data.json again every few seconds; written with --html, the data is
// in the page. Names of tags and models are set as text, never parsed as markup.
'use strict';

const REFRESH = 3000;  // milliseconds
const SVG = 'http://www.w3.org/2000/svg';  // a namespace name, not an address
const COLOURS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1',
                 '#ff9da7', '#9c755f', '#bab0ac'];
const PLOT = {left: 58, top: 10, width: 420, height: 180};
const seen = {tag: new Set(), model: new Set()};
const usd = v => '$' + (v >= 1 || v === 0 ? v.toFixed(2) : v.toPrecision(3));
const count = v => v.toLocaleString('en-US');
const seconds = v => v.toFixed(v >= 10 ? 1 : 3) + ' s';

function html(tag, parent, text, attrs = {}) {
  const node = parent.appendChild(document.createElement(tag));
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function svg(tag, parent, attrs = {}, text) {
  const node = parent.appendChild(document.createElementNS(SVG, tag));
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function clear(id) {
  const node = document.getElementById(id);
  node.replaceChildren();
  return node;
}

function colour(model) {
  return COLOURS[[...seen.model].sort().indexOf(model) % COLOURS.length];
}

function totals(data) {
  const t = data.totals, box = clear('totals');
  const stats = [
    ['calls', count(t.calls), t.calls],
    [`tokens: ${count(t.input_tokens)} in, ${count(t.output_tokens)} out`,
     count(t.input_tokens + t.output_tokens), t.input_tokens + t.output_tokens],
    ['cost', usd(t.cost), t.cost],
    ['saved by the cache', usd(t.saved), t.saved],
    ['errors', count(t.errors), t.errors],
    ['retries', count(t.retries), t.retries],
    ['429s', count(t.rate_limited), t.rate_limited],
    ['waited on pacing', seconds(t.waited), t.waited],
  ];
  for (const [label, shown, value] of stats) {
    const stat = html('div', box, undefined, {class: 'stat', 'data-value': value});
    html('b', stat, shown);
    html('span', stat, label);
  }
}

// The y axis: three grid lines, labelled; the x axis: every label that fits.
function axes(chart, max, format, labels, step) {
  for (const part of [0, 0.5, 1]) {
    const y = PLOT.top + PLOT.height * (1 - part);
    svg('line', chart, {x1: PLOT.left, x2: PLOT.left + PLOT.width, y1: y, y2: y});
    svg('text', chart, {x: PLOT.left - 6, y: y + 4, 'text-anchor': 'end'}, format(max * part));
  }
  const every = Math.ceil(labels.length / 8);
  labels.forEach((label, i) => {
    if (i % every) return;
    svg('text', chart, {x: PLOT.left + (i + 0.5) * step, y: PLOT.top + PLOT.height + 18,
                        'text-anchor': 'middle'}, label.slice(5));
  });
}

function costChart(data) {
  const chart = clear('cost'), legend = clear('legend');
  const times = data.by_time.map(row => row.time);
  const step = PLOT.width / Math.max(times.length, 1);
  const max = Math.max(...data.by_time.map(row => row.cost), 0) || 1;
  axes(chart, max, v => '$' + (v >= 1 || v === 0 ? v.toFixed(2) : v.toPrecision(2)), times, step);
  const stacked = {};
  for (const row of data.by_time_and_model) {
    const height = row.cost / max * PLOT.height, below = stacked[row.time] || 0;
    stacked[row.time] = below + height;
    const bar = svg('rect', chart, {
      class: 'bar', x: PLOT.left + (times.indexOf(row.time) + 0.15) * step, width: step * 0.7,
      y: PLOT.top + PLOT.height - below - height, height: height, fill: colour(row.model),
      'data-model': row.model, 'data-time': row.time, 'data-value': row.cost});
    svg('title', bar, {}, `${row.time} ${row.model}: ${usd(row.cost)}, ${row.calls} calls`);
  }
  for (const model of new Set(data.by_model.map(row => row.model))) {
    const item = html('span', legend);
    html('i', item, undefined, {class: 'key'}).style.background = colour(model);
    item.append(' ' + model);
  }
}

function callsChart(data) {
  const chart = clear('calls'), rows = data.by_time;
  const step = PLOT.width / Math.max(rows.length, 1);
  const max = Math.max(...rows.map(row => row.calls), 1);
  axes(chart, max, v => String(Math.round(v * 10) / 10), rows.map(row => row.time), step);
  for (const [key, fill] of [['calls', '#2a6fdb'], ['errors', '#d64545']]) {
    const points = rows.map((row, i) => [PLOT.left + (i + 0.5) * step,
                                         PLOT.top + PLOT.height * (1 - row[key] / max)]);
    svg('polyline', chart, {points: points.join(' '), fill: 'none', stroke: fill,
                            'stroke-width': 2});
    points.forEach(([x, y], i) => {
      const point = svg('circle', chart, {class: `point ${key}`, cx: x, cy: y, r: 4,
                                          fill: fill, 'data-value': rows[i][key]});
      svg('title', point, {}, `${rows[i].time}: ${rows[i][key]} ${key}`);
    });
  }
}

function latencyChart(data) {
  const chart = clear('latency'), rows = data.by_model, width = 400;
  const max = Math.max(...rows.map(row => row.p95), 0) || 1;
  chart.setAttribute('viewBox', `0 0 480 ${Math.max(rows.length, 1) * 54 + 4}`);
  rows.forEach((row, i) => {
    svg('text', chart, {x: 0, y: i * 54 + 13}, row.model);
    for (const [j, q, fill] of [[0, 'p50', '#9cc3f0'], [1, 'p95', '#2a6fdb']]) {
      const y = i * 54 + 19 + j * 16, length = row[q] / max * width;
      const bar = svg('rect', chart, {class: `bar ${q}`, x: 0, y: y, width: length, height: 14,
                                      fill: fill, 'data-value': row[q]});
      svg('title', bar, {}, `${row.model} ${q}: ${seconds(row[q])}`);
      svg('text', chart, {x: length + 6, y: y + 11}, seconds(row[q]));
    }
  });
}

function tagTable(data) {
  const table = document.getElementById('tags');
  const columns = ['tag', 'calls', 'cached', 'input_tokens', 'output_tokens', 'cost', 'saved',
                   'errors', 'retries', 'rate_limited', 'waited'];
  const head = html('tr', clear('tags').appendChild(document.createElement('thead')));
  const names = {input_tokens: 'tokens in', output_tokens: 'tokens out', rate_limited: '429s'};
  for (const column of columns) html('th', head, names[column] || column);
  const body = table.appendChild(document.createElement('tbody'));
  for (const row of data.by_tag) {
    const line = html('tr', body);
    for (const column of columns) {
      const value = row[column];
      const shown = ['cost', 'saved'].includes(column) ? usd(value)
        : column === 'waited' ? seconds(value) : typeof value === 'number' ? count(value) : value;
      html('td', line, shown);
    }
  }
}

// Every tag and model seen so far stays a choice, whatever the filter shows now.
function choices(data) {
  for (const name of ['tag', 'model']) {
    const select = document.getElementById(name);
    data[`by_${name}`].forEach(row => seen[name].add(row[name]));
    const chosen = data[name] || '';
    select.replaceChildren();
    html('option', select, 'all', {value: ''});
    for (const value of [...seen[name]].sort()) html('option', select, value, {value: value});
    select.value = chosen;
  }
}

function draw(data) {
  choices(data);
  const filters = ['tag', 'model'].filter(name => data[name]).map(name => `${name} ${data[name]}`);
  document.getElementById('window').textContent =
    [`last ${data.since}, by ${data.bucket}`, ...filters].join(' · ');
  totals(data);
  costChart(data);
  callsChart(data);
  latencyChart(data);
  tagTable(data);
}

async function refresh() {
  const query = new URLSearchParams(location.search);
  try {
    const answer = await fetch('data.json?' + query);
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    draw(await answer.json());
    document.getElementById('status').textContent =
      'live, updated ' + new Date().toLocaleTimeString();
  } catch (error) {
    document.getElementById('status').textContent = `not updated: ${error.message}`;
  }
}

function start() {
  const embedded = document.getElementById('data').textContent;
  if (embedded) {
    const data = JSON.parse(embedded);
    draw(data);
    for (const name of ['tag', 'model']) document.getElementById(name).disabled = true;
    document.getElementById('status').textContent = 'a snapshot: ember dashboard --html';
    return;
  }
  for (const name of ['tag', 'model']) {
    document.getElementById(name).addEventListener('change', event => {
      const query = new URLSearchParams(location.search);
      if (event.target.value) query.set(name, event.target.value); else query.delete(name);
      history.replaceState(null, '', '?' + query);
      refresh();
    });
  }
  refresh();
  setInterval(refresh, REFRESH);
}

start();
