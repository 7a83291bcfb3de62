//! The landing-file line splitter: NDJSON bodies into numbered lines (`\n` or `\r\n`), blank
//! and whitespace-only lines told apart so bronze can skip and count them.

/// Non-blank lines with their 1-based line numbers; `\r\n` endings tolerated.
pub fn lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    all_lines(body).filter(|(_, l)| !is_blank(l))
}

/// Whether a line (without its newline) is empty or whitespace only: skipped, and counted.
pub fn is_blank(l: &[u8]) -> bool {
    l.iter().all(|b| b.is_ascii_whitespace())
}

/// Every line with its 1-based number, `\r\n` endings stripped; a final empty segment after the
/// last newline is not a line.
pub fn all_lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    // memchr finds the newlines with SIMD; a byte-at-a-time split was 4% of bronze's CPU.
    let mut start = 0usize;
    let mut ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    std::iter::from_fn(move || {
        if start >= body.len() {
            return None;
        }
        let end = ends.next()?;
        let l = &body[start..end];
        start = end + 1;
        Some(l)
    })
    .enumerate()
    .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
}
