//! Long tables on a small screen: the rows matching the operator's filter, one page at a time.
//! Rows keep their number in the filtered list on every page, so a number read on one page
//! (or known from before) can be typed on any other.

use std::ops::Range;

/// What the operator typed, when it was for the pager.
#[derive(Debug, PartialEq, Eq)]
pub enum Move {
    /// The page or the filter changed.
    Done,
    /// Not possible; the reason, for the screen.
    Refused(String),
}

/// A filter and a page over a table.
#[derive(Debug, Default)]
pub struct Pager {
    filter: String,
    page: usize,
}

impl Pager {
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// Indices (into the whole table) of the rows whose `text` contains the filter, ignoring
    /// case, in the table's order.
    pub fn matching<'a>(&self, texts: impl Iterator<Item = &'a str>) -> Vec<usize> {
        let f = self.filter.to_lowercase();
        texts
            .enumerate()
            .filter(|(_, t)| f.is_empty() || t.to_lowercase().contains(&f))
            .map(|(i, _)| i)
            .collect()
    }

    /// The current page of rows of `heights` (the screen lines each matching row takes) in
    /// `budget` lines: a range of positions in the matching list. A page always holds at
    /// least one row, and the page number is kept within the pages there are.
    pub fn window(&mut self, heights: &[usize], budget: usize) -> Range<usize> {
        let pages = pages(heights, budget);
        self.page = self.page.min(pages.len().saturating_sub(1));
        pages.get(self.page).cloned().unwrap_or(0..0)
    }

    /// Whether there are pages after and before the current one.
    pub fn more(&self, heights: &[usize], budget: usize) -> (bool, bool) {
        (self.page + 1 < pages(heights, budget).len(), self.page > 0)
    }

    /// Handles `line` when it is a pager answer: `n` (next page), `p` (previous page), `/TEXT`
    /// (filter, `/` alone clears it), or any other text that is not a number or a one-letter
    /// key (filter). None: not for the pager.
    pub fn answer(&mut self, line: &str, heights: &[usize], budget: usize) -> Option<Move> {
        let t = line.trim();
        let (next, prev) = self.more(heights, budget);
        match t {
            "n" | "N" if next => {
                self.page += 1;
                Some(Move::Done)
            }
            "n" | "N" => Some(Move::Refused("this is the last page".into())),
            "p" | "P" if prev => {
                self.page -= 1;
                Some(Move::Done)
            }
            "p" | "P" => Some(Move::Refused("this is the first page".into())),
            _ => {
                let text = match t.strip_prefix('/') {
                    Some(rest) => rest.trim(),
                    None if t.parse::<usize>().is_err() && t.chars().count() > 1 => t,
                    None => return None,
                };
                self.filter = text.to_string();
                self.page = 0;
                Some(Move::Done)
            }
        }
    }

    /// The line under the table: which rows show, of how many, and the filter.
    pub fn status(&self, shown: &Range<usize>, matching: usize, total: usize) -> String {
        let rows = if matching == 0 {
            "no rows".to_string()
        } else {
            format!("rows {}-{} of {matching}", shown.start + 1, shown.end)
        };
        if self.filter.is_empty() {
            rows
        } else {
            format!("{rows} matching {:?} ({total} in all; / alone clears)", self.filter)
        }
    }

    /// The line under the table: the status and the page keys that work on this page.
    pub fn footer(
        &self,
        shown: &Range<usize>,
        matching: usize,
        total: usize,
        heights: &[usize],
        budget: usize,
    ) -> String {
        format!("{}  {}", self.status(shown, matching, total), self.keys(heights, budget))
    }

    /// The page keys that work on this page, for the status line.
    pub fn keys(&self, heights: &[usize], budget: usize) -> String {
        match self.more(heights, budget) {
            (true, true) => "[n] next page  [p] previous".into(),
            (true, false) => "[n] next page".into(),
            (false, true) => "[p] previous".into(),
            (false, false) => String::new(),
        }
    }
}

/// Splits rows of `heights` into pages of at most `budget` lines (at least one row each).
fn pages(heights: &[usize], budget: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, h) in heights.iter().enumerate() {
        if i > start && used + h > budget {
            out.push(start..i);
            (start, used) = (i, 0);
        }
        used += h;
    }
    if start < heights.len() {
        out.push(start..heights.len());
    }
    out
}

/// Rows of a table that fit a screen of `rows` lines, when `other` lines are taken by the
/// header, the prompt and the key lines: at least 3, so a tiny screen still pages.
pub fn budget(rows: u16, other: usize) -> usize {
    usize::from(rows).saturating_sub(other).max(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_fill_the_budget_and_hold_a_tall_row_alone() {
        assert_eq!(pages(&[1; 5], 2), [0..2, 2..4, 4..5]);
        assert_eq!(pages(&[1, 3, 1, 1], 3), [0..1, 1..2, 2..4]);
        assert_eq!(pages(&[5], 3), vec![0..1]);
        assert!(pages(&[], 3).is_empty());
    }

    #[test]
    fn next_previous_and_the_ends() {
        let mut p = Pager::default();
        let h = [1; 25];
        assert_eq!(p.window(&h, 10), 0..10);
        assert_eq!(p.answer("p", &h, 10), Some(Move::Refused("this is the first page".into())));
        assert_eq!(p.answer("n", &h, 10), Some(Move::Done));
        assert_eq!(p.answer("N", &h, 10), Some(Move::Done));
        assert_eq!(p.window(&h, 10), 20..25);
        assert_eq!(p.answer("n", &h, 10), Some(Move::Refused("this is the last page".into())));
        assert_eq!(p.keys(&h, 10), "[p] previous");
        // The table shrank (a refresh): the page follows.
        assert_eq!(p.window(&h[..5], 10), 0..5);
    }

    #[test]
    fn filters_by_text_and_leaves_numbers_and_keys_alone() {
        let names = ["img-1", "Debian-12", "img-19", "debian-13"];
        let mut p = Pager::default();
        assert_eq!(p.answer("3", &[1; 4], 10), None);
        assert_eq!(p.answer("q", &[1; 4], 10), None);
        assert_eq!(p.answer("/deb", &[1; 4], 10), Some(Move::Done));
        assert_eq!(p.matching(names.iter().copied()), [1, 3]);
        assert_eq!(
            p.status(&(0..2), 2, 4),
            "rows 1-2 of 2 matching \"deb\" (4 in all; / alone clears)"
        );
        assert_eq!(p.answer("img-1", &[1; 2], 10), Some(Move::Done));
        assert_eq!(p.matching(names.iter().copied()), [0, 2]);
        assert_eq!(p.answer("/ ", &[1; 2], 10), Some(Move::Done));
        assert_eq!(p.filter(), "");
        assert_eq!(p.status(&(0..0), 0, 0), "no rows");
    }

    #[test]
    fn the_budget_of_a_screen() {
        assert_eq!(budget(24, 14), 10);
        assert_eq!(budget(10, 14), 3);
    }
}
