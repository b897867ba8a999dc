//! An attempt's output on its way to the server: decoded as UTF-8, cut at the
//! attempt's cap with a marker line, and shipped in chunks at their byte offsets
//! (so a resend is harmless). Past the cap the output is still read, and
//! dropped, so the step never blocks on a full pipe. Marker lines, corral's
//! own (`[corral: ...]`), stand on a line of their own, cap or not.

use std::time::Duration;

use corral_api::LogAppend;
use tokio::sync::mpsc;

/// The largest chunk shipped in one call, in bytes.
const CHUNK: usize = 64 * 1024;

/// What reaches an attempt's log.
#[derive(Debug)]
pub enum Piece {
    /// What the step wrote.
    Output(Vec<u8>),
    /// A line of corral's own, after it.
    Marker(String),
}

/// Output read from a step, not shipped yet.
struct Output {
    /// The start of a character split between two reads.
    split: Vec<u8>,
    /// Decoded text waiting to be shipped.
    text: String,
    /// Where the next chunk starts in the attempt's log.
    offset: u64,
    /// Bytes of output taken so far, counted against the cap.
    taken: u64,
    cap: Option<u64>,
    /// The cap was reached: the rest is dropped.
    cut: bool,
    /// What was taken so far ends a line (or nothing was).
    line_ended: bool,
}

impl Output {
    fn new(cap: Option<u64>) -> Output {
        Output {
            split: Vec::new(),
            text: String::new(),
            offset: 0,
            taken: 0,
            cap,
            cut: false,
            line_ended: true,
        }
    }

    /// Takes what the step wrote, holding back a character split at its end.
    fn push(&mut self, bytes: &[u8]) {
        if self.cut {
            return;
        }
        self.split.extend_from_slice(bytes);
        let (text, held) = decode(&self.split);
        self.split.drain(..self.split.len() - held);
        self.take(&text);
    }

    /// The step's output has ended: a character left split is taken as it is.
    fn close(&mut self) {
        if !self.cut && !self.split.is_empty() {
            let text = String::from_utf8_lossy(&self.split).into_owned();
            self.split.clear();
            self.take(&text);
        }
    }

    fn take(&mut self, text: &str) {
        let room = match self.cap {
            Some(cap) => usize::try_from(cap.saturating_sub(self.taken)).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        let end = text.floor_char_boundary(room);
        self.text.push_str(&text[..end]);
        self.taken += end as u64;
        if end > 0 {
            self.line_ended = text[..end].ends_with('\n');
        }
        if let Some(cap) = self.cap
            && end < text.len()
        {
            self.cut = true;
            self.split.clear();
            self.mark(&format!("output cut at {}; the step goes on", size(cap)));
        }
    }

    /// A line of corral's own, after what was taken; first, a character left
    /// split is taken as it is.
    fn mark(&mut self, text: &str) {
        self.close();
        if !self.line_ended {
            self.text.push('\n');
        }
        self.text.push_str(&format!("[corral: {text}]\n"));
        self.line_ended = true;
    }

    /// Whether a whole chunk is waiting.
    fn full(&self) -> bool {
        self.text.len() >= CHUNK
    }

    /// The next chunk to ship.
    fn chunk(&mut self) -> Option<LogAppend> {
        if self.text.is_empty() {
            return None;
        }
        let end = self.text.floor_char_boundary(CHUNK);
        let chunk = LogAppend {
            offset: self.offset,
            data: self.text.drain(..end).collect(),
        };
        self.offset += end as u64;
        Some(chunk)
    }
}

/// Decodes `bytes` as UTF-8, invalid sequences replaced; returns the text and
/// the length of an incomplete character at the end, left undecoded.
fn decode(bytes: &[u8]) -> (String, usize) {
    let mut text = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                text.push_str(valid);
                return (text, 0);
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(std::str::from_utf8(valid).expect("valid up to here"));
                match e.error_len() {
                    None => return (text, after.len()),
                    Some(n) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[n..];
                    }
                }
            }
        }
    }
}

/// `bytes` for people: `64.0 MiB`, `1.5 KiB`, `100 B`.
fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    match bytes {
        MIB.. => format!("{:.1} MiB", bytes as f64 / MIB as f64),
        KIB.. => format!("{:.1} KiB", bytes as f64 / KIB as f64),
        _ => format!("{bytes} B"),
    }
}

impl Output {
    fn piece(&mut self, piece: Piece) {
        match piece {
            Piece::Output(bytes) => self.push(&bytes),
            Piece::Marker(text) => self.mark(&text),
        }
    }
}

/// Ships what arrives on `rx` with `send`, at most every 100 ms and at most
/// 64 KiB at a time, until `rx` closes. Once `send` is refused the rest is
/// dropped; past `cap` too, after a marker line.
pub async fn ship(
    attempt: i64,
    cap: Option<u64>,
    mut rx: mpsc::Receiver<Piece>,
    mut send: impl AsyncFnMut(LogAppend) -> Result<(), (u16, String)>,
) {
    let mut output = Output::new(cap);
    let mut open = true;
    let mut refused = false;
    while open {
        match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            Ok(Some(piece)) => output.piece(piece),
            Ok(None) => open = false,
            Err(_) => {}
        }
        while open && !output.full() {
            match rx.try_recv() {
                Ok(piece) => output.piece(piece),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if !open {
            output.close();
        }
        while let Some(chunk) = output.chunk() {
            if refused {
                continue;
            }
            if let Err((status, text)) = send(chunk).await {
                tracing::warn!(attempt, status, %text, "the server refused output; dropping the rest");
                refused = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(output: &mut Output) -> Vec<LogAppend> {
        std::iter::from_fn(|| output.chunk()).collect()
    }

    /// The chunks' text, checking that each starts where the last ended.
    fn joined(chunks: &[LogAppend]) -> String {
        let mut text = String::new();
        for chunk in chunks {
            assert_eq!(chunk.offset, text.len() as u64, "chunks are contiguous");
            assert!(
                chunk.data.len() <= CHUNK,
                "a chunk of {} bytes",
                chunk.data.len()
            );
            text.push_str(&chunk.data);
        }
        text
    }

    #[test]
    fn a_character_split_between_reads_is_held_back() {
        let mut output = Output::new(None);
        output.push(b"caf\xC3");
        output.push(b"\xA9 \xE2\x82");
        output.push(b"\xAC");
        output.push(b"\xFF ok \xE2\x82");
        output.close();
        assert_eq!(
            joined(&drain(&mut output)),
            "café €\u{FFFD} ok \u{FFFD}",
            "a split character is whole; an invalid byte and an unfinished character are replaced"
        );
    }

    #[test]
    fn chunks_are_at_most_64_kib_and_contiguous() {
        let mut output = Output::new(None);
        let text = "é".repeat(100_000);
        output.push(text.as_bytes());
        assert!(output.full());
        let chunks = drain(&mut output);
        assert_eq!(chunks.len(), 4);
        assert_eq!(joined(&chunks), text);
        assert!(!output.full());
    }

    #[test]
    fn output_is_cut_at_the_cap_with_a_marker_and_the_rest_dropped() {
        let mut output = Output::new(Some(9));
        output.push(b"12345");
        output.push("678é".as_bytes());
        output.push(b"more");
        output.close();
        assert_eq!(
            joined(&drain(&mut output)),
            "12345678\n[corral: output cut at 9 B; the step goes on]\n",
            "the cut falls before a character that would cross the cap"
        );
    }

    #[test]
    fn a_marker_stands_on_a_line_of_its_own_past_the_cap() {
        let mut output = Output::new(None);
        output.mark("first");
        output.push(b"no newline");
        output.mark("after it");
        output.push(b"line\n");
        output.mark("after a line");
        assert_eq!(
            joined(&drain(&mut output)),
            "[corral: first]\nno newline\n[corral: after it]\nline\n[corral: after a line]\n"
        );
        let mut cut = Output::new(Some(3));
        cut.push(b"abcdef");
        cut.push(b"more");
        cut.mark("the end");
        assert_eq!(
            joined(&drain(&mut cut)),
            "abc\n[corral: output cut at 3 B; the step goes on]\n[corral: the end]\n"
        );
    }

    #[test]
    fn output_up_to_the_cap_is_not_cut() {
        let mut output = Output::new(Some(6));
        output.push(b"abc");
        output.push(b"def");
        output.close();
        assert_eq!(joined(&drain(&mut output)), "abcdef");
    }

    #[test]
    fn sizes_read_in_their_unit() {
        assert_eq!(size(64 * 1024 * 1024), "64.0 MiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(100), "100 B");
    }

    #[tokio::test]
    async fn past_the_cap_the_output_is_still_read() {
        let (tx, rx) = mpsc::channel(64);
        let (sent_tx, mut sent) = mpsc::unbounded_channel();
        let shipper = tokio::spawn(ship(1, Some(100_000), rx, async move |chunk| {
            sent_tx.send(chunk).map_err(|e| (500, e.to_string()))
        }));
        // Far more than the channel holds: if the shipper stopped reading at the
        // cap, the step (here, this writer) would block for good.
        let write = async {
            for _ in 0..1024 {
                tx.send(Piece::Output(vec![b'x'; 16 * 1024]))
                    .await
                    .expect("the shipper reads");
            }
        };
        tokio::time::timeout(Duration::from_secs(60), write)
            .await
            .expect("16 MiB written past a cap of 100 kB");
        drop(tx);
        shipper.await.expect("the shipper ends");
        let mut chunks = Vec::new();
        while let Ok(chunk) = sent.try_recv() {
            chunks.push(chunk);
        }
        assert_eq!(
            joined(&chunks),
            format!(
                "{}\n[corral: output cut at 97.7 KiB; the step goes on]\n",
                "x".repeat(100_000)
            )
        );
    }
}
