//! Keeping tool output within what a model context can take.

/// Cuts `text` to at most `cap` bytes (on a char boundary), keeping the
/// start and the end, since errors tend to sit at the end of a log and the
/// command's context at the start. Adds a note saying how much was left out.
pub(crate) fn cap_middle(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_owned();
    }
    let head_end = floor_boundary(text, cap / 2);
    let tail_start = ceil_boundary(text, text.len() - (cap - cap / 2));
    let omitted = tail_start - head_end;
    format!(
        "{}\n[... output truncated: {omitted} bytes omitted ...]\n{}",
        &text[..head_end],
        &text[tail_start..]
    )
}

/// Cuts `text` to at most `cap` bytes keeping the start, with a note.
pub(crate) fn cap_head(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_owned();
    }
    let end = floor_boundary(text, cap);
    format!(
        "{}\n[... output truncated: {} more bytes not shown ...]",
        &text[..end],
        text.len() - end
    )
}

fn floor_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn ceil_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_untouched_and_long_text_keeps_both_ends() {
        assert_eq!(cap_middle("abc", 10), "abc");
        let text = format!("{}{}", "a".repeat(100), "z".repeat(100));
        let capped = cap_middle(&text, 20);
        assert!(capped.starts_with("aaaaaaaaaa\n"));
        assert!(capped.ends_with("\nzzzzzzzzzz"));
        assert!(capped.contains("180 bytes omitted"));
    }

    #[test]
    fn caps_respect_char_boundaries() {
        let text = "é".repeat(50);
        assert!(cap_middle(&text, 9).contains("omitted"));
        assert!(cap_head(&text, 9).starts_with("éééé\n"));
    }
}
