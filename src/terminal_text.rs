//! Text bound for a terminal with every hidden character escaped: what the ledger holds is shown, never obeyed.
//!
//! A quarantined envelope's subject, a query's answer, an event field: all of
//! it came from outside, and a terminal executes escape sequences (clear the
//! screen, write the clipboard) and bidirectional controls reorder what is
//! read. [`Shown`] wraps a writer bound for a terminal and writes each
//! character that `docket_schemas::is_hidden` refuses as `\u{..}`, except the
//! newline and tab that lay out tables and lines. Pipes and files get the exact
//! bytes: the caller wraps only when the output is a terminal.

use std::io::{self, Write};

use docket_schemas::is_hidden;

/// `text` with its hidden characters escaped (newlines and tabs too: a cell is one line).
pub fn escaped(text: &str) -> String {
    escape(text, false)
}

/// `text` with every hidden character written as `\u{..}`; with `keep_layout`, newlines and
/// tabs pass (a table's lines, not data within a cell).
fn escape(text: &str, keep_layout: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_hidden(c) && !(keep_layout && (c == '\n' || c == '\t')) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// A writer that escapes hidden characters on their way to a terminal.
pub struct Shown<W: Write> {
    inner: W,
    /// The start of a UTF-8 sequence split across two writes.
    pending: Vec<u8>,
}

impl<W: Write> Shown<W> {
    pub fn new(inner: W) -> Shown<W> {
        Shown {
            inner,
            pending: Vec::new(),
        }
    }

    fn emit(&mut self, text: &str) -> io::Result<()> {
        self.inner.write_all(escape(text, true).as_bytes())
    }
}

impl<W: Write> Write for Shown<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let bytes = std::mem::take(&mut self.pending);
        let mut rest: &[u8] = &bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    self.emit(text)?;
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // The prefix is valid UTF-8 by the error's own account.
                    self.emit(std::str::from_utf8(valid).map_err(io::Error::other)?)?;
                    match e.error_len() {
                        // Not UTF-8 at all: shown as its bytes, never passed through.
                        Some(n) => {
                            for b in &after[..n] {
                                self.inner.write_all(format!("\\x{b:02x}").as_bytes())?;
                            }
                            rest = &after[n..];
                        }
                        // A sequence cut by the end of this write: kept for the next.
                        None => {
                            self.pending = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        for b in std::mem::take(&mut self.pending) {
            self.inner.write_all(format!("\\x{b:02x}").as_bytes())?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(chunks: &[&[u8]]) -> String {
        let mut w = Shown::new(Vec::new());
        for c in chunks {
            w.write_all(c).unwrap();
        }
        w.flush().unwrap();
        String::from_utf8(w.inner).unwrap()
    }

    #[test]
    fn escapes_sequences_and_bidi_keeps_layout_and_split_characters() {
        assert_eq!(
            shown(&[b"a\x1b]52;c;Y3VybA==\x07b\n\tc"]),
            "a\\u{1b}]52;c;Y3VybA==\\u{7}b\n\tc"
        );
        assert_eq!(shown(&["x\u{202e}y".as_bytes()]), "x\\u{202e}y");
        // "é" split between two writes is one character, not two bad bytes.
        let e = "é".as_bytes();
        assert_eq!(shown(&[&[b'a', e[0]], &[e[1], b'b']]), "aéb");
        assert_eq!(shown(&[b"\xffz"]), "\\xffz");
        assert_eq!(shown(&[b"end\xc3"]), "end\\xc3");
    }
}
