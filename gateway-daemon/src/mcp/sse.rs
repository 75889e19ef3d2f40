//! Incremental parser for `text/event-stream` (Server-Sent Events), as the gateway reads it
//! chunk by chunk while passing it on.
//!
//! Interpretation follows the WHATWG HTML "server-sent events" algorithm: lines end with
//! CRLF, LF or a lone CR; a UTF-8 BOM at the very start of the stream is skipped; `:` starts
//! a comment; a blank line ends a block, which dispatches an event when it had a `data`
//! field. Every item keeps its exact bytes, so concatenating the `raw` of all items (and the
//! [`SseItem::Incomplete`] tail from [`SseParser::finish`]) reproduces the stream byte for
//! byte, and the items do not depend on how the stream was split into chunks.
//!
//! The stream must be valid UTF-8 (the spec's authoring requirement): every complete line is
//! checked, comments and unknown fields included, so the gateway never interprets bytes that
//! a client would decode differently.
//!
//! One consequence of chunk independence: a block whose blank line ends with a CR that is the
//! last byte received so far is complete, but its `raw` can only be fixed once the next byte
//! shows whether an LF (the second half of a CRLF) follows. The parser holds such a block
//! until then: the next [`SseParser::feed`] returns it first, [`SseParser::finish`] returns
//! it at end of stream, and [`SseParser::take_held`] returns it at once for a caller that
//! would rather not wait (see there).

use std::mem;

/// The UTF-8 byte order mark, skipped at the very start of a stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` field of this event if it had one (None if absent). An `id` containing NUL is
    /// ignored per spec. With several valid `id` fields the last one counts.
    pub id: Option<String>,
    /// `event:` field (None when absent, meaning the default type "message"). An `event`
    /// field with an empty value gives `Some("")`, which also means "message".
    pub event: Option<String>,
    /// The data lines joined with "\n" (no trailing newline), per the WHATWG algorithm.
    pub data: String,
    /// `retry:` value in ms if present and all ASCII digits (and fitting in a u64).
    pub retry: Option<u64>,
    /// The exact bytes of this event in the stream, from its first line up to and including
    /// the blank line that ended it (including any comment lines and unknown fields inside
    /// it). Concatenating `raw` of all events plus the bytes of "non-event" blocks must
    /// reproduce the stream.
    pub raw: Vec<u8>,
}

impl SseEvent {
    /// The event type as a client sees it: the `event` field, or "message" when it is absent
    /// or empty.
    pub fn event_type(&self) -> &str {
        match self.event.as_deref() {
            None | Some("") => "message",
            Some(t) => t,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("SSE event exceeds {limit} bytes without ending")]
    EventTooLarge { limit: usize },
    #[error("SSE stream is not valid UTF-8 at byte {offset}")]
    InvalidUtf8 { offset: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A block ending in a blank line that dispatches an event (it had at least one `data`
    /// field).
    Event(SseEvent),
    /// A block ending in a blank line that dispatches nothing: only comments
    /// (`: keep-alive`), or only id/retry/event fields without data, or a lone blank line.
    /// Carries its raw bytes (so the stream can be reproduced byte for byte), and the
    /// id/retry if it set them.
    Other {
        raw: Vec<u8>,
        id: Option<String>,
        retry: Option<u64>,
    },
    /// Only from `finish()`: bytes after the last blank line.
    Incomplete(Vec<u8>),
}

impl SseItem {
    /// The bytes of the stream this item stands for.
    pub fn raw(&self) -> &[u8] {
        match self {
            SseItem::Event(e) => &e.raw,
            SseItem::Other { raw, .. } | SseItem::Incomplete(raw) => raw,
        }
    }

    /// The bytes of the stream this item stands for, by value.
    pub fn into_raw(self) -> Vec<u8> {
        match self {
            SseItem::Event(e) => e.raw,
            SseItem::Other { raw, .. } | SseItem::Incomplete(raw) => raw,
        }
    }

    fn raw_mut(&mut self) -> &mut Vec<u8> {
        match self {
            SseItem::Event(e) => &mut e.raw,
            SseItem::Other { raw, .. } | SseItem::Incomplete(raw) => raw,
        }
    }
}

/// What the lines of the current block have set so far.
#[derive(Debug, Default)]
struct Block {
    data: String,
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
}

impl Block {
    /// Interprets one line (without its line ending); `offset` is the stream offset of its
    /// first byte. Returns whether it was blank (the end of the block).
    fn line(&mut self, line: &[u8], offset: u64) -> Result<bool, SseError> {
        if line.is_empty() {
            return Ok(true);
        }
        let line = std::str::from_utf8(line).map_err(|e| SseError::InvalidUtf8 {
            offset: offset + e.valid_up_to() as u64,
        })?;
        if line.starts_with(':') {
            return Ok(false);
        }
        // memchr, not `split_once`: a char searcher is built per line otherwise. A colon is
        // one byte, so cutting there leaves both halves valid UTF-8.
        let (name, value) = match memchr::memchr(b':', line.as_bytes()) {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (line, ""),
        };
        match name {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" if value.bytes().all(|b| b.is_ascii_digit()) => {
                // Empty, or too many digits for a u64: ignored like any other invalid value.
                if let Ok(ms) = value.parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
        Ok(false)
    }
}

/// Incremental SSE parser: feed it the chunks of a stream as they arrive.
///
/// Bytes are scanned once: a partial line left at the end of a chunk is kept and only the
/// new bytes are searched for its end. Blocks that lie entirely inside one chunk are copied
/// once (into their `raw`); only a block cut by a chunk boundary is buffered, and never more
/// than `max_event_bytes` of it.
#[derive(Debug)]
pub struct SseParser {
    /// Bound on the raw bytes of one block.
    limit: usize,
    /// Raw bytes of the current, unfinished block received in earlier chunks.
    buf: Vec<u8>,
    /// Where the current line starts, as an index into the current block's bytes (`buf`
    /// followed by the part of the chunk not yet copied there).
    line_start: usize,
    /// Stream offset of the current block's first byte.
    block_offset: u64,
    /// The last byte received was a CR ending a line: an LF next is part of that line ending.
    after_cr: bool,
    /// Nothing scanned yet: the stream may still turn out to start with a BOM (`buf` holds a
    /// proper prefix of it).
    bom_pending: bool,
    /// A complete block whose blank line ended with the last byte received, a CR (see the
    /// module documentation).
    held: Option<SseItem>,
    block: Block,
    last_event_id: Option<String>,
    offset: u64,
    /// Set by the first error; every later `feed` returns it again.
    failed: Option<SseError>,
    /// After an error: the bytes of earlier chunks that no returned item carried.
    unreturned: Vec<u8>,
}

impl SseParser {
    /// `max_event_bytes`: bound on the bytes buffered for one not-yet-finished event (memory
    /// bound against a hostile server). Every block, including its line endings and
    /// comments, must fit in it: a longer one is [`SseError::EventTooLarge`], however it was
    /// split into chunks.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            limit: max_event_bytes,
            buf: Vec::new(),
            line_start: 0,
            block_offset: 0,
            after_cr: false,
            bom_pending: true,
            held: None,
            block: Block::default(),
            last_event_id: None,
            offset: 0,
            failed: None,
            unreturned: Vec::new(),
        }
    }

    /// Feed the next chunk; returns the items completed by it, in order.
    ///
    /// # Errors
    ///
    /// [`SseError::EventTooLarge`] when a block grows past `max_event_bytes`, and
    /// [`SseError::InvalidUtf8`] when a line is not valid UTF-8. After an error the parser is spent: this and every later call return that error, the
    /// items completed earlier in the failing chunk are not returned (their bytes are in the
    /// chunk), and [`SseParser::take_unreturned`] gives the bytes of earlier chunks that no
    /// item carried.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseItem>, SseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let held_len = self.held.as_ref().map(|h| h.raw().len());
        let carried_len = self.buf.len();
        let mut items = Vec::new();
        match self.feed_inner(chunk, &mut items) {
            Ok(()) => Ok(items),
            Err(e) => {
                // Bytes of earlier chunks not yet returned: the held block, then the prefix of
                // the block that was unfinished when this chunk came. Each is either still
                // here or at the front of the first item(s) completed by this chunk.
                let mut unreturned = Vec::new();
                let mut done = items.into_iter();
                if let Some(n) = held_len {
                    let raw = match self.held.take() {
                        Some(h) => h.into_raw(),
                        None => done.next().map(SseItem::into_raw).unwrap_or_default(),
                    };
                    unreturned.extend_from_slice(&raw[..n.min(raw.len())]);
                }
                if carried_len > 0 {
                    let raw = match done.next() {
                        Some(item) => item.into_raw(),
                        None => mem::take(&mut self.buf),
                    };
                    unreturned.extend_from_slice(&raw[..carried_len.min(raw.len())]);
                }
                self.unreturned = unreturned;
                self.buf = Vec::new();
                self.held = None;
                self.block = Block::default();
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge { limit: self.limit }
    }

    fn feed_inner(&mut self, chunk: &[u8], items: &mut Vec<SseItem>) -> Result<(), SseError> {
        let len = chunk.len();
        if len == 0 {
            return Ok(());
        }
        let base = self.offset;
        self.offset += len as u64;
        // Next byte to scan (always the start of a line, or of the rest of the buffered one).
        let mut i = 0;
        // `chunk[blk..]` belongs to the current block and is not in `buf`: the current block's
        // bytes are `buf` followed by `chunk[blk..]`.
        let mut blk = 0;

        if self.bom_pending {
            let have = self.buf.len();
            let n = (BOM.len() - have).min(len);
            let matched = chunk[..n]
                .iter()
                .zip(&BOM[have..])
                .take_while(|(a, b)| a == b)
                .count();
            if have + matched == BOM.len() {
                self.bom_pending = false;
                self.line_start = BOM.len();
                i = matched;
            } else if matched < n {
                // Not a BOM: its first bytes (if any, in `buf`) start the first line.
                self.bom_pending = false;
            } else {
                // Still a proper prefix of a BOM: keep it and wait.
                i = len;
            }
        }

        if self.after_cr {
            self.after_cr = false;
            let lf = chunk[0] == b'\n';
            if lf {
                i = 1;
            }
            if let Some(held_len) = self.held.as_ref().map(|h| h.raw().len()) {
                if lf && held_len >= self.limit {
                    return Err(self.too_large());
                }
                if let Some(mut held) = self.held.take() {
                    if lf {
                        held.raw_mut().push(b'\n');
                    }
                    items.push(held);
                }
                blk = i;
                self.block_offset = base + i as u64;
            } else if lf {
                // The LF completes the CRLF that ended the previous line of this block.
                self.line_start += 1;
            }
        }

        while i < len {
            // Bytes of the current block before `chunk[i]`, and what the rest of it may take.
            let before = self.buf.len() + (i - blk);
            let room = self.limit.saturating_sub(before);
            let end = if len - i > room { i + room } else { len };
            let Some(rel) = memchr::memchr2(b'\n', b'\r', &chunk[i..end]) else {
                if end < len {
                    return Err(self.too_large());
                }
                break;
            };
            let eol = i + rel;
            // Index just past the line ending, and whether it is a CR that ends the chunk.
            let (next, cr_at_end) = if chunk[eol] == b'\n' {
                (eol + 1, false)
            } else if eol + 1 == len {
                (len, true)
            } else if chunk[eol + 1] == b'\n' {
                (eol + 2, false)
            } else {
                (eol + 1, false)
            };

            let blank = if self.line_start < self.buf.len() {
                // The line began in an earlier chunk: complete it in `buf`.
                self.extend_buf(&chunk[blk..eol]);
                blk = eol;
                let offset = self.block_offset + self.line_start as u64;
                self.block.line(&self.buf[self.line_start..], offset)?
            } else {
                self.block.line(&chunk[i..eol], base + i as u64)?
            };

            if blank {
                if self.buf.len() + (next - blk) > self.limit {
                    return Err(self.too_large());
                }
                let raw = if self.buf.is_empty() {
                    chunk[blk..next].to_vec()
                } else {
                    self.extend_buf(&chunk[blk..next]);
                    mem::take(&mut self.buf)
                };
                let item = self.dispatch(raw);
                if cr_at_end {
                    self.held = Some(item);
                    self.after_cr = true;
                } else {
                    items.push(item);
                }
                blk = next;
                self.line_start = 0;
                self.block_offset = base + next as u64;
            } else {
                self.after_cr = cr_at_end;
                self.line_start = self.buf.len() + (next - blk);
            }
            i = next;
        }

        let tail = &chunk[blk..];
        if !tail.is_empty() {
            if self.buf.len() + tail.len() > self.limit {
                return Err(self.too_large());
            }
            self.extend_buf(tail);
        }
        Ok(())
    }

    /// Appends to `buf`, growing it geometrically but never past the limit (when the bytes fit
    /// in it), so a block near the limit does not cost twice the limit in memory.
    fn extend_buf(&mut self, bytes: &[u8]) {
        let need = self.buf.len() + bytes.len();
        if need > self.buf.capacity() {
            let target = need
                .max(self.buf.capacity().saturating_mul(2))
                .max(64)
                .min(self.limit.max(need));
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Ends the current block (its blank line has been read) and makes its item.
    fn dispatch(&mut self, raw: Vec<u8>) -> SseItem {
        let block = mem::take(&mut self.block);
        if let Some(id) = &block.id {
            self.last_event_id = Some(id.clone());
        }
        if block.has_data {
            SseItem::Event(SseEvent {
                id: block.id,
                event: block.event,
                data: block.data,
                retry: block.retry,
                raw,
            })
        } else {
            SseItem::Other {
                raw,
                id: block.id,
                retry: block.retry,
            }
        }
    }

    /// End of stream: returns the unfinished tail, if any, as `SseItem::Incomplete(raw
    /// bytes)` (per spec an unterminated event is NOT dispatched, but the bytes must still be
    /// forwardable).
    ///
    /// If the stream ended with a lone CR that completed a block (see
    /// [`SseParser::take_held`]), that block is complete and is returned as what it is, an
    /// `Event` or `Other`, not as `Incomplete`. After an error, returns None. The parser may
    /// be fed again afterwards; it goes on as after a blank line.
    pub fn finish(&mut self) -> Option<SseItem> {
        if self.failed.is_some() {
            return None;
        }
        self.after_cr = false;
        self.bom_pending = false;
        self.block = Block::default();
        self.line_start = 0;
        self.block_offset = self.offset;
        if let Some(held) = self.held.take() {
            return Some(held);
        }
        if self.buf.is_empty() {
            None
        } else {
            Some(SseItem::Incomplete(mem::take(&mut self.buf)))
        }
    }

    /// Whether a complete block is being held because its blank line ended with a CR that
    /// was the last byte received (the next byte may be the LF of a CRLF, which belongs to
    /// its `raw`).
    pub fn has_held(&self) -> bool {
        self.held.is_some()
    }

    /// Returns the held block (see [`SseParser::has_held`]) now instead of with the next
    /// byte. For a stream that ends its lines with a lone CR and then pauses: its last event
    /// is otherwise returned only when more bytes (or the end of the stream) come.
    ///
    /// The price: if an LF then follows, it still counts as part of that CRLF line ending
    /// (no extra blank line is seen), but it is carried at the front of the next item's
    /// `raw` (or of the `Incomplete` tail), so that item's `raw` then differs from what an
    /// unsplit stream gives. Concatenated `raw` still reproduces the stream.
    pub fn take_held(&mut self) -> Option<SseItem> {
        self.held.take()
    }

    /// After [`SseParser::feed`] returned an error: the bytes of the chunks fed before the
    /// failing one that no returned item carried (the unfinished block, or the held one).
    /// A caller that falls back to passing the stream through unparsed forwards these, then
    /// the failing chunk. Returns them once; empty otherwise.
    /// Bytes held for the block not yet complete (its raw bytes and its data so far).
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.block.data.len()
    }

    pub fn take_unreturned(&mut self) -> Vec<u8> {
        mem::take(&mut self.unreturned)
    }

    /// Bytes fed that no returned item carries yet: the unfinished block and the held one.
    /// Never more than about `max_event_bytes`.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() + self.held.as_ref().map_or(0, |h| h.raw().len())
    }

    /// Last event ID seen so far (the spec's "last event ID buffer"; an event with an `id:`
    /// field sets it even if the event has no data).
    ///
    /// It is updated when a block ends (as a client's `lastEventId` is), so an `id` in a block
    /// that never ends does not count. `Some("")` means the server reset it with an empty
    /// `id`.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Total bytes consumed.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Serialises an event to wire form (`id:`, `event:`, `retry:` then one `data:` line per line
/// of data, then a blank line, all LF line endings). Used after a later stage rewrites
/// `data`.
///
/// SSE cannot carry a CR inside a value: in `data`, CRLF and a lone CR are written as line
/// breaks (as LF is); from `id` and `event`, CR and LF are dropped so they cannot inject
/// fields. So `parse(encode(e))` gives back `e` for every event the parser produces, and
/// otherwise `e` with those normalisations. An `id` containing NUL is written as is (a
/// client ignores it, as the parser does).
pub fn encode(event: &SseEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.data.len() + 64);
    if let Some(id) = &event.id {
        push_field(&mut out, "id", id);
    }
    if let Some(event_type) = &event.event {
        push_field(&mut out, "event", event_type);
    }
    if let Some(retry) = event.retry {
        push_field(&mut out, "retry", &retry.to_string());
    }
    let mut rest = event.data.as_str();
    while let Some(k) = rest.find(['\r', '\n']) {
        push_field(&mut out, "data", &rest[..k]);
        let skip = if rest[k..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[k + skip..];
    }
    push_field(&mut out, "data", rest);
    out.push(b'\n');
    out
}

/// Writes `name: value\n` (`name:\n` for an empty value), leaving out any CR or LF.
fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    if !value.is_empty() {
        out.push(b' ');
        for part in value.split(['\r', '\n']) {
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BIG: usize = 1 << 20;

    /// Feeds `chunks` in turn, then finishes; all items, or the first error.
    fn run<C: AsRef<[u8]>>(chunks: &[C], limit: usize) -> Result<Vec<SseItem>, SseError> {
        let mut p = SseParser::new(limit);
        let mut items = Vec::new();
        for c in chunks {
            items.extend(p.feed(c.as_ref())?);
        }
        items.extend(p.finish());
        Ok(items)
    }

    fn whole(input: &[u8]) -> Vec<SseItem> {
        run(&[input], BIG).expect("valid stream")
    }

    /// Splits `input` at the given (unsorted, possibly repeated) positions.
    fn split_at<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for c in cuts {
            chunks.push(&input[from..c]);
            from = c;
        }
        chunks.push(&input[from..]);
        chunks
    }

    fn concat_raw(items: &[SseItem]) -> Vec<u8> {
        items.iter().flat_map(|i| i.raw().iter().copied()).collect()
    }

    fn event(
        id: Option<&str>,
        event: Option<&str>,
        data: &str,
        retry: Option<u64>,
        raw: &[u8],
    ) -> SseItem {
        SseItem::Event(SseEvent {
            id: id.map(str::to_owned),
            event: event.map(str::to_owned),
            data: data.to_owned(),
            retry,
            raw: raw.to_vec(),
        })
    }

    fn other(raw: &[u8], id: Option<&str>, retry: Option<u64>) -> SseItem {
        SseItem::Other {
            raw: raw.to_vec(),
            id: id.map(str::to_owned),
            retry,
        }
    }

    fn only_event(input: &[u8]) -> SseEvent {
        match whole(input).as_slice() {
            [SseItem::Event(e)] => e.clone(),
            items => panic!("expected one event, got {items:?}"),
        }
    }

    #[test]
    fn single_event() {
        let input = b"event: update\nid: 42\nretry: 1500\ndata: hello\n\n";
        let mut p = SseParser::new(BIG);
        let items = p.feed(input).unwrap();
        assert_eq!(
            items,
            vec![event(
                Some("42"),
                Some("update"),
                "hello",
                Some(1500),
                input
            )]
        );
        assert_eq!(p.last_event_id(), Some("42"));
        assert_eq!(p.offset(), input.len() as u64);
        assert_eq!(p.buffered_len(), 0);
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn multiple_events_in_one_chunk() {
        let input = b"data: one\n\n: keep-alive\n\nevent: x\ndata: two\n\n\ndata: three\n\n";
        assert_eq!(
            whole(input),
            vec![
                event(None, None, "one", None, b"data: one\n\n"),
                other(b": keep-alive\n\n", None, None),
                event(None, Some("x"), "two", None, b"event: x\ndata: two\n\n"),
                other(b"\n", None, None),
                event(None, None, "three", None, b"data: three\n\n"),
            ]
        );
    }

    /// A stream with most features, lines ending every way.
    const SAMPLE: &[u8] = b"\xEF\xBB\xBF: hi\r\nid: 1\revent: a\ndata: x\r\ndata:  y\r\r\n\
        retry: 30\n\ndata: \xC3\xA9\xE2\x82\xAC\r\n\r\nid: 2\r\rdata\n: c\nfoo: bar\n\rdata: tail";

    #[test]
    fn split_at_every_position() {
        let expected = whole(SAMPLE);
        assert_eq!(concat_raw(&expected), SAMPLE);
        assert_eq!(
            expected,
            vec![
                event(
                    Some("1"),
                    Some("a"),
                    "x\n y",
                    None,
                    b"\xEF\xBB\xBF: hi\r\nid: 1\revent: a\ndata: x\r\ndata:  y\r\r\n"
                ),
                other(b"retry: 30\n\n", None, Some(30)),
                event(
                    None,
                    None,
                    "\u{e9}\u{20ac}",
                    None,
                    b"data: \xC3\xA9\xE2\x82\xAC\r\n\r\n"
                ),
                other(b"id: 2\r\r", Some("2"), None),
                event(None, None, "", None, b"data\n: c\nfoo: bar\n\r"),
                SseItem::Incomplete(b"data: tail".to_vec()),
            ]
        );
        for a in 0..=SAMPLE.len() {
            assert_eq!(
                run(&split_at(SAMPLE, &[a]), BIG).unwrap(),
                expected,
                "split at {a}"
            );
            for b in a..=SAMPLE.len() {
                assert_eq!(
                    run(&split_at(SAMPLE, &[a, b]), BIG).unwrap(),
                    expected,
                    "split at {a} and {b}"
                );
            }
        }
        let bytes: Vec<&[u8]> = SAMPLE.chunks(1).collect();
        assert_eq!(run(&bytes, BIG).unwrap(), expected);
    }

    #[test]
    fn line_endings() {
        for eol in ["\n", "\r\n", "\r"] {
            let input = format!("id: 5{eol}event: e{eol}data: a{eol}data: b{eol}{eol}");
            assert_eq!(
                whole(input.as_bytes()),
                vec![event(Some("5"), Some("e"), "a\nb", None, input.as_bytes())],
                "line ending {eol:?}"
            );
        }
        let mixed = b"data: a\rdata: b\r\ndata: c\ndata: d\r\r\n";
        assert_eq!(
            whole(mixed),
            vec![event(None, None, "a\nb\nc\nd", None, mixed)]
        );
        // LF then CR is two line endings: here a line, then a blank line.
        assert_eq!(
            whole(b"data: a\n\r"),
            vec![event(None, None, "a", None, b"data: a\n\r")]
        );
    }

    #[test]
    fn cr_at_chunk_end_then_lf() {
        // CR ending a field line, LF in the next chunk: one line ending, no blank line.
        let mut p = SseParser::new(BIG);
        assert_eq!(p.feed(b"data: a\r").unwrap(), vec![]);
        assert_eq!(p.feed(b"\ndata: b\r").unwrap(), vec![]);
        assert_eq!(p.feed(b"\n\r").unwrap(), vec![]);
        // The blank line's CR ended the chunk: held until the next byte is seen.
        assert!(p.has_held());
        assert_eq!(
            p.feed(b"\n").unwrap(),
            vec![event(
                None,
                None,
                "a\nb",
                None,
                b"data: a\r\ndata: b\r\n\r\n"
            )]
        );
        assert!(!p.has_held());
        assert_eq!(p.finish(), None);

        // A blank line then an LF-ended blank line: two blocks (CR, then LF).
        let mut p = SseParser::new(BIG);
        assert_eq!(p.feed(b"data: a\n\r").unwrap(), vec![]);
        assert_eq!(
            p.feed(b"\r\n").unwrap(),
            vec![
                event(None, None, "a", None, b"data: a\n\r"),
                other(b"\r\n", None, None)
            ]
        );
    }

    #[test]
    fn held_block_with_lone_cr() {
        let mut p = SseParser::new(BIG);
        assert_eq!(p.feed(b"data: a\r\r").unwrap(), vec![]);
        assert_eq!(p.buffered_len(), 9);
        // The next byte is not an LF: the held block comes out first.
        assert_eq!(
            p.feed(b"data: b\r\r").unwrap(),
            vec![event(None, None, "a", None, b"data: a\r\r")]
        );
        // End of stream: the held block is complete, not Incomplete.
        assert_eq!(
            p.finish(),
            Some(event(None, None, "b", None, b"data: b\r\r"))
        );

        // take_held gives it at once; a later LF still is no blank line.
        let mut p = SseParser::new(BIG);
        assert_eq!(p.feed(b"data: a\r\r").unwrap(), vec![]);
        assert_eq!(
            p.take_held(),
            Some(event(None, None, "a", None, b"data: a\r\r"))
        );
        assert_eq!(p.take_held(), None);
        assert_eq!(
            p.feed(b"\ndata: b\r\n\r\n").unwrap(),
            vec![event(None, None, "b", None, b"\ndata: b\r\n\r\n")]
        );
        let mut p = SseParser::new(BIG);
        p.feed(b"data: a\r\r").unwrap();
        p.take_held().unwrap();
        assert_eq!(p.feed(b"\n").unwrap(), vec![]);
        assert_eq!(p.finish(), Some(SseItem::Incomplete(b"\n".to_vec())));
    }

    #[test]
    fn comments() {
        assert_eq!(
            whole(b": keep-alive\n\n:\n\n"),
            vec![
                other(b": keep-alive\n\n", None, None),
                other(b":\n\n", None, None)
            ]
        );
        let input = b": before\ndata: x\n:data: not data\ndata: y\n: after\n\n";
        assert_eq!(whole(input), vec![event(None, None, "x\ny", None, input)]);
    }

    #[test]
    fn multi_line_data() {
        assert_eq!(only_event(b"data: a\ndata:\ndata: b\n\n").data, "a\n\nb");
        assert_eq!(only_event(b"data: a\ndata: \n\n").data, "a\n");
        assert_eq!(only_event(b"data:\n\n").data, "");
        assert_eq!(only_event(b"data:\ndata:\n\n").data, "\n");
        assert_eq!(
            only_event(b"data: {\"a\":\n data\ndata: 1}\n\n").data,
            "{\"a\":\n1}"
        );
    }

    #[test]
    fn one_leading_space_removed() {
        assert_eq!(only_event(b"data:x\n\n").data, "x");
        assert_eq!(only_event(b"data: x\n\n").data, "x");
        assert_eq!(only_event(b"data:  x\n\n").data, " x");
        assert_eq!(only_event(b"data:\tx \n\n").data, "\tx ");
        assert_eq!(only_event(b"data: a: b\n\n").data, "a: b");
        assert_eq!(
            only_event(b"event:  t\ndata\n\n").event.as_deref(),
            Some(" t")
        );
    }

    #[test]
    fn field_without_colon() {
        let e = only_event(b"data\n\n");
        assert_eq!(e.data, "");
        let e = only_event(b"event\nid\ndata\ndata\n\n");
        assert_eq!((e.event.as_deref(), e.id.as_deref()), (Some(""), Some("")));
        assert_eq!(e.event_type(), "message");
        assert_eq!(e.data, "\n");
        // Unknown fields, with or without a colon, are ignored but kept in raw.
        let input = b"foo\nbar: baz\nDATA: no\ndata : no\ndata: yes\n\n";
        assert_eq!(whole(input), vec![event(None, None, "yes", None, input)]);
        assert_eq!(whole(b"retry\n\n"), vec![other(b"retry\n\n", None, None)]);
    }

    #[test]
    fn id_with_nul_ignored() {
        let mut p = SseParser::new(BIG);
        let items = p
            .feed(b"id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\nid: 3\nid: \0\ndata: c\n\n")
            .unwrap();
        let ids: Vec<_> = items
            .iter()
            .map(|i| match i {
                SseItem::Event(e) => e.id.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![Some("1".into()), None, Some("3".into())]);
        assert_eq!(p.last_event_id(), Some("3"));
        let mut p = SseParser::new(BIG);
        p.feed(b"id: 1\n\nid: a\0\n\n").unwrap();
        assert_eq!(p.last_event_id(), Some("1"));
    }

    #[test]
    fn retry_needs_ascii_digits() {
        for (value, expected) in [
            ("1000", Some(1000)),
            ("0", Some(0)),
            ("007", Some(7)),
            ("10a0", None),
            ("-1", None),
            ("+5", None),
            ("1.5", None),
            (" 5", None), // two spaces: one is removed, one is not a digit
            ("", None),
            ("\u{0663}", None), // a non-ASCII digit
            ("99999999999999999999999", None),
        ] {
            let input = format!("retry: {value}\ndata: x\n\n");
            assert_eq!(only_event(input.as_bytes()).retry, expected, "{value:?}");
        }
        // The last valid one counts.
        assert_eq!(
            only_event(b"retry: 5\nretry: x\nretry: 7\nretry: y\ndata\n\n").retry,
            Some(7)
        );
    }

    #[test]
    fn block_with_only_id_dispatches_nothing() {
        let mut p = SseParser::new(BIG);
        assert_eq!(p.last_event_id(), None);
        assert_eq!(
            p.feed(b"id: 7\nevent: ignored\n\n").unwrap(),
            vec![other(b"id: 7\nevent: ignored\n\n", Some("7"), None)]
        );
        assert_eq!(p.last_event_id(), Some("7"));
        // An id in a block still open does not count yet.
        assert_eq!(p.feed(b"id: 8\n").unwrap(), vec![]);
        assert_eq!(p.last_event_id(), Some("7"));
        // The event type of a block without data does not carry over.
        assert_eq!(
            p.feed(b"data: x\n\n").unwrap(),
            vec![event(Some("8"), None, "x", None, b"id: 8\ndata: x\n\n")]
        );
        assert_eq!(
            p.feed(b"data: y\n\nid\n\n").unwrap(),
            vec![
                event(None, None, "y", None, b"data: y\n\n"),
                other(b"id\n\n", Some(""), None)
            ]
        );
        assert_eq!(p.last_event_id(), Some(""));
    }

    #[test]
    fn bom() {
        let input = b"\xEF\xBB\xBFdata: x\n\n";
        assert_eq!(whole(input), vec![event(None, None, "x", None, input)]);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                assert_eq!(
                    run(&split_at(input, &[a, b]), BIG).unwrap(),
                    vec![event(None, None, "x", None, input)]
                );
            }
        }
        // Only at the very start: later it is part of a field name.
        let input = b"data: a\n\n\xEF\xBB\xBFdata: b\n\n";
        assert_eq!(
            whole(input),
            vec![
                event(None, None, "a", None, b"data: a\n\n"),
                other(b"\xEF\xBB\xBFdata: b\n\n", None, None)
            ]
        );
        // Only one is skipped.
        assert_eq!(
            whole(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: b\n\n"),
            vec![other(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: b\n\n", None, None)]
        );
        assert_eq!(
            whole(b"\xEF\xBB\xBF\n"),
            vec![other(b"\xEF\xBB\xBF\n", None, None)]
        );
        assert_eq!(
            run(&[b"\xEF", b"\xBB", b"\xBF"], BIG).unwrap(),
            vec![SseItem::Incomplete(b"\xEF\xBB\xBF".to_vec())]
        );
        assert_eq!(
            run(&[b"\xEF\xBB"], BIG).unwrap(),
            vec![SseItem::Incomplete(b"\xEF\xBB".to_vec())]
        );
        // A BOM prefix that is not a BOM is invalid UTF-8, wherever the chunks split.
        for chunks in [vec![&b"\xEF\xBBx\n"[..]], vec![b"\xEF", b"\xBB", b"x\n"]] {
            assert_eq!(run(&chunks, BIG), Err(SseError::InvalidUtf8 { offset: 0 }));
        }
    }

    #[test]
    fn unterminated_tail_at_finish() {
        let mut p = SseParser::new(BIG);
        assert_eq!(
            p.feed(b"data: a\n\ndata: b\nid: 9\n").unwrap(),
            vec![event(None, None, "a", None, b"data: a\n\n")]
        );
        assert_eq!(p.buffered_len(), 14);
        assert_eq!(
            p.finish(),
            Some(SseItem::Incomplete(b"data: b\nid: 9\n".to_vec()))
        );
        // Not dispatched, so its id does not count.
        assert_eq!(p.last_event_id(), None);
        assert_eq!(p.finish(), None);

        assert_eq!(
            run(&[&b"data: a\n\nda"[..], b"ta: b"], BIG).unwrap(),
            vec![
                event(None, None, "a", None, b"data: a\n\n"),
                SseItem::Incomplete(b"data: b".to_vec())
            ]
        );
        assert_eq!(
            run(&[b"data: a\r"], BIG).unwrap(),
            vec![SseItem::Incomplete(b"data: a\r".to_vec())]
        );
        assert_eq!(run::<&[u8]>(&[], BIG).unwrap(), vec![]);
        assert_eq!(run(&[b"", b""], BIG).unwrap(), vec![]);
    }

    #[test]
    fn event_too_large_keeps_memory_bounded() {
        // Not a power of two, so that plain doubling of the buffer would overshoot.
        const LIMIT: usize = 60_000;
        const CHUNK: usize = 4096;
        const TOTAL: usize = 10 * 1024 * 1024;
        let lines: Vec<u8> = b"data: 0123456789abcdef0123456789abcdef\n"
            .iter()
            .copied()
            .cycle()
            .take(CHUNK)
            .collect();
        let no_eol = vec![b'x'; CHUNK];
        for chunk in [&lines, &no_eol] {
            let mut p = SseParser::new(LIMIT);
            let mut fed = 0;
            let err = loop {
                assert!(fed < TOTAL, "no error after {fed} bytes");
                match p.feed(chunk) {
                    Ok(items) => {
                        assert_eq!(items, vec![]);
                        fed += chunk.len();
                        assert!(p.buffered_len() <= LIMIT);
                        assert!(p.buf.capacity() <= LIMIT + CHUNK);
                        assert!(p.block.data.len() <= LIMIT);
                    }
                    Err(e) => break e,
                }
            };
            assert_eq!(err, SseError::EventTooLarge { limit: LIMIT });
            assert!(
                fed <= LIMIT && fed + CHUNK > LIMIT,
                "error after {fed} bytes"
            );
            assert_eq!(p.buf.capacity(), 0);
            // Spent: the same error again.
            assert_eq!(p.feed(b"\n\n"), Err(err));
            assert_eq!(p.finish(), None);
        }

        // One huge chunk: nothing of it is buffered.
        let huge = vec![b'x'; TOTAL];
        let mut p = SseParser::new(LIMIT);
        assert_eq!(p.feed(&huge), Err(SseError::EventTooLarge { limit: LIMIT }));
        assert_eq!(p.buf.capacity(), 0);

        // The limit is on the whole block, line endings included, however it is split.
        let input = b"data: 12345\n\n"; // 13 bytes
        assert!(run(&[input], 13).is_ok());
        assert_eq!(
            run(&[input], 12),
            Err(SseError::EventTooLarge { limit: 12 })
        );
        let crlf = b"data: 1234\r\n\r\n"; // 14 bytes
        for limit in [13, 14] {
            let expected = run(&[crlf], limit);
            assert_eq!(expected.is_ok(), limit == 14);
            for a in 0..=crlf.len() {
                assert_eq!(run(&split_at(crlf, &[a]), limit), expected, "split at {a}");
            }
        }
        // A partial block whose last line ended (CRLF) exactly at the end of the chunk.
        assert_eq!(
            run(&[b"data: 12\r\n"], 9),
            Err(SseError::EventTooLarge { limit: 9 })
        );
        assert!(run(&[b"data: 12\r\n"], 10).is_ok());
        // A BOM prefix, waiting for the rest.
        assert_eq!(
            run(&[b"\xEF\xBB"], 1),
            Err(SseError::EventTooLarge { limit: 1 })
        );
        assert_eq!(
            run(&[b"data: x\n\n"], 0),
            Err(SseError::EventTooLarge { limit: 0 })
        );
        assert_eq!(run(&[b""], 0), Ok(vec![]));
    }

    #[test]
    fn invalid_utf8() {
        let input = b"data: ok\n\ndata: caf\xC3\xA9 \xFF\n\n";
        let expected = Err(SseError::InvalidUtf8 { offset: 22 });
        for a in 0..=input.len() {
            assert_eq!(run(&split_at(input, &[a]), BIG), expected, "split at {a}");
        }
        // In comments and unknown fields too.
        assert_eq!(
            run(&[b"data: a\n\n: \xC0\n"], BIG),
            Err(SseError::InvalidUtf8 { offset: 11 })
        );
        assert_eq!(
            run(&[b"x\xE2\x82: y\n"], BIG),
            Err(SseError::InvalidUtf8 { offset: 1 })
        );
        // A character split across chunks is fine.
        let euro = "data: \u{20ac}\n\n".as_bytes();
        for a in 0..=euro.len() {
            assert_eq!(
                run(&split_at(euro, &[a]), BIG).unwrap(),
                vec![event(None, None, "\u{20ac}", None, euro)]
            );
        }
        assert_eq!(
            SseError::InvalidUtf8 { offset: 22 }.to_string(),
            "SSE stream is not valid UTF-8 at byte 22"
        );
    }

    #[test]
    fn unreturned_bytes_after_an_error() {
        // The unfinished block from earlier chunks.
        let mut p = SseParser::new(BIG);
        assert_eq!(p.take_unreturned(), Vec::<u8>::new());
        p.feed(b"data: a\n\ndata: par").unwrap();
        let err = p.feed(b"tial\ndata: \xFF\n\n").unwrap_err();
        assert_eq!(err, SseError::InvalidUtf8 { offset: 29 });
        assert_eq!(p.take_unreturned(), b"data: par");
        assert_eq!(p.take_unreturned(), Vec::<u8>::new());
        assert_eq!(p.feed(b"data: b\n\n"), Err(err));
        assert_eq!(p.finish(), None);
        assert_eq!(p.buffered_len(), 0);

        // The held block, even though this chunk completed it.
        let mut p = SseParser::new(BIG);
        p.feed(b"data: a\r\r").unwrap();
        assert!(p.feed(b"\ndata: \xFF\n").is_err());
        assert_eq!(p.take_unreturned(), b"data: a\r\r");

        // The unfinished block, completed in the failing chunk.
        let mut p = SseParser::new(BIG);
        p.feed(b": x\ndata").unwrap();
        assert!(p.feed(b": y\n\n\xFF\n").is_err());
        assert_eq!(p.take_unreturned(), b": x\ndata");

        // Too large: up to the limit was buffered.
        let mut p = SseParser::new(10);
        p.feed(b"data: 1234").unwrap();
        assert_eq!(p.feed(b"5\n\n"), Err(SseError::EventTooLarge { limit: 10 }));
        assert_eq!(p.take_unreturned(), b"data: 1234");
    }

    #[test]
    fn encode_round_trips() {
        let events = [
            SseEvent {
                id: Some("abc-1".into()),
                event: Some("message".into()),
                data: "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}".into(),
                retry: Some(3000),
                raw: vec![],
            },
            SseEvent {
                id: None,
                event: None,
                data: "line 1\nline 2\n\n  indented\n".into(),
                retry: None,
                raw: vec![],
            },
            SseEvent {
                id: Some(String::new()),
                event: Some(" spaced ".into()),
                data: String::new(),
                retry: Some(0),
                raw: vec![],
            },
            SseEvent {
                id: Some(": not a comment".into()),
                event: Some("\u{1F600}".into()),
                data: ":colon\n data: nested\n\u{FEFF}".into(),
                retry: None,
                raw: vec![],
            },
        ];
        for e in events {
            let wire = encode(&e);
            let back = only_event(&wire);
            assert_eq!(back.raw, wire);
            assert_eq!(
                SseEvent {
                    raw: vec![],
                    ..back
                },
                e
            );
        }
        assert_eq!(
            encode(&SseEvent {
                id: Some("7".into()),
                event: Some("e".into()),
                data: "a\nb".into(),
                retry: Some(10),
                raw: vec![],
            }),
            b"id: 7\nevent: e\nretry: 10\ndata: a\ndata: b\n\n"
        );
        assert_eq!(
            encode(&SseEvent {
                id: None,
                event: None,
                data: String::new(),
                retry: None,
                raw: vec![],
            }),
            b"data:\n\n"
        );
        // CR in data becomes a line break; CR/LF cannot inject fields through id or event.
        let e = SseEvent {
            id: Some("1\ndata: injected".into()),
            event: Some("a\r\nretry: 1".into()),
            data: "x\r\ny\rz".into(),
            retry: None,
            raw: vec![],
        };
        let back = only_event(&encode(&e));
        assert_eq!(back.id.as_deref(), Some("1data: injected"));
        assert_eq!(back.event.as_deref(), Some("aretry: 1"));
        assert_eq!(back.data, "x\ny\nz");
        assert_eq!(back.retry, None);
        // Re-encoding a parsed event gives a stream that parses to the same event.
        for item in whole(SAMPLE) {
            if let SseItem::Event(e) = item {
                let again = only_event(&encode(&e));
                assert_eq!(
                    SseEvent {
                        raw: e.raw.clone(),
                        ..again
                    },
                    e
                );
            }
        }
    }

    // ---- property tests ----

    /// One line of a generated stream.
    #[derive(Debug, Clone)]
    enum Line {
        Comment(String),
        /// `name` then, if `colon`, `:` and a space if `space`, then the value.
        Field {
            name: String,
            colon: bool,
            space: bool,
            value: String,
        },
        /// A `data` value that may hold CR and LF: one `data` line per line of it.
        Data {
            space: bool,
            value: String,
        },
    }

    #[derive(Debug, Clone)]
    struct Spec {
        bom: bool,
        /// Blocks: their lines with line endings, and the blank line's ending.
        blocks: Vec<(Vec<(Line, &'static str)>, &'static str)>,
        /// Lines after the last blank line; the last one's ending may be missing.
        tail: Vec<(Line, &'static str)>,
        tail_cut: bool,
    }

    fn eol() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("\n"), Just("\r"), Just("\r\n")]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[^\r\n]{0,10}",
            1 => " [ a:]{0,3}",
            1 => Just("a\0b".to_owned()),
        ]
    }

    fn line() -> impl Strategy<Value = Line> {
        let name = prop_oneof![
            3 => Just("data".to_owned()),
            2 => Just("id".to_owned()),
            2 => Just("event".to_owned()),
            2 => Just("retry".to_owned()),
            1 => "[a-zA-Z]{1,6}",
        ];
        let field_value = prop_oneof![3 => value(), 1 => "[0-9]{1,6}", 1 => "[0-9+-]{0,3}"];
        let data = proptest::collection::vec(
            prop_oneof![
                6 => any::<char>(),
                1 => Just('\n'),
                1 => Just('\r'),
                1 => Just(' '),
            ],
            0..16,
        )
        .prop_map(|cs| cs.into_iter().collect::<String>());
        prop_oneof![
            1 => "[^\r\n]{0,8}".prop_map(Line::Comment),
            3 => (name, any::<bool>(), any::<bool>(), field_value).prop_map(
                |(name, colon, space, value)| Line::Field { name, colon, space, value }
            ),
            3 => (any::<bool>(), data).prop_map(|(space, value)| Line::Data { space, value }),
        ]
    }

    fn spec() -> impl Strategy<Value = Spec> {
        let lines = || proptest::collection::vec((line(), eol()), 0..5);
        (
            any::<bool>(),
            proptest::collection::vec((lines(), eol()), 0..6),
            proptest::collection::vec((line(), eol()), 0..3),
            any::<bool>(),
        )
            .prop_map(|(bom, blocks, tail, tail_cut)| Spec {
                bom,
                blocks,
                tail,
                tail_cut,
            })
    }

    /// Splits at CRLF, CR and LF.
    fn wire_lines(s: &str) -> Vec<&str> {
        s.split("\r\n")
            .flat_map(|p| p.split(['\r', '\n']))
            .collect()
    }

    /// What the parser must have seen from the lines of one block.
    #[derive(Default)]
    struct Model {
        data: Option<Vec<String>>,
        event: Option<String>,
        id: Option<String>,
        retry: Option<u64>,
    }

    /// Writes one line (with the model's bookkeeping).
    fn push_line(out: &mut Vec<u8>, content: &str, eol: &str) {
        // A CR ending a line followed by an empty LF-ended line would be one CRLF: write
        // such a blank line as CRLF instead.
        let eol = if content.is_empty() && eol == "\n" && out.last() == Some(&b'\r') {
            "\r\n"
        } else {
            eol
        };
        out.extend_from_slice(content.as_bytes());
        out.extend_from_slice(eol.as_bytes());
    }

    fn write_line(out: &mut Vec<u8>, line: &Line, eol: &str, model: &mut Model) {
        let sep = |space: bool| if space { ": " } else { ":" };
        let seen = |space: bool, v: &str| -> String {
            if space {
                v.to_owned()
            } else {
                v.strip_prefix(' ').unwrap_or(v).to_owned()
            }
        };
        match line {
            Line::Comment(text) => push_line(out, &format!(":{text}"), eol),
            Line::Data { space, value } => {
                for l in wire_lines(value) {
                    push_line(out, &format!("data{}{l}", sep(*space)), eol);
                    model
                        .data
                        .get_or_insert_with(Vec::new)
                        .push(seen(*space, l));
                }
            }
            Line::Field {
                name,
                colon,
                space,
                value,
            } => {
                let v = if *colon {
                    push_line(out, &format!("{name}{}{value}", sep(*space)), eol);
                    seen(*space, value)
                } else {
                    push_line(out, name, eol);
                    String::new()
                };
                match name.as_str() {
                    "data" => model.data.get_or_insert_with(Vec::new).push(v),
                    "event" => model.event = Some(v),
                    "id" if !v.contains('\0') => model.id = Some(v),
                    "retry" if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                        if let Ok(ms) = v.parse() {
                            model.retry = Some(ms);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The stream a spec describes, the items it must give and the last event id.
    fn build(spec: &Spec) -> (Vec<u8>, Vec<SseItem>, Option<String>) {
        let mut out = Vec::new();
        if spec.bom {
            out.extend_from_slice(&BOM);
        }
        let mut start = 0;
        let mut items = Vec::new();
        let mut last_id = None;
        for (lines, end) in &spec.blocks {
            let mut model = Model::default();
            for (line, eol) in lines {
                write_line(&mut out, line, eol, &mut model);
            }
            push_line(&mut out, "", end);
            let raw = out[start..].to_vec();
            start = out.len();
            if model.id.is_some() {
                last_id.clone_from(&model.id);
            }
            items.push(match model.data {
                Some(data) => SseItem::Event(SseEvent {
                    id: model.id,
                    event: model.event,
                    data: data.join("\n"),
                    retry: model.retry,
                    raw,
                }),
                None => SseItem::Other {
                    raw,
                    id: model.id,
                    retry: model.retry,
                },
            });
        }
        for (line, eol) in &spec.tail {
            write_line(&mut out, line, eol, &mut Model::default());
        }
        if spec.tail_cut && !spec.tail.is_empty() {
            while matches!(out.last(), Some(b'\r' | b'\n')) {
                out.pop();
            }
        }
        if out.len() > start {
            items.push(SseItem::Incomplete(out[start..].to_vec()));
        }
        (out, items, last_id)
    }

    fn stream_and_cuts() -> impl Strategy<Value = (Spec, Vec<usize>)> {
        spec().prop_flat_map(|spec| {
            let n = build(&spec).0.len();
            (Just(spec), proptest::collection::vec(0..=n, 0..12))
        })
    }

    /// Bytes that mean something to the parser. Three inputs in four are valid UTF-8 (so
    /// that they get past their first lines); the others have arbitrary bytes mixed in.
    fn noisy_bytes() -> impl Strategy<Value = Vec<u8>> {
        let token = |arbitrary: u32| {
            prop_oneof![
                20 => proptest::sample::select(b"\r\n\n: dataidevntry\0".to_vec())
                    .prop_map(|b| vec![b]),
                3 => proptest::sample::select(vec![
                    "data: ", "id: ", "event: ", "retry: 12", "\r\n", "\u{e9}", "\u{20ac}", "\u{FEFF}",
                ])
                .prop_map(|t| t.as_bytes().to_vec()),
                arbitrary => any::<u8>().prop_map(|b| vec![b]),
            ]
        };
        let tokens = |arbitrary| {
            proptest::collection::vec(token(arbitrary), 0..200).prop_map(|ts| ts.concat())
        };
        prop_oneof![3 => tokens(0), 1 => tokens(2)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn chunking_does_not_matter((spec, cuts) in stream_and_cuts()) {
            let (input, expected, last_id) = build(&spec);
            for chunks in [vec![&input[..]], split_at(&input, &cuts)] {
                let mut p = SseParser::new(BIG);
                let mut items = Vec::new();
                for c in &chunks {
                    items.extend(p.feed(c).unwrap());
                    prop_assert!(p.buffered_len() <= input.len());
                }
                items.extend(p.finish());
                prop_assert_eq!(&items, &expected);
                prop_assert_eq!(concat_raw(&items), input.clone());
                prop_assert_eq!(p.last_event_id(), last_id.as_deref());
                prop_assert_eq!(p.offset(), input.len() as u64);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            input in noisy_bytes(),
            cuts in proptest::collection::vec(0usize..400, 0..12),
            limit in prop_oneof![1 => 0usize..64, 3 => Just(BIG)],
        ) {
            let whole = run(&[&input], limit);
            let chunks = split_at(&input, &cuts);
            prop_assert_eq!(&run(&chunks, limit), &whole);
            match whole {
                Ok(items) => prop_assert_eq!(concat_raw(&items), input),
                Err(_) => {
                    // Returned items, then the unreturned bytes, then the failing chunk: the
                    // stream up to the end of that chunk, so it can be passed through.
                    let mut p = SseParser::new(limit);
                    let mut out = Vec::new();
                    let mut fed = 0;
                    for c in &chunks {
                        fed += c.len();
                        match p.feed(c) {
                            Ok(items) => out.extend(concat_raw(&items)),
                            Err(_) => {
                                out.extend(p.take_unreturned());
                                out.extend_from_slice(c);
                                break;
                            }
                        }
                    }
                    prop_assert_eq!(&out[..], &input[..fed]);
                }
            }
        }

        #[test]
        fn encode_then_parse(
            id in proptest::option::of("[^\r\n\0]{0,10}"),
            event in proptest::option::of("[^\r\n]{0,10}"),
            data in "(?s).{0,40}",
            retry in proptest::option::of(any::<u64>()),
        ) {
            let e = SseEvent { id, event, data, retry, raw: vec![] };
            let wire = encode(&e);
            let back = only_event(&wire);
            prop_assert_eq!(back.raw, wire);
            prop_assert_eq!(&back.id, &e.id);
            prop_assert_eq!(&back.event, &e.event);
            prop_assert_eq!(back.retry, e.retry);
            prop_assert_eq!(back.data, wire_lines(&e.data).join("\n"));
        }
    }
}
