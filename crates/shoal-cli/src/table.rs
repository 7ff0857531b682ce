//! Aligned text tables for the client subcommands.

/// A table: a header row and data rows, rendered with columns padded to
/// their widest cell.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<const N: usize>(headers: [&str; N]) -> Self {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// A table without a header row, such as `KEY  VALUE` lines.
    pub fn plain() -> Self {
        Table { rows: Vec::new() }
    }

    /// Adds a row.
    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }

    /// The table as text, two spaces between columns, no trailing spaces.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[c] - cell.chars().count();
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_on_the_widest_cell() {
        let mut t = Table::new(["NODE", "NAME"]);
        t.row(["node-long".into(), "web".into()]);
        t.row(["n1".into(), "database".into()]);
        assert_eq!(
            t.render(),
            "NODE       NAME\nnode-long  web\nn1         database\n"
        );
    }

    #[test]
    fn a_plain_table_has_no_header() {
        let mut t = Table::plain();
        t.row(["STATUS".into(), "running".into()]);
        t.row(["NODE".into(), "n1".into()]);
        assert_eq!(t.render(), "STATUS  running\nNODE    n1\n");
    }
}
