//! Aligned text tables in the style of `kubectl get`: upper-case headers, columns
//! left-aligned and three spaces apart, no borders, so the output reads like the
//! rest of kubectl and stays easy to `grep` and `awk`.

/// A table: a header and rows of cells.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: vec![],
        }
    }

    /// Adds a row; missing cells are empty.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines of text, each ending in a newline.
    pub fn render(&self) -> String {
        let lines: Vec<&Vec<String>> = std::iter::once(&self.header).chain(&self.rows).collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        // Widths in characters: names and reasons may hold non-ASCII (×, ÷, …).
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (c, width) in widths.iter().enumerate() {
                let cell = line.get(c).map_or("", String::as_str);
                text.push_str(cell);
                if c + 1 < columns {
                    text.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 3));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_their_headers() {
        let mut t = Table::new(&["POOL", "FREE", "REASON"]);
        t.row(vec![
            "h100-eu".into(),
            "8".into(),
            "waiting for 16 GPUs".into(),
        ]);
        t.row(vec!["a100".into(), "128".into(), String::new()]);
        assert_eq!(
            t.render(),
            "POOL      FREE   REASON\n\
             h100-eu   8      waiting for 16 GPUs\n\
             a100      128\n"
        );
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let mut t = Table::new(&["GPUS", "X"]);
        t.row(vec!["2×8".into(), "y".into()]);
        assert_eq!(t.render(), "GPUS   X\n2×8    y\n");
    }
}
