//! Colour (ANSI escapes) on a terminal, plain text when piped or when `NO_COLOR` is set, and
//! column alignment that ignores the escapes.

/// How a cell reads: its tone picks the colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Warn,
    Bad,
    Dim,
    Bold,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub const PLAIN: Style = Style { color: false };

    /// Colour when the output is a terminal, `NO_COLOR` is unset or empty and `TERM` is not
    /// `dumb` (<https://no-color.org>).
    pub fn detect(is_terminal: bool, no_color: Option<&str>, term: Option<&str>) -> Style {
        Style { color: is_terminal && no_color.is_none_or(str::is_empty) && term != Some("dumb") }
    }

    /// For standard output of this process.
    pub fn stdout() -> Style {
        use std::io::IsTerminal;
        Style::detect(std::io::stdout().is_terminal(), std::env::var("NO_COLOR").ok().as_deref(), std::env::var("TERM").ok().as_deref())
    }

    pub fn paint(&self, tone: Tone, text: &str) -> String {
        let code = match tone {
            Tone::Plain => return text.to_string(),
            Tone::Good => "32",
            Tone::Warn => "33",
            Tone::Bad => "31",
            Tone::Dim => "2",
            Tone::Bold => "1",
        };
        if self.color && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// One cell of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub tone: Tone,
}

impl Cell {
    pub fn new(text: impl Into<String>, tone: Tone) -> Cell {
        Cell { text: text.into(), tone }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell { text, tone: Tone::Plain }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell { text: text.to_string(), tone: Tone::Plain }
    }
}

/// Columns separated by three spaces (as kubectl), each as wide as its widest cell; the last
/// column is not padded. `indent` goes before every line.
pub fn table(style: Style, indent: &str, headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let n = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(width(&c.text));
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<(String, Tone)>, out: &mut String| {
        out.push_str(indent);
        let last = cells.len().saturating_sub(1);
        for (i, (text, tone)) in cells.into_iter().enumerate() {
            let pad = if i == last { 0 } else { widths[i] - width(&text) + 3 };
            out.push_str(&style.paint(tone, &text));
            out.push_str(&" ".repeat(pad));
        }
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('\n');
    };
    line(headers.iter().map(|h| (h.to_string(), Tone::Bold)).collect(), &mut out);
    for r in rows {
        let mut cells: Vec<(String, Tone)> = r.iter().take(n).map(|c| (c.text.clone(), c.tone)).collect();
        cells.resize(n, (String::new(), Tone::Plain));
        line(cells, &mut out);
    }
    out
}

/// Display width of plain text (one column per character).
pub fn width(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `max` characters, ending in `...` when cut; newlines become spaces.
pub fn clip(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c == '\n' || c == '\t' { ' ' } else { c }).collect();
    if width(&flat) <= max {
        return flat;
    }
    let mut out: String = flat.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(Style::detect(true, None, Some("xterm")).color);
        assert!(Style::detect(true, Some(""), None).color);
        assert!(!Style::detect(true, Some("1"), None).color);
        assert!(!Style::detect(false, None, None).color);
        assert!(!Style::detect(true, None, Some("dumb")).color);
    }

    #[test]
    fn alignment_ignores_escapes() {
        let rows = vec![vec![Cell::new("a", Tone::Good), Cell::from("1")], vec![Cell::from("bbbb"), Cell::from("22")]];
        assert_eq!(table(Style::PLAIN, "", &["N", "V"], &rows), "N      V\na      1\nbbbb   22\n");
        let coloured = table(Style { color: true }, "", &["N", "V"], &rows);
        assert!(coloured.contains("\x1b[32ma\x1b[0m      1"), "{coloured:?}");
        assert_eq!(clip("abcdefgh", 6), "abc...");
    }
}
