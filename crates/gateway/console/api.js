// The console API client. The token travels only in the Authorization header, on plain calls and
// on event streams alike: streams are read with fetch (EventSource cannot send a header, and a
// token in a URL ends up in logs and browser history).

/** A refused or failed call: HTTP status and the API's stable error code. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  /** The token itself was refused: the user must sign in again. */
  get signedOut() {
    return this.status === 401 || this.status === 403;
  }
}

async function failure(res) {
  let body;
  try { body = await res.json(); } catch { body = undefined; }
  const code = body?.error?.code ?? `http_${res.status}`;
  const message = body?.error?.message ?? `${res.status} ${res.statusText}`;
  return new ApiError(res.status, code, message);
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.token}`, Accept: 'application/json', ...extra };
  }

  async get(path) {
    const res = await fetch(path, { headers: this.headers(), cache: 'no-store' });
    if (!res.ok) throw await failure(res);
    return res.json();
  }

  async post(path, body) {
    const res = await fetch(path, {
      method: 'POST',
      headers: this.headers({ 'Content-Type': 'application/json' }),
      body: JSON.stringify(body),
      cache: 'no-store',
    });
    if (!res.ok) throw await failure(res);
    return res.json();
  }

  /**
   * Reads the event stream at `path`, calling `onEvent(name, data)` per event (data parsed as
   * JSON), until the stream ends or `signal` aborts. Resolves when it ends; rejects with an
   * ApiError when the call is refused, or with the network error.
   */
  async stream(path, onEvent, signal) {
    const res = await fetch(path, {
      headers: this.headers({ Accept: 'text/event-stream' }),
      cache: 'no-store',
      signal,
    });
    if (!res.ok) throw await failure(res);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new EventParser(onEvent);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
  }
}

/**
 * Incremental text/event-stream parser (the subset the gateway sends: `event:`, `data:`,
 * comments). Exported for tests.
 */
export class EventParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.afterCR = false;
    this.event = '';
    this.data = [];
  }

  push(chunk) {
    this.buffer += chunk;
    // A CR may be the first half of a CRLF split across chunks: its LF is not a second line end.
    if (this.afterCR && this.buffer.startsWith('\n')) this.buffer = this.buffer.slice(1);
    this.afterCR = false;
    let nl;
    while ((nl = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, nl);
      const sep = this.buffer.startsWith('\r\n', nl) ? 2 : 1;
      this.afterCR = sep === 1 && this.buffer[nl] === '\r' && nl + 1 === this.buffer.length;
      this.buffer = this.buffer.slice(nl + sep);
      this.line(line);
    }
  }

  line(line) {
    if (line === '') {
      if (this.data.length) {
        let data;
        try { data = JSON.parse(this.data.join('\n')); } catch { data = this.data.join('\n'); }
        this.onEvent(this.event || 'message', data);
      }
      this.event = '';
      this.data = [];
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data.push(value);
  }
}
