//! Terminal escapes neutralised before they reach the terminal.
//!
//! Step output and agents' errors are written by code corral does not trust:
//! an escape sequence in them could retitle the window, rewrite what is on
//! the screen, hide text or reorder it (bidi overrides). Everything the CLI
//! prints that came from a step or an agent goes through here, and each
//! character a terminal would act on is shown instead: C0 controls (but
//! `\n` and `\t`) and DEL in caret notation (`^[` for ESC, `^G` for BEL),
//! C1 controls and the bidi controls as `\u009b`, `\u202e`. `corral logs
//! --raw` is the one way to get the bytes as they were.

use std::borrow::Cow;
use std::fmt::Write as _;

/// How `c` is shown, when a terminal would act on it.
fn shown(c: char, out: &mut String) -> bool {
    match c {
        '\n' | '\t' => false,
        '\u{0}'..='\u{1f}' => {
            out.push('^');
            out.push(char::from(c as u8 + 0x40));
            true
        }
        '\u{7f}' => {
            out.push_str("^?");
            true
        }
        // C1 controls (CSI is U+009B, OSC U+009D), the bidi embeddings,
        // overrides, isolates and marks.
        '\u{80}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}' => {
            let _ = write!(out, "\\u{:04x}", c as u32);
            true
        }
        _ => false,
    }
}

fn needs_care(c: char) -> bool {
    shown(c, &mut String::new())
}

/// `text` with every character a terminal would act on shown instead.
pub fn neutralise(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_care) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !shown(c, &mut out) {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Neutralises a stream of bytes cut anywhere: a character split between two
/// pieces is held until its end arrives; bytes that are not UTF-8 are shown
/// as U+FFFD.
#[derive(Debug, Default)]
pub struct Stream {
    pending: Vec<u8>,
}

impl Stream {
    /// The neutralised text of `bytes`, but for a character they end inside.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(&neutralise(text));
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, after) = rest.split_at(e.valid_up_to());
                    out.push_str(&neutralise(
                        std::str::from_utf8(good).expect("valid up to here"),
                    ));
                    match e.error_len() {
                        // A character cut at the end: wait for the rest of it.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// What is left at the end of the stream: a cut character, shown as U+FFFD.
    pub fn finish(self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_acted_on() {
        let hostile = "\x1b]0;pwned\x07\x1b[31mred\x1b[0m";
        assert_eq!(neutralise(hostile), "^[]0;pwned^G^[[31mred^[[0m");
    }

    #[test]
    fn plain_text_newlines_and_tabs_pass_unchanged() {
        let text = "step 1\tok\nünïcödé, 中文, emoji 🎉\n";
        assert!(matches!(neutralise(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn every_c0_control_but_newline_and_tab_and_del_are_shown() {
        for byte in (0u8..0x20).chain([0x7f]) {
            let c = char::from(byte);
            let shown = neutralise(&c.to_string()).into_owned();
            if c == '\n' || c == '\t' {
                assert_eq!(shown, c.to_string());
            } else {
                assert!(
                    shown.starts_with('^') && shown.len() == 2,
                    "{byte:#x}: {shown:?}"
                );
                assert!(!shown.chars().any(|c| c.is_control()), "{byte:#x}");
            }
        }
        assert_eq!(neutralise("a\rb\x08c\x00"), "a^Mb^Hc^@");
    }

    #[test]
    fn c1_controls_and_bidi_controls_are_shown() {
        assert_eq!(neutralise("\u{9b}31m"), "\\u009b31m");
        assert_eq!(neutralise("\u{9d}0;t\u{9c}"), "\\u009d0;t\\u009c");
        assert_eq!(
            neutralise("abc\u{202e}fed\u{202c} \u{2066}x\u{2069}"),
            "abc\\u202efed\\u202c \\u2066x\\u2069"
        );
        for c in ('\u{80}'..='\u{9f}').chain(['\u{200f}', '\u{61c}']) {
            assert!(neutralise(&c.to_string()).is_ascii(), "{:x}", c as u32);
        }
    }

    #[test]
    fn a_stream_cut_anywhere_gives_what_the_whole_text_gives() {
        let text = "ok \x1b[31mröd\u{202e}\u{9b} 中🎉\n";
        let whole = neutralise(text).into_owned();
        let bytes = text.as_bytes();
        for size in 1..=bytes.len() {
            let mut stream = Stream::default();
            let mut out = String::new();
            for piece in bytes.chunks(size) {
                out.push_str(&stream.push(piece));
            }
            out.push_str(&stream.finish());
            assert_eq!(out, whole, "pieces of {size} bytes");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced() {
        let mut stream = Stream::default();
        let out = stream.push(b"a\xffb\x1b") + &stream.push(b"\xe4\xb8") + &stream.finish();
        assert_eq!(out, "a\u{fffd}b^[\u{fffd}");
    }
}
