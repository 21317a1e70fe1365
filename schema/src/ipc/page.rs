//! Paging of lists over the local socket: every list method takes a [`Page`] (an opaque
//! `cursor` and a `limit`) and answers with `next_cursor` while more items follow.
//!
//! Cursors are keyset cursors: they hold the sort key of the last item given (a state key;
//! a task's creation time and id; …), never an offset, so rows written or removed while a
//! client pages do not shift what it sees next. An item whose own sort key is unchanged is
//! listed exactly once whatever is written meanwhile; new items show on the pages after the
//! cursor if they sort there. The encoding is private to the daemon (base64url of a small
//! JSON value): clients pass it back as they got it.
//!
//! A page closes at `limit` items or once it holds [`PAGE_BYTES`] of JSON (always at least
//! one item), so an answer line is at most [`PAGE_BYTES`] plus one item. One item is bounded
//! by what one op or envelope may carry ([`crate::wire::MAX_CIPHERTEXT`]), and readers of
//! answers accept lines up to [`MAX_RESPONSE_LINE`], comfortably more than that item at its
//! worst JSON escaping. Requests stay under the smaller [`super::MAX_LINE`]: they are
//! written by clients the daemon does not have to trust to be small.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Items per page when a client pages without naming a limit (the MCP tools' default).
pub const DEFAULT_LIMIT: u32 = 100;
/// Most items per page a client may ask for.
pub const MAX_LIMIT: u32 = 1000;
/// A page closes once its items' JSON reaches this many bytes.
pub const PAGE_BYTES: usize = 256 * 1024;
/// Longest answer line a client reads from the daemon, in bytes: a page ([`PAGE_BYTES`])
/// plus its last item, which can be a whole op (at most [`crate::wire::MAX_CIPHERTEXT`]
/// sealed) with every byte escaped as `\u00XX` (6×). The daemon is the same user's
/// process (both ends check), so this guards against a bug, not an attacker.
pub const MAX_RESPONSE_LINE: usize = 16 << 20;

// An answer line holds a full page and the largest item at its worst escaping, with room
// for the envelope around them.
const _: () = assert!(PAGE_BYTES + 6 * crate::wire::MAX_CIPHERTEXT + 64 * 1024 < MAX_RESPONSE_LINE);

/// Where a list resumes and how much of it to give.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Resume after this point: the `next_cursor` of the previous page, as it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Most items on this page (default [`DEFAULT_LIMIT`] once paging, at most
    /// [`MAX_LIMIT`]). A request with neither `cursor` nor `limit` gets the whole list in
    /// one answer, as before paging existed: keep that for small lists only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl Page {
    /// The first page of `limit` items.
    pub fn first(limit: u32) -> Self {
        Self {
            cursor: None,
            limit: Some(limit),
        }
    }

    /// The page after `cursor`, of `limit` items.
    pub fn after(cursor: Option<String>, limit: u32) -> Self {
        Self {
            cursor,
            limit: Some(limit),
        }
    }

    /// Whether the client pages at all (an old client asks for everything).
    pub fn paged(&self) -> bool {
        self.cursor.is_some() || self.limit.is_some()
    }

    /// The cursor decoded as `T`; an error names what to do.
    pub fn position<T: DeserializeOwned>(&self) -> Result<Option<T>, BadCursor> {
        self.cursor.as_deref().map(decode).transpose()
    }

    /// A collector for this page.
    pub fn pager<T>(&self) -> Pager<T> {
        let limit = if self.paged() {
            self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as usize
        } else {
            usize::MAX
        };
        Pager {
            limit,
            bytes: if self.paged() { PAGE_BYTES } else { usize::MAX },
            used: 0,
            items: Vec::new(),
            more: false,
        }
    }
}

/// Cut `items` to what one answer holds: the first ones up to [`PAGE_BYTES`] of JSON, at
/// least one. For lists that resume by their own means (the inbox: what is not returned
/// stays unread for the next call). True when something was cut.
pub fn fit<T: Serialize>(items: &mut Vec<T>) -> bool {
    let mut used = 0;
    let keep = items
        .iter()
        .position(|i| {
            let over = used >= PAGE_BYTES;
            used += serde_json::to_vec(i).map(|v| v.len()).unwrap_or(0);
            over
        })
        .unwrap_or(items.len());
    let cut = keep < items.len();
    items.truncate(keep.max(1));
    cut
}

/// A cursor that this daemon did not make (or that was cut).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a cursor from this list: pass back the next_cursor of the previous page as it came")]
pub struct BadCursor;

/// Encode a position as a cursor.
pub fn encode(position: &impl Serialize) -> String {
    crate::encoding::b64(
        serde_json::to_string(position)
            .unwrap_or_default()
            .as_bytes(),
    )
}

/// Decode a cursor made by [`encode`].
pub fn decode<T: DeserializeOwned>(cursor: &str) -> Result<T, BadCursor> {
    let bytes = crate::encoding::unb64(cursor).map_err(|_| BadCursor)?;
    serde_json::from_slice(&bytes).map_err(|_| BadCursor)
}

/// Collects one page from items in list order: offer each in turn until [`Pager::push`]
/// says the page is full. The item that did not fit proves more follow, so the last page
/// has no `next_cursor` (no empty page at the end).
#[derive(Debug)]
pub struct Pager<T> {
    limit: usize,
    bytes: usize,
    used: usize,
    items: Vec<T>,
    more: bool,
}

impl<T: Serialize> Pager<T> {
    /// Offer the next item; `false` when the page is full (the item is not kept, and
    /// the caller stops).
    pub fn push(&mut self, item: T) -> bool {
        if self.items.len() >= self.limit || (self.used >= self.bytes && !self.items.is_empty()) {
            self.more = true;
            return false;
        }
        if self.bytes != usize::MAX {
            self.used += serde_json::to_vec(&item).map(|v| v.len()).unwrap_or(0);
        }
        self.items.push(item);
        true
    }

    /// The page, and the cursor after it (from `position` of its last item) when more
    /// items follow.
    pub fn finish<P: Serialize>(self, position: impl Fn(&T) -> P) -> (Vec<T>, Option<String>) {
        let next = match (self.more, self.items.last()) {
            (true, Some(last)) => Some(encode(&position(last))),
            _ => None,
        };
        (self.items, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(items: &[u32], p: &Page) -> (Vec<u32>, Option<String>) {
        let after: Option<u32> = p.position().unwrap();
        let mut pager = p.pager();
        for i in items
            .iter()
            .copied()
            .filter(|i| after.is_none_or(|a| *i > a))
        {
            if !pager.push(i) {
                break;
            }
        }
        pager.finish(|i| *i)
    }

    #[test]
    fn pages_cover_the_list_once_and_the_last_has_no_cursor() {
        let items: Vec<u32> = (0..25).collect();
        let mut seen = Vec::new();
        let mut p = Page::first(10);
        loop {
            let (got, next) = page(&items, &p);
            assert!(!got.is_empty());
            seen.extend(got);
            match next {
                Some(c) => p = Page::after(Some(c), 10),
                None => break,
            }
        }
        assert_eq!(seen, items);
        // An exact multiple ends without an empty page.
        let (got, next) = page(&(0..10).collect::<Vec<_>>(), &Page::first(10));
        assert_eq!((got.len(), next), (10, None));
    }

    #[test]
    fn an_unpaged_request_gets_everything_and_limits_are_clamped() {
        let items: Vec<u32> = (0..5000).collect();
        assert_eq!(page(&items, &Page::default()), (items.clone(), None));
        let (got, next) = page(&items, &Page::first(1_000_000));
        assert_eq!(got.len(), MAX_LIMIT as usize);
        assert!(next.is_some());
        assert_eq!(page(&items, &Page::first(0)).0.len(), 1);
    }

    #[test]
    fn a_page_closes_at_its_byte_budget_but_always_holds_one_item() {
        let big = "x".repeat(PAGE_BYTES / 3);
        let mut pager = Page::first(100).pager();
        let mut n = 0;
        while pager.push(big.clone()) {
            n += 1;
        }
        assert_eq!(n, 3, "three items reach the budget, the fourth waits");
        let huge = "y".repeat(2 * PAGE_BYTES);
        let mut pager = Page::first(100).pager();
        assert!(
            pager.push(huge),
            "one item over the budget still makes a page"
        );
        assert!(!pager.push("z".to_string()));
    }

    #[test]
    fn fit_keeps_the_first_items_within_the_budget() {
        let mut v = vec!["x".repeat(PAGE_BYTES / 2); 5];
        assert!(fit(&mut v));
        assert_eq!(v.len(), 2);
        let mut one = vec!["y".repeat(2 * PAGE_BYTES)];
        assert!(!fit(&mut one));
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn a_cursor_from_elsewhere_is_refused() {
        let p = Page::after(Some("not base64 json!".into()), 10);
        assert_eq!(p.position::<(i64, String)>(), Err(BadCursor));
        let c = encode(&("k", 3));
        assert_eq!(decode::<(String, u32)>(&c), Ok(("k".into(), 3)));
    }
}
