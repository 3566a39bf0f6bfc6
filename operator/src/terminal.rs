//! The live status line of `local` and `demo` on a terminal: rewritten in place, cut to the
//! terminal's width so that it never wraps (a wrapped line cannot be rewritten with `\r`).

use std::io::IsTerminal;

/// Width assumed when the terminal does not say.
const DEFAULT_WIDTH: usize = 100;

/// The width of the terminal on standard error, if it is one.
pub fn stderr_width() -> Option<usize> {
    let stderr = std::io::stderr();
    if !stderr.is_terminal() {
        return None;
    }
    Some(
        terminal_size::terminal_size_of(&stderr)
            .map_or(DEFAULT_WIDTH, |(terminal_size::Width(w), _)| usize::from(w)),
    )
}

/// `line` cut to `width` characters, the last one an ellipsis when anything was cut.
pub fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_that_fits_is_kept_and_a_longer_one_ends_in_an_ellipsis_at_the_width() {
        assert_eq!(fit("parallelism 2", 20), "parallelism 2");
        let cut = fit("parallelism 2 | processes 1/1 | lag 12", 16);
        assert_eq!(cut, "parallelism 2 |…");
        assert_eq!(cut.chars().count(), 16);
        assert_eq!(fit("µs µs µs", 4), "µs …");
    }
}
