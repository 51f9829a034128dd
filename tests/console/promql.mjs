// The metric names a PromQL expression reads, and the Grafana variables a dashboard expression
// uses. Syntax is promtool's job (the expressions are also checked with `promtool check rules`);
// this only has to find the selectors of expressions promtool accepts.

// One token per match: whitespace, a string, a number or duration, an identifier, an operator.
const TOKEN = /\s+|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`|0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*|[a-zA-Z_:][a-zA-Z0-9_:]*|=~|!~|!=|==|>=|<=|[-+*/%^(){}[\],=<>@]/y;

const KEYWORDS = new Set([
  'and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring', 'group_left',
  'group_right', 'inf', 'nan', 'atan2',
]);
/** Aggregations, which may be followed by `by (...)` / `without (...)` before their `(`. */
const AGGREGATIONS = new Set([
  'sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk',
  'topk', 'quantile', 'limitk', 'limit_ratio',
]);
/** Keywords whose parenthesised list names labels, not metrics. */
const LABEL_LISTS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);

export function tokenize(expr) {
  const out = [];
  TOKEN.lastIndex = 0;
  while (TOKEN.lastIndex < expr.length) {
    const at = TOKEN.lastIndex;
    const m = TOKEN.exec(expr);
    if (!m) throw new Error(`cannot tokenize ${JSON.stringify(expr)} at ${at}: ${JSON.stringify(expr.slice(at, at + 20))}`);
    if (!/^\s+$/.test(m[0])) out.push(m[0]);
  }
  return out;
}

const isIdent = (t) => /^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(t);
const unquote = (t) => JSON.parse(t.startsWith("'") ? `"${t.slice(1, -1).replace(/"/g, '\\"')}"` : t.startsWith('`') ? JSON.stringify(t.slice(1, -1)) : t);

/** The metric names `expr` selects, sorted and distinct. */
export function metricNames(expr) {
  const tokens = tokenize(expr);
  const names = new Set();
  for (let i = 0; i < tokens.length; i += 1) {
    const t = tokens[i];
    if (t === '{') {
      // Label matchers: only `__name__="x"` names a metric.
      let j = i + 1;
      for (; j < tokens.length && tokens[j] !== '}'; j += 1) {
        if (tokens[j] === '__name__' && tokens[j + 1] === '=' && /^["'`]/.test(tokens[j + 2] ?? '')) {
          names.add(unquote(tokens[j + 2]));
        }
      }
      i = j;
    } else if (t === '[') {
      while (i < tokens.length && tokens[i] !== ']') i += 1;
    } else if (LABEL_LISTS.has(t) && tokens[i + 1] === '(') {
      while (i < tokens.length && tokens[i] !== ')') i += 1;
    } else if (AGGREGATIONS.has(t) && ['(', 'by', 'without'].includes(tokens[i + 1])) {
      // An aggregation, not a metric.
    } else if (isIdent(t) && !KEYWORDS.has(t.toLowerCase()) && tokens[i + 1] !== '(') {
      names.add(t);
    }
  }
  return [...names].sort();
}

/** Grafana's built-in interval variables, and what stands in for them when checking. */
export const GRAFANA_INTERVALS = { __rate_interval: '5m', __interval: '1m', __range: '1h' };

/** `$name` and `${name}` variables used in `expr`. */
export function variablesOf(expr) {
  return [...expr.matchAll(/\$(?:\{(\w+)(?::\w+)?\}|(\w+))/g)].map((m) => m[1] ?? m[2]);
}

/** `expr` with Grafana variables replaced so Prometheus can parse it: intervals by durations,
 * every other variable (used in regex matchers) by `.*`. */
export function substituteVariables(expr) {
  return expr.replace(/\$(?:\{(\w+)(?::\w+)?\}|(\w+))/g, (whole, a, b) => {
    const name = a ?? b;
    return GRAFANA_INTERVALS[name] ?? '.*';
  });
}

/** Histogram series names map to their family. */
export function familyOf(name) {
  return name.replace(/_(bucket|sum|count)$/, '');
}
