// DOM helpers for the console. Every piece of text reaches the page through text nodes or
// textContent, never through an HTML parser: chat lines, user names and channel names are user
// content. (The page's Content-Security-Policy also requires Trusted Types with no policy, so an
// HTML sink would throw rather than render.)

/**
 * Creates an element. `props`: className, text, title, dataset, on (event listeners), attrs,
 * and any other key as an attribute (`type`, `scope`, ...; never an `on...` handler).
 * Children: nodes, or anything else, which becomes a text node.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  const { className, text, title, attrs, dataset, on, ...rest } = props;
  if (className) el.className = className;
  if (text !== undefined && text !== null) el.textContent = String(text);
  if (title !== undefined && title !== null) el.title = String(title);
  for (const [k, v] of Object.entries({ ...rest, ...attrs })) {
    if (/^on/i.test(k)) throw new Error(`h(): refusing the inline handler attribute ${k}`);
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const [k, v] of Object.entries(dataset ?? {})) el.dataset[k] = String(v);
  for (const [k, fn] of Object.entries(on ?? {})) el.addEventListener(k, fn);
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const $ = (id) => document.getElementById(id);

export function show(el, visible = true) {
  el.hidden = !visible;
}

const ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: '\u00a0' };

/**
 * Decodes the character references the gateway's HTML sanitizer writes (`&lt;`, `&amp;`,
 * `&#39;`, ...) so a chat line reads as its author typed it. Pure: the result is only ever
 * shown as text.
 */
export function decodeEntities(s) {
  return String(s).replace(/&(#x[0-9a-fA-F]{1,6}|#[0-9]{1,7}|[a-zA-Z]{2,6});/g, (whole, ref) => {
    if (ref[0] === '#') {
      const code = ref[1] === 'x' || ref[1] === 'X' ? parseInt(ref.slice(2), 16) : parseInt(ref.slice(1), 10);
      return code > 0 && code <= 0x10ffff && !(code >= 0xd800 && code <= 0xdfff) ? String.fromCodePoint(code) : whole;
    }
    return Object.hasOwn(ENTITIES, ref) ? ENTITIES[ref] : whole;
  });
}

/** `3 d 4 h`, `12 min`, `40 s`. */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** HH:MM:SS in the browser's time zone. */
export function formatTime(ms) {
  const d = new Date(Number(ms) || Date.now());
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

export function formatCount(n) {
  return Number(n || 0).toLocaleString('en-US');
}
